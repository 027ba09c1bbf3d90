"""The router's own answers: status lines, headers and bodies, built in one place.

A head and its body are kept apart (``parts``) so that a large body is written as it is, not
copied into one buffer with its head.
"""

from __future__ import annotations

import json

JSON_TYPE = (b"Content-Type", b"application/json")
PIN_HEADER = b"azureml-model-deployment"  # names the slot: pins a request, names who answered
REQUEST_ID = b"x-request-id"
# Headers of a slot's answer that the router never relays: those that describe one connection
# (RFC 9110 7.6.1), the framing (the router frames its own answer), and those it sets itself.
RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"server", PIN_HEADER, REQUEST_ID}
)
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
    typed: bool | None = None,
) -> tuple[bytes, bytes]:
    """A response's head (status line and headers) and its body, kept apart so that a large
    body is written as it is. ``streamed``: the body follows in chunks (no length yet).
    ``typed``: whether ``headers`` has a Content-Type, when the caller knows (else looked up);
    without one, the answer is JSON."""
    if typed is None:
        typed = any(n.lower() == b"content-type" for n, _ in headers)
    if not typed:
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
