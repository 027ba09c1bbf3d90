"""Calling a scoring URI: one keep-alive connection per caller.

Shared by every HTTP target (local, Azure ML). Built on http.client rather than requests:
the latency run must measure the endpoint, not the client, and http.client costs a fraction
of requests' per-call overhead. Connection errors become BackendError; HTTP errors are
answers like any other (the caller decides what a 500 means).
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tdsp_deploy.backends.base import InvokeResult
from tdsp_deploy.errors import BackendError


class HttpCaller:
    """Posts bodies to one URL over one persistent connection (reopened when the server closes)."""

    def __init__(self, url: str, headers: Mapping[str, str], *, timeout: float = 60.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"not an HTTP URL: {url}")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path or "/"
        if parts.query:
            self.path += "?" + parts.query
        self.headers = {"Content-Type": "application/json", **headers}
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            factory = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._connection = factory(self.host, self.port, timeout=self.timeout)
        return self._connection

    def __call__(self, body: bytes) -> InvokeResult:
        # One retry on a connection the server closed while idle (keep-alive race); never
        # after the request was answered.
        for attempt in (1, 2):
            connection = self._connect()
            started = time.perf_counter()
            try:
                connection.request("POST", self.path, body=body, headers=self.headers)
                response = connection.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:
                    raise BackendError(f"{self.url} closed the connection: {exc}") from exc
                continue
            except TimeoutError as exc:
                self.close()
                raise BackendError(f"{self.url} did not answer within {self.timeout:g} s") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise BackendError(
                    f"cannot reach {self.url}: {exc}",
                    hint="check that the endpoint is running (tdsp-deploy status)",
                ) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if response.will_close:
                self.close()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return InvokeResult(response.status, payload, headers, elapsed_ms)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@contextmanager
def http_callers(
    url: str, headers: Mapping[str, str], *, timeout: float = 60.0
) -> Iterator[Iterator[HttpCaller]]:
    """Hands out callers on demand and closes all their connections at the end."""
    made: list[HttpCaller] = []

    def new_callers() -> Iterator[HttpCaller]:
        while True:
            caller = HttpCaller(url, headers, timeout=timeout)
            made.append(caller)
            yield caller

    try:
        yield new_callers()
    finally:
        for caller in made:
            caller.close()
