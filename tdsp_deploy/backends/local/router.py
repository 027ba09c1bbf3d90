"""The local endpoint's front door: one process on the endpoint port.

It does what an Azure ML managed online endpoint does in front of its deployments: checks
the key (``Authorization: Bearer <key>``), picks a slot (the ``azureml-model-deployment``
request header pins one; otherwise by traffic weight), forwards the request to that slot's
inference server on loopback, and names the slot that answered in the response header
``azureml-model-deployment``.

Speed matters here (the router sits on every request), so it is an asyncio protocol with
httptools' C parser rather than a web framework: keep-alive toward clients, no per-request
copies beyond joining the body, and one small task per request. The inference server closes
every connection (gunicorn's sync worker), so a new loopback connection per request upstream
is unavoidable; the client side never pays for a connection set-up of its own.

Run as: ``python -m tdsp_deploy.backends.local.router ROUTER_JSON``. SIGHUP reloads the
configuration and keys; SIGTERM stops accepting, lets in-flight requests finish, and exits.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import hmac
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path

import httptools

from tdsp_deploy.backends.local.metrics import Measurements
from tdsp_deploy.backends.local.routes import RouterConfig, RouteTable, SlotRoute

log = logging.getLogger("tdsp_deploy.router")

PIN_HEADER = b"azureml-model-deployment"
REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID = 100
MAX_SHADOWS_IN_FLIGHT = 64
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# Headers that describe one connection, not the message (RFC 9110 7.6.1), plus those the
# router sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"authorization",
        PIN_HEADER,
    }
)
RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"server", PIN_HEADER, REQUEST_ID}
)
KEEPALIVE_TIMEOUT_S = 75.0
REQUEST_READ_TIMEOUT_S = 60.0
MAX_PIPELINED = 16
DRAIN_TIMEOUT_S = 30.0
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class Router:
    """Shared state of the router process: routes, keys, and in-flight accounting."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.config = RouterConfig.read(config_path)
        self.keys: tuple[bytes, ...] = ()
        self.routes = RouteTable(())
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.connections: set[ClientConnection] = set()
        self.measurements = Measurements(self.config.endpoint, None)
        self.sticky_header: bytes | None = None
        self.shadows_in_flight = 0
        self.apply(self.config)

    def apply(self, config: RouterConfig) -> None:
        keys = json.loads(Path(config.keys_file).read_text())
        self.keys = tuple(
            f"Bearer {keys[name]}".encode() for name in ("primary_key", "secondary_key") if keys.get(name)
        )
        self.routes = RouteTable(config.slots, salt=config.experiment_id or config.endpoint)
        self.measurements.log_to(config.request_log)
        self.sticky_header = config.sticky_header.lower().encode() if config.sticky_header else None
        self.config = config

    def reload(self) -> None:
        try:
            self.apply(RouterConfig.read(self.config_path))
            log.info("reloaded configuration generation %s: %s", self.config.generation, self.describe())
        except Exception as exc:  # keep serving with the old configuration
            log.error("reload failed, keeping generation %s: %s", self.config.generation, exc)

    def describe(self) -> str:
        return (
            ", ".join(
                f"{s.name}={s.weight}%" + (f" (mirror {s.mirror}%)" if s.mirror else "") + f" :{s.port}"
                for s in self.config.slots
            )
            or "no slots"
        )

    def authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        # compare_digest against every key, so timing says nothing about which matched
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(header, key)
        return matched

    def state_document(self) -> bytes:
        doc = {
            "endpoint": self.config.endpoint,
            "generation": self.config.generation,
            "slots": {
                s.name: {"port": s.port, "weight": s.weight, "mirror": s.mirror} for s in self.config.slots
            },
            "in_flight": self.in_flight,
        }
        return json.dumps(doc).encode()

    def start_shadow(
        self, shadow: SlotRoute, request: Request, live: asyncio.Future[UpstreamAnswer], timeout: float
    ) -> None:
        """Copy a live request to a shadow slot without making the caller wait for it."""
        if self.shadows_in_flight >= MAX_SHADOWS_IN_FLIGHT:
            return  # a slow shadow must never pile up work in the router
        self.shadows_in_flight += 1
        asyncio.get_running_loop().create_task(self._shadow(shadow, request, live, timeout))

    async def _shadow(
        self, shadow: SlotRoute, request: Request, live: asyncio.Future[UpstreamAnswer], timeout: float
    ) -> None:
        started = time.perf_counter()
        try:
            answer = await exchange(shadow, request, timeout)
            elapsed = time.perf_counter() - started
            live_answer = await live
            agreed = same_answer(live_answer, answer) if live_answer.status < 500 else None
            self.measurements.shadow(
                shadow.name, answer.status, elapsed, (request.request_id or b"").decode("latin-1"), agreed
            )
        except Exception as exc:  # a shadow's trouble is logged, never the caller's
            log.warning("shadow request to %s failed: %s", shadow.name, exc)
        finally:
            self.shadows_in_flight -= 1

    def request_started(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class Request:
    __slots__ = (
        "method",
        "url",
        "headers",
        "body",
        "keep_alive",
        "pin",
        "auth",
        "request_id",
        "sticky",
        "started",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.keep_alive = True
        self.pin: bytes | None = None
        self.auth: bytes | None = None
        self.request_id: bytes | None = None
        self.sticky: bytes | None = None
        self.started = 0.0


class ClientConnection(asyncio.Protocol):
    """One client connection; requests on it are answered in order (pipelining-safe)."""

    def __init__(self, router: Router):
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: Request | None = None
        self.body_size = 0
        self.queue: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.router.connections.add(self)
        self._arm_timer(KEEPALIVE_TIMEOUT_S)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.router.connections.discard(self)
        if self.timer:
            self.timer.cancel()
        if self.task and not self.task.done():
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._fail(400, f"malformed HTTP request: {exc}")

    def _arm_timer(self, seconds: float) -> None:
        if self.timer:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        if self.current is not None:  # a request began but never finished arriving
            self._fail(408, "request not received in time")
        elif self.task is None and not self.queue and self.transport:
            self.transport.close()  # idle keep-alive connection

    def _fail(self, status: int, message: str) -> None:
        """Answer an error the client caused, then close: the stream may be out of sync."""
        self.closing = True
        if self.transport and not self.transport.is_closing():
            self.transport.write(_response(status, [], _message(message), keep_alive=False))
            self.transport.close()

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()
        self.body_size = 0
        self._arm_timer(REQUEST_READ_TIMEOUT_S)

    def on_url(self, url: bytes) -> None:
        self.current.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        lname = name.lower()
        if lname == b"authorization":
            request.auth = value  # type: ignore[union-attr]
        elif lname == PIN_HEADER:
            request.pin = value.strip()  # type: ignore[union-attr]
        elif lname == REQUEST_ID:
            if 0 < len(value) <= MAX_REQUEST_ID:  # the inference server refuses longer ids
                request.request_id = value  # type: ignore[union-attr]
            return
        elif lname == self.router.sticky_header:
            request.sticky = value  # type: ignore[union-attr]
        request.headers.append((lname, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        for name, value in self.current.headers:  # type: ignore[union-attr]
            if (
                name == b"content-length"
                and value.isdigit()
                and int(value) > self.router.config.max_request_bytes
            ):
                self._too_large()
                return

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.body_size += len(body)
        if self.body_size > self.router.config.max_request_bytes:  # chunked bodies have no length
            self._too_large()
            return
        self.current.body.append(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.closing:
            return
        request = self.current
        assert request is not None
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()
        request.started = time.perf_counter()
        if request.request_id is None:
            request.request_id = uuid.uuid4().hex.encode()
        self.current = None
        self.queue.append(request)
        if len(self.queue) > MAX_PIPELINED and self.transport:
            self.transport.pause_reading()
        if self.task is None:
            self._next()

    def _too_large(self) -> None:
        limit_mb = self.router.config.max_request_bytes / (1024 * 1024)
        self._fail(
            413, f"request body larger than the endpoint's limit of {limit_mb:g} MB (target.max_request_mb)"
        )

    # -- serving -------------------------------------------------------------------------
    def _next(self) -> None:
        if self.closing or not self.queue:
            self.task = None
            if not self.closing:
                self._arm_timer(KEEPALIVE_TIMEOUT_S)
            return
        request = self.queue.popleft()
        if self.transport and len(self.queue) <= MAX_PIPELINED // 2:
            self.transport.resume_reading()
        self.task = self.loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        router = self.router
        router.request_started()
        try:
            payload = await self._answer(request)
            if self.transport and not self.transport.is_closing():
                self.transport.write(payload)
                if not request.keep_alive:
                    self.transport.close()
                    self.closing = True
        finally:
            router.request_finished()
        self._next()

    async def _answer(self, request: Request) -> bytes:
        path = request.url.split(b"?", 1)[0]
        keep = request.keep_alive
        if path == b"/" and request.method in (b"GET", b"HEAD"):
            return _response(200, [(b"Content-Type", b"text/plain")], b"Healthy", keep_alive=keep)
        router = self.router
        if not router.authorized(request.auth):
            return _response(
                401,
                [(b"WWW-Authenticate", b"Bearer")],
                _message(
                    "missing or invalid key: send 'Authorization: Bearer <key>' (tdsp-deploy credentials)"
                ),
                keep_alive=keep,
            )
        if path == b"/-/state":
            router.measurements.flush()  # readers of the request log see every answered request
            return _response(
                200, [(b"Content-Type", b"application/json")], router.state_document(), keep_alive=keep
            )
        if path == b"/metrics" and request.method == b"GET":
            router.measurements.flush()
            return _response(
                200, [(b"Content-Type", PROMETHEUS_TYPE)], router.measurements.prometheus(), keep_alive=keep
            )
        if request.pin:
            slot = router.routes.pinned(request.pin.decode("latin-1"))
            if slot is None:
                names = ", ".join(router.routes.by_name) or "none"
                return _response(
                    404,
                    [],
                    _message(f"deployment '{request.pin.decode('latin-1')}' not found; deployments: {names}"),
                    keep_alive=keep,
                )
            shadows: list[SlotRoute] = []
        else:
            slot = router.routes.choose(request.sticky)
            if slot is None:
                return _response(
                    503,
                    [],
                    _message(
                        "no deployment takes traffic; set traffic with a push, "
                        "or pin one with the azureml-model-deployment header"
                    ),
                    keep_alive=keep,
                )
            shadows = router.routes.mirrored() if router.routes.mirrors else []
        timeout = router.config.request_timeout_s
        if shadows:
            live: asyncio.Future[UpstreamAnswer] = self.loop.create_future()
            for shadow in shadows:
                router.start_shadow(shadow, request, live, timeout)
            answer = await exchange(slot, request, timeout)
            live.set_result(answer)
        else:
            answer = await exchange(slot, request, timeout)
        router.measurements.live(
            slot.name,
            answer.status,
            time.perf_counter() - request.started,
            request.request_id.decode("latin-1"),
            request.pin is not None,  # type: ignore[union-attr]
        )
        headers = [(n, v) for n, v in answer.headers if n.lower() not in RESPONSE_DROP]
        headers += [(PIN_HEADER, slot.name.encode()), (b"x-request-id", request.request_id)]  # type: ignore[list-item]
        return _response(answer.status, headers, answer.body, keep_alive=keep, reason=answer.reason)


async def exchange(slot: SlotRoute, request: Request, timeout_s: float) -> UpstreamAnswer:
    """Send the request to the slot's server; its answer, or the router's 502/504 when it has none."""
    body = b"".join(request.body)
    lines = [request.method, b" ", request.url, b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"]
    for name, value in request.headers:
        if name not in HOP_BY_HOP:
            lines += [name, b": ", value, b"\r\n"]
    lines += [b"x-request-id: ", request.request_id or b"", b"\r\n"]
    lines += [b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body]
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[UpstreamAnswer] = loop.create_future()
    # One timer for connect + answer (cheaper than two wait_for wrappers on every request).
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()  # type: ignore[union-attr]

    timer = loop.call_later(timeout_s, expire)
    transport = None
    try:
        transport, _ = await loop.create_connection(
            lambda: UpstreamProtocol(answer, b"".join(lines)), "127.0.0.1", slot.port
        )
        return await answer
    except asyncio.CancelledError:
        if not expired:
            raise  # the client went away: nothing to answer
        message = (
            f"deployment '{slot.name}' did not answer within {timeout_s:g} s (target.request_timeout_ms)"
        )
        return UpstreamAnswer(504, REASONS[504], [(b"Content-Type", b"application/json")], _message(message))
    except OSError:  # refused, reset, or closed before answering
        message = (
            f"deployment '{slot.name}' is not reachable; see `tdsp-deploy logs --deployment {slot.name}`"
        )
        return UpstreamAnswer(502, REASONS[502], [(b"Content-Type", b"application/json")], _message(message))
    finally:
        timer.cancel()
        if transport is not None:
            transport.close()


def same_answer(a: UpstreamAnswer, b: UpstreamAnswer) -> bool:
    """Did two slots answer alike? Same status and the same body (as JSON when both are)."""
    if a.status != b.status:
        return False
    if a.body == b.body:
        return True
    try:
        return json.loads(a.body) == json.loads(b.body)
    except ValueError:
        return False


class UpstreamAnswer:
    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class UpstreamProtocol(asyncio.Protocol):
    """Sends one request to a slot's server and reads its response."""

    def __init__(self, answer: asyncio.Future[UpstreamAnswer], payload: bytes):
        self.answer = answer
        self.payload = payload
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Write at once, in the connect callback: the slot's worker may already be waiting.
        transport.write(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.answer.done():
                self.answer.set_exception(ConnectionError(f"malformed response from the slot: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionError("the slot closed the connection before answering"))

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.answer.done():
            answer = UpstreamAnswer(
                self.parser.get_status_code(), self.reason, self.headers, b"".join(self.body)
            )
            self.answer.set_result(answer)


def _message(text: str) -> bytes:
    return json.dumps({"message": text}).encode()


def _response(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    keep_alive: bool,
    reason: bytes | None = None,
) -> bytes:
    if not headers or all(n.lower() != b"content-type" for n, _ in headers):
        headers = [*headers, (b"Content-Type", b"application/json")]
    parts = [b"HTTP/1.1 ", str(status).encode(), b" ", reason or REASONS.get(status, b"Unknown"), b"\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts += [b"\r\n", body]
    return b"".join(parts)


async def serve(config_path: Path) -> None:
    router = Router(config_path)
    # Each request allocates a few dozen short-lived objects without reference cycles; at the
    # default threshold the cyclic collector ran often enough to take ~6% of the router's CPU
    # (measured with py-spy). Keep it, but far less often, and leave start-up objects out of it.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    loop = asyncio.get_running_loop()
    config = router.config
    server = await loop.create_server(
        lambda: ClientConnection(router), config.host, config.port, backlog=2048
    )
    log.info(
        "router for endpoint %s listening on %s:%s: %s",
        config.endpoint,
        config.host,
        config.port,
        router.describe(),
    )
    stop = asyncio.Event()

    def flush_log() -> None:  # a quiet endpoint's last requests still reach the log
        router.measurements.flush()
        loop.call_later(1.0, flush_log)

    flush_log()
    loop.add_signal_handler(signal.SIGHUP, router.reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    # Stop taking new connections, let in-flight requests finish, then close idle ones.
    server.close()
    started = time.monotonic()
    try:
        await asyncio.wait_for(router.idle.wait(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        log.warning("stopping with %s requests still in flight", router.in_flight)
    for connection in list(router.connections):
        if connection.transport:
            connection.transport.close()
    router.measurements.close()
    log.info("router stopped after draining for %.2f s", time.monotonic() - started)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tdsp_deploy.backends.local.router ROUTER_JSON", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s router: %(message)s", stream=sys.stderr
    )
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it: asyncio's own loop works too
        asyncio.run(serve(Path(args[0])))
    else:
        uvloop.run(serve(Path(args[0])))


if __name__ == "__main__":
    main()
