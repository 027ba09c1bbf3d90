"""The router's own answers: status lines, headers and bodies, built in one place.

A head and its body are kept apart (``parts``) so that a large body is written as it is, not
copied into one buffer with its head.
"""

from __future__ import annotations

import json

JSON_TYPE = (b"Content-Type", b"application/json")
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def message_body(text: str) -> bytes:
    return json.dumps({"message": text}).encode()


def parts(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    keep_alive: bool,
    reason: bytes | None = None,
    streamed: bool = False,
) -> tuple[bytes, bytes]:
    """A response's head (status line and headers) and its body, kept apart so that a large
    body is written as it is. ``streamed``: the body follows in chunks (no length yet)."""
    if not headers or all(n.lower() != b"content-type" for n, _ in headers):
        headers = [*headers, JSON_TYPE]
    lines = [b"HTTP/1.1 ", str(status).encode(), b" ", reason or REASONS.get(status, b"Unknown"), b"\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    if streamed:
        if keep_alive:
            lines.append(b"Transfer-Encoding: chunked\r\n")
    else:
        lines += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), body


def response(status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, keep_alive: bool) -> bytes:
    head, body = parts(status, headers, body, keep_alive=keep_alive)
    return head + body
