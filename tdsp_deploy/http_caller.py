"""Calling a scoring URI: one keep-alive connection per caller.

Shared by every HTTP target (local, Azure ML). The latency run must measure the endpoint, not
the client, so plain http (the local target, on loopback) goes over a socket with a minimal
HTTP/1.1 exchange, its request head built once per caller: http.client parses every answer's
headers with the email package, which costs far more CPU per request (BENCHMARKS.md,
"Latency figures checked against wrk"). https (Azure ML) keeps http.client for its TLS handling.

Connection errors become BackendError; HTTP errors are answers like any other (the caller
decides what a 500 means).
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tdsp_deploy.answers import InvokeResult
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
                    raise _closed(self.url, exc) from exc
                continue
            except TimeoutError as exc:
                self.close()
                raise _timed_out(self.url, self.timeout) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise _unreachable(self.url, exc) from exc
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


def _timed_out(url: str, timeout: float) -> BackendError:
    return BackendError(f"{url} did not answer within {timeout:g} s")


def _unreachable(url: str, exc: Exception) -> BackendError:
    return BackendError(
        f"cannot reach {url}: {exc}", hint="check that the endpoint is running (tdsp-deploy status)"
    )


def _closed(url: str, exc: Exception) -> BackendError:
    return BackendError(f"{url} closed the connection: {exc}")


class _ClosedEarly(Exception):
    """The server closed the connection; ``received`` says whether any of an answer came."""

    def __init__(self, received: bool):
        super().__init__("the server closed the connection before answering")
        self.received = received


class PlainHttpCaller:
    """HttpCaller's plain-http twin on a bare socket: same answers, same errors, less CPU."""

    def __init__(self, url: str, headers: Mapping[str, str], *, timeout: float = 60.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise BackendError(f"not a plain HTTP URL: {url}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [
            f"{name}: {value}" for name, value in {"Content-Type": "application/json", **headers}.items()
        ]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self.timeout = timeout
        self._socket: socket.socket | None = None
        self._buffer = b""

    def __call__(self, body: bytes) -> InvokeResult:
        message = b"".join((self._head, str(len(body)).encode(), b"\r\n\r\n", body))
        for attempt in (1, 2):
            reused = self._socket is not None
            started = time.perf_counter()
            try:
                sock = self._connect()
                sock.sendall(message)
                status, headers, payload, will_close = self._answer(sock)
            except _ClosedEarly as exc:
                self.close()
                # Closed while idle (keep-alive race): send again once, never after an answer began.
                if reused and not exc.received and attempt == 1:
                    continue
                raise _closed(self.url, exc) from exc
            except TimeoutError as exc:
                self.close()
                raise _timed_out(self.url, self.timeout) from exc
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue
                raise _closed(self.url, exc) from exc
            except (OSError, ValueError) as exc:
                self.close()
                raise _unreachable(self.url, exc) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if will_close:
                self.close()
            return InvokeResult(status, payload, headers, elapsed_ms)
        raise AssertionError("unreachable")

    def _connect(self) -> socket.socket:
        if self._socket is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socket = sock
            self._buffer = b""
        return self._socket

    def _recv(self, sock: socket.socket, received: bool) -> bytes:
        chunk = sock.recv(262144)
        if not chunk:
            raise _ClosedEarly(received)
        return chunk

    def _answer(self, sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv(sock, bool(buffer))
        lines = buffer[:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        buffer = buffer[end + 4 :]
        connection = headers.get("connection", "").lower()
        will_close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            payload, buffer = self._chunked(sock, buffer)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            while len(buffer) < length:
                buffer += self._recv(sock, True)
            payload, buffer = buffer[:length], buffer[length:]
        elif status in (204, 304) or status < 200:
            payload = b""
        else:  # no length: the answer ends when the server closes
            parts = [buffer]
            while chunk := sock.recv(262144):
                parts.append(chunk)
            payload, buffer, will_close = b"".join(parts), b"", True
        self._buffer = buffer
        return status, headers, payload, will_close

    def _chunked(self, sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        parts = []
        while True:
            while (end := buffer.find(b"\r\n")) < 0:
                buffer += self._recv(sock, True)
            size = int(buffer[:end].split(b";", 1)[0], 16)
            buffer = buffer[end + 2 :]
            if size == 0:  # trailers, if any, end with an empty line
                while (end := buffer.find(b"\r\n")) != 0:
                    if end < 0:
                        buffer += self._recv(sock, True)
                        continue
                    buffer = buffer[end + 2 :]
                return b"".join(parts), buffer[2:]
            while len(buffer) < size + 2:
                buffer += self._recv(sock, True)
            parts.append(buffer[:size])
            buffer = buffer[size + 2 :]

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._buffer = b""


def caller_for(
    url: str, headers: Mapping[str, str], *, timeout: float = 60.0
) -> HttpCaller | PlainHttpCaller:
    """The cheapest caller that can reach ``url``."""
    if urllib.parse.urlsplit(url).scheme == "http":
        return PlainHttpCaller(url, headers, timeout=timeout)
    return HttpCaller(url, headers, timeout=timeout)


@contextmanager
def http_callers(
    url: str, headers: Mapping[str, str], *, timeout: float = 60.0
) -> Iterator[Iterator[HttpCaller | PlainHttpCaller]]:
    """Hands out callers on demand and closes all their connections at the end."""
    made: list[HttpCaller | PlainHttpCaller] = []

    def new_callers() -> Iterator[HttpCaller | PlainHttpCaller]:
        while True:
            caller = caller_for(url, headers, timeout=timeout)
            made.append(caller)
            yield caller

    try:
        yield new_callers()
    finally:
        for caller in made:
            caller.close()
