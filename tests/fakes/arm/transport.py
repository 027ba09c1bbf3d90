"""An azure-core ``HttpTransport`` that hands each request to a Python handler instead of the
network: the seam below azure-ai-ml's whole pipeline (policies, retries, polling, the SDK's own
deserialisation all run as they do against Azure).

A handler returns ``Reply``; the transport turns it into the ``RequestsTransportResponse`` the
real ``RequestsTransport`` would have produced, so nothing above can tell the difference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.pipeline._tools import is_rest as _is_rest
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
from requests.structures import CaseInsensitiveDict


@dataclasses.dataclass
class Reply:
    status: int
    body: Any = None  # a JSON-able value, bytes, or None for no body
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Sent:
    """One request as the SDK sent it."""

    method: str
    url: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


class HandlerTransport(HttpTransport):  # type: ignore[misc]
    def __init__(self, handle: Callable[[Sent], Reply]):
        self._handle = handle

    def __enter__(self) -> HandlerTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> RequestsTransportResponse:
        body = getattr(request, "content", None)
        if body is None:
            body = getattr(request, "body", None) or getattr(request, "data", None)
        if isinstance(body, str):
            body = body.encode()
        parts = urlsplit(request.url)
        sent = Sent(
            method=request.method.upper(),
            url=request.url,
            path=parts.path,
            query=parts.query,
            headers=dict(request.headers),
            body=body or b"",
        )
        reply = self._handle(sent)
        return _response(request, reply)


def _response(request: Any, reply: Reply) -> RequestsTransportResponse:
    raw = requests.Response()
    raw.status_code = reply.status
    raw.reason = REASONS.get(reply.status, "")
    raw.url = request.url
    headers = CaseInsensitiveDict(reply.headers)
    if reply.body is None:
        content = b""
    elif isinstance(reply.body, bytes):
        content = reply.body
    else:
        content = json.dumps(reply.body).encode()
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
    headers["Content-Length"] = str(len(content))
    raw.headers = headers
    raw._content = content  # what requests keeps once a body has been read
    raw._content_consumed = True
    raw.encoding = "utf-8"
    if _is_rest(request):  # azure.core.rest requests get rest responses, as RequestsTransport gives
        from azure.core.rest._requests_basic import RestRequestsTransportResponse

        response = RestRequestsTransportResponse(request=request, internal_response=raw)
        response.read()
        return response
    return RequestsTransportResponse(request, raw)
