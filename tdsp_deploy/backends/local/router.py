"""The local endpoint's front door: one process on the endpoint port.

It does what an Azure ML managed online endpoint does in front of its deployments: checks
the key (``Authorization: Bearer <key>``), picks a slot (the ``azureml-model-deployment``
request header pins one; otherwise by traffic weight), forwards the request to that slot's
inference server on loopback, and names the slot that answered in the response header
``azureml-model-deployment``.

Speed matters here (the router sits on every request), so it is an asyncio protocol with
httptools' C parser rather than a web framework: keep-alive toward clients and toward the
slots (pooled connections, upstream.py), no per-request copies of a body, and one small
task per request.

Bad bodies: a scoring request (``POST /score``) with a Content-Type that is not JSON gets a 415,
and one whose body is not JSON a 400 that says where it fails, as Azure ML's inference server
answers for a script that declares its input; the body is parsed once, and only for that check.
A deployment whose run() takes raw requests (``@rawhttp``, found in its script at push: the
slot's ``raw_http`` route) gets every request unchanged.

Reliability: a weighted request whose slot cannot be reached (no connection: it never saw
the request) goes once to another slot with traffic, and that slot is left out for a short
back-off; a pinned request to such a slot gets a 503 saying so. Each slot's requests in
flight are counted (``GET /-/state``, ``/metrics``), and ``POST /-/drain`` stops new requests
to a slot and answers once the ones it has are done.

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
import os
import signal
import sys
import time
from pathlib import Path

import httptools

from tdsp_deploy.backends.local.metrics import Measurements
from tdsp_deploy.backends.local.routes import RouterConfig, RouteTable, SlotRoute
from tdsp_deploy.backends.local.upstream import (
    IDLE_TIMEOUT_S,
    SlotClosed,
    SlotPool,
    SlotUnavailable,
    UpstreamAnswer,
)

log = logging.getLogger("tdsp_deploy.router")

PIN_HEADER = b"azureml-model-deployment"
REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID = 100
MAX_SHADOWS_IN_FLIGHT = 64
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE = (b"Content-Type", b"application/json")
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
MAX_DRAIN_TIMEOUT_S = 600.0
SMALL_BODY = 65536  # bodies up to this size are joined to their head; larger ones are not copied
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class Router:
    """Shared state of the router process: routes, keys, slot pools and in-flight accounting."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.config = RouterConfig.read(config_path)
        self.keys: tuple[bytes, ...] = ()
        self.routes = RouteTable(())
        self.pools: dict[int, SlotPool] = {}  # by port: one pool per slot process
        self.draining: set[str] = set()
        self.down_until = 0.0  # the latest back-off of any pool: before it, look for down slots
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
        self._sync_pools(config.slots)
        self.measurements.log_to(config.request_log)
        self.sticky_header = config.sticky_header.lower().encode() if config.sticky_header else None
        self.config = config

    def _sync_pools(self, slots: tuple[SlotRoute, ...]) -> None:
        ports = {s.port: s.name for s in slots}
        for port, name in ports.items():
            pool = self.pools.get(port)
            if pool is None or pool.retired or pool.name != name:
                if pool is not None:
                    pool.close_idle()
                self.pools[port] = SlotPool(name, port)
        for port, pool in list(self.pools.items()):
            if port not in ports:  # a revision that left the routes: finish what it has, then go
                pool.retired = True
                pool.close_idle()
                if pool.in_flight == 0:
                    del self.pools[port]
        # A drain ends when its slot is gone or is a new process (another port).
        serving = {s.name: s.port for s in slots}
        previous = {s.name: s.port for s in self.config.slots}
        for name in list(self.draining):
            if name not in serving or serving[name] != previous.get(name):
                self.draining.discard(name)

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

    # -- slots -----------------------------------------------------------------------------
    def pool(self, slot: SlotRoute) -> SlotPool:
        pool = self.pools.get(slot.port)
        if pool is None or pool.retired:
            pool = self.pools[slot.port] = SlotPool(slot.name, slot.port)
        return pool

    def avoided(self) -> set[str]:
        """Slots that weighted traffic leaves out now: draining, or in a back-off."""
        if not self.draining and time.monotonic() >= self.down_until:
            return set()
        now = time.monotonic()
        down = {p.name for p in self.pools.values() if not p.retired and p.is_down(now)}
        return down | self.draining

    def choose(self, sticky: bytes | None, tried: set[str] | None = None) -> SlotRoute | None:
        avoid = self.avoided()
        if tried:
            avoid |= tried
        if not avoid:
            return self.routes.choose(sticky)
        slot = self.routes.choose(sticky, avoid)
        if slot is None and not tried:
            # Every slot with traffic is in a back-off: try one anyway rather than refuse
            # (never a draining one).
            slot = self.routes.choose(sticky, self.draining)
        return slot

    def slot_refused(self, pool: SlotPool, reason: str) -> None:
        pool.refused()
        self.down_until = max(self.down_until, pool.down_until)
        failures = pool.failures
        # Said the 1st, 2nd, 4th, 8th... time in a row: a slot down for long is refused on every
        # pinned request, and the log must stay readable.
        if failures & (failures - 1) == 0:
            log.warning(
                "deployment %s (port %s) cannot be reached (%s), %d time%s in a row; leaving it out a while",
                pool.name,
                pool.port,
                reason,
                failures,
                "" if failures == 1 else "s",
            )

    def in_flight_by_slot(self) -> dict[str, int]:
        counts = {s.name: 0 for s in self.config.slots}
        for pool in self.pools.values():
            counts[pool.name] = counts.get(pool.name, 0) + pool.in_flight
        return counts

    def tidy(self) -> None:
        """Close connections idle too long, and forget revisions that left with nothing in flight."""
        for port, pool in list(self.pools.items()):
            pool.close_idle(IDLE_TIMEOUT_S)
            if pool.retired and pool.in_flight == 0:
                del self.pools[port]

    async def drain(self, name: str | None, port: int | None, timeout: float) -> dict[str, object]:
        """Stop new requests to a slot (by name) and wait until its requests in flight are done.
        By port: wait for that one process (a revision that already left the routes)."""
        if name is not None:
            self.draining.add(name)
            pools = [p for p in self.pools.values() if p.name == name]
        else:
            pools = [p for p in self.pools.values() if p.port == port]
        started = time.monotonic()
        waits = [asyncio.ensure_future(p.quiet.wait()) for p in pools if p.in_flight]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for wait in pending:
                wait.cancel()
        left = sum(p.in_flight for p in pools)
        return {
            "deployment": name if name is not None else (pools[0].name if pools else None),
            "port": port,
            "drained": left == 0,
            "in_flight": left,
            "waited_s": round(time.monotonic() - started, 3),
        }

    def state_document(self) -> bytes:
        now = time.monotonic()
        doc = {
            "endpoint": self.config.endpoint,
            "generation": self.config.generation,
            "slots": {
                s.name: {"port": s.port, "weight": s.weight, "mirror": s.mirror} for s in self.config.slots
            },
            "in_flight": self.in_flight_by_slot(),
            "in_flight_total": self.in_flight,
            "in_flight_by_port": {str(p.port): p.in_flight for p in self.pools.values()},
            "draining": sorted(self.draining),
            "down": sorted({p.name for p in self.pools.values() if not p.retired and p.is_down(now)}),
        }
        return json.dumps(doc).encode()

    # -- shadows ---------------------------------------------------------------------------
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
        pool = self.pool(shadow)
        pool.started()
        try:
            answer = await asyncio.wait_for(pool.exchange(upstream_head(request), request.body), timeout)
            elapsed = time.perf_counter() - started
            try:
                live_answer = await live
            except asyncio.CancelledError:  # the live request itself was abandoned
                live_answer = None
            agreed = same_answer(live_answer, answer) if live_answer and live_answer.status < 500 else None
            self.measurements.shadow(
                shadow.name, answer.status, elapsed, (request.request_id or b"").decode("latin-1"), agreed
            )
        except SlotUnavailable as exc:
            self.slot_refused(pool, str(exc))
        except Exception as exc:  # a shadow's trouble is logged, never the caller's
            log.warning("shadow request to %s failed: %s", shadow.name, exc or type(exc).__name__)
        finally:
            pool.finished()
            self.shadows_in_flight -= 1

    # -- whole router ----------------------------------------------------------------------
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
        "chunks",
        "body",
        "keep_alive",
        "pin",
        "auth",
        "content_type",
        "request_id",
        "sticky",
        "started",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.body = b""
        self.keep_alive = True
        self.pin: bytes | None = None
        self.auth: bytes | None = None
        self.content_type: bytes | None = None
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
        elif lname == b"content-type":
            request.content_type = value  # type: ignore[union-attr]
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
        self.current.chunks.append(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.closing:
            return
        request = self.current
        assert request is not None
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()
        request.started = time.perf_counter()
        chunks = request.chunks
        # The usual body arrives in one piece and is kept as it is; only a split one is joined.
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.chunks = []
        if request.request_id is None:
            request.request_id = os.urandom(16).hex().encode()
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
            try:
                head, body = await self._answer(request)
            except Exception:
                # A fault of the router's own costs this request a 500, never the connection:
                # left unanswered, every later request on it would wait forever.
                log.exception("the router failed on a request to %s", request.url.decode("latin-1")[:200])
                request.keep_alive = False
                message = "the endpoint's router failed on this request; its log (router.log) says why"
                head, body = _parts(500, [], _message(message), keep_alive=False)
            transport = self.transport
            if transport and not transport.is_closing():
                if len(body) <= SMALL_BODY:
                    transport.write(head + body)
                else:
                    transport.write(head)
                    transport.write(body)
                if not request.keep_alive:
                    transport.close()
                    self.closing = True
        finally:
            router.request_finished()
            self._next()

    async def _answer(self, request: Request) -> tuple[bytes, bytes]:
        path = request.url.split(b"?", 1)[0]
        keep = request.keep_alive
        if path == b"/" and request.method in (b"GET", b"HEAD"):
            return _parts(200, [(b"Content-Type", b"text/plain")], b"Healthy", keep_alive=keep)
        router = self.router
        if not router.authorized(request.auth):
            return _parts(
                401,
                [(b"WWW-Authenticate", b"Bearer")],
                _message(
                    "missing or invalid key: send 'Authorization: Bearer <key>' (tdsp-deploy credentials)"
                ),
                keep_alive=keep,
            )
        if path.startswith(b"/-/") or path == b"/metrics":
            return await self._control(path, request)
        if request.method == b"HEAD":  # an answer without a body would stall a kept-alive upstream
            return _parts(
                405, [(b"Allow", b"GET, POST")], _message("HEAD is answered only at /"), keep_alive=keep
            )
        scoring = path == b"/score" and request.method == b"POST"
        if request.pin:
            return await self._pinned(request, scoring)
        return await self._weighted(request, scoring)

    async def _control(self, path: bytes, request: Request) -> tuple[bytes, bytes]:
        router, keep = self.router, request.keep_alive
        if path == b"/-/state":
            router.measurements.flush()  # readers of the request log see every answered request
            return _parts(200, [JSON_TYPE], router.state_document(), keep_alive=keep)
        if path == b"/metrics" and request.method == b"GET":
            router.measurements.flush()
            text = router.measurements.prometheus(router.in_flight_by_slot())
            return _parts(200, [(b"Content-Type", PROMETHEUS_TYPE)], text, keep_alive=keep)
        if path in (b"/-/drain", b"/-/resume"):
            if request.method != b"POST":
                return _parts(
                    405, [(b"Allow", b"POST")], _message(f"use POST {path.decode()}"), keep_alive=keep
                )
            return await self._drain_control(path, request)
        return _parts(404, [], _message(f"no such path: {path.decode('latin-1')}"), keep_alive=keep)

    async def _drain_control(self, path: bytes, request: Request) -> tuple[bytes, bytes]:
        """POST /-/drain {"deployment": NAME | "port": PORT, "timeout_s": S}: answers 200 once
        nothing is in flight to it, or 504 after the timeout with the count still in flight.
        POST /-/resume {"deployment": NAME}: the slot takes requests again."""
        router, keep = self.router, request.keep_alive
        try:
            doc = json.loads(request.body or b"{}")
            name = doc.get("deployment")
            port = doc.get("port")
            timeout = float(doc.get("timeout_s", DRAIN_TIMEOUT_S))
            if name is not None and not isinstance(name, str):
                raise ValueError("deployment must be a string")
            if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
                raise ValueError("port must be an integer")
            if (name is None) == (port is None) or (path == b"/-/resume" and name is None):
                raise ValueError('give "deployment" (or, to drain one process, "port")')
            if not 0 <= timeout <= MAX_DRAIN_TIMEOUT_S:
                raise ValueError(f"timeout_s must be between 0 and {MAX_DRAIN_TIMEOUT_S:g}")
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            return _parts(400, [], _message(f"bad {path.decode()} request: {exc}"), keep_alive=keep)
        if name is not None and router.routes.pinned(name) is None:
            names = ", ".join(router.routes.by_name) or "none"
            return _parts(
                404, [], _message(f"deployment '{name}' not found; deployments: {names}"), keep_alive=keep
            )
        if path == b"/-/resume":
            router.draining.discard(name)
            log.info("deployment %s takes requests again", name)
            return _parts(
                200,
                [JSON_TYPE],
                json.dumps({"deployment": name, "draining": False}).encode(),
                keep_alive=keep,
            )
        log.info("draining %s", name if name is not None else f"port {port}")
        result = await router.drain(name, port, timeout)
        if not result["drained"]:
            result["message"] = f"{result['in_flight']} requests still in flight after {timeout:g} s"
        status = 200 if result["drained"] else 504
        return _parts(status, [JSON_TYPE], json.dumps(result).encode(), keep_alive=keep)

    async def _pinned(self, request: Request, scoring: bool) -> tuple[bytes, bytes]:
        router, keep = self.router, request.keep_alive
        name = request.pin.decode("latin-1")  # type: ignore[union-attr]
        slot = router.routes.pinned(name)
        if slot is None:
            names = ", ".join(router.routes.by_name) or "none"
            return _parts(
                404, [], _message(f"deployment '{name}' not found; deployments: {names}"), keep_alive=keep
            )
        if name in router.draining:
            return self._unavailable(request, slot, "it is draining (being stopped)")
        if scoring and not slot.raw_http:
            refusal = body_refusal(request)
            if refusal is not None:
                return self._refuse(request, slot, refusal)
        pool = router.pool(slot)
        try:
            answer = await self._forward(pool, request, ())
        except SlotUnavailable as exc:
            router.slot_refused(pool, str(exc))
            return self._unavailable(request, slot, f"it cannot be reached ({exc})")
        return self._relay(request, slot, answer)

    async def _weighted(self, request: Request, scoring: bool) -> tuple[bytes, bytes]:
        router = self.router
        slot = router.choose(request.sticky)
        if slot is None:
            return _parts(
                503,
                [],
                _message(
                    "no deployment takes traffic; set traffic with a push, "
                    "or pin one with the azureml-model-deployment header"
                ),
                keep_alive=request.keep_alive,
            )
        if scoring and not slot.raw_http:
            refusal = body_refusal(request)
            if refusal is not None:
                return self._refuse(request, slot, refusal)
        shadows = router.routes.mirrored() if router.routes.mirrors else ()
        pool = router.pool(slot)
        try:
            answer = await self._forward(pool, request, shadows)
        except SlotUnavailable as exc:
            # It never saw the request: send it once to another slot with traffic.
            router.slot_refused(pool, str(exc))
            other = router.choose(request.sticky, tried={slot.name})
            if other is None:
                log.warning(
                    "no other deployment to retry on for %s (draining: %s; down: %s)",
                    slot.name,
                    sorted(router.draining) or "none",
                    sorted(router.avoided() - router.draining) or "none",
                )
                return self._unavailable(request, slot, f"it cannot be reached ({exc})")
            if scoring and slot.raw_http and not other.raw_http:  # not checked yet
                refusal = body_refusal(request)
                if refusal is not None:
                    return self._refuse(request, other, refusal)
            router.measurements.retried(slot.name)
            pool = router.pool(other)
            try:
                answer = await self._forward(pool, request, ())
            except SlotUnavailable as again:
                router.slot_refused(pool, str(again))
                return self._unavailable(
                    request, other, f"it cannot be reached ({again}), nor can {slot.name}"
                )
            slot = other
        return self._relay(request, slot, answer)

    async def _forward(
        self, pool: SlotPool, request: Request, shadows: tuple[SlotRoute, ...] | list[SlotRoute]
    ) -> UpstreamAnswer:
        """The slot's answer, or the router's own 502/504; SlotUnavailable when it was never sent."""
        router = self.router
        timeout_s = router.config.request_timeout_s
        live: asyncio.Future[UpstreamAnswer] | None = None
        if shadows:
            live = self.loop.create_future()
            for shadow in shadows:
                if shadow.name not in router.draining:
                    router.start_shadow(shadow, request, live, timeout_s)
        # One timer for connect + answer (cheaper than a wait_for wrapper on every request).
        task = asyncio.current_task()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()  # type: ignore[union-attr]

        timer = self.loop.call_later(timeout_s, expire)
        pool.started()
        try:
            answer = await pool.exchange(upstream_head(request), request.body)
        except asyncio.CancelledError:
            if not expired:
                raise  # the client went away: nothing to answer
            message = (
                f"deployment '{pool.name}' did not answer within {timeout_s:g} s (target.request_timeout_ms)"
            )
            answer = UpstreamAnswer(504, REASONS[504], [JSON_TYPE], _message(message))
        except SlotClosed as exc:
            message = (
                f"deployment '{pool.name}' closed the connection without answering ({exc}); "
                f"see `tdsp-deploy logs --deployment {pool.name}`"
            )
            answer = UpstreamAnswer(502, REASONS[502], [JSON_TYPE], _message(message))
        except BaseException:
            if live is not None:
                live.cancel()  # the shadows stop waiting for a live answer that will not come
            raise
        finally:
            timer.cancel()
            pool.finished()
        if live is not None:
            live.set_result(answer)
        return answer

    def _relay(self, request: Request, slot: SlotRoute, answer: UpstreamAnswer) -> tuple[bytes, bytes]:
        self.router.measurements.live(
            slot.name,
            answer.status,
            time.perf_counter() - request.started,
            request.request_id.decode("latin-1"),  # type: ignore[union-attr]
            request.pin is not None,
        )
        headers = [(n, v) for n, v in answer.headers if n.lower() not in RESPONSE_DROP]
        headers += [(PIN_HEADER, slot.name.encode()), (REQUEST_ID, request.request_id)]  # type: ignore[list-item]
        return _parts(
            answer.status, headers, answer.body, keep_alive=request.keep_alive, reason=answer.reason
        )

    def _refuse(self, request: Request, slot: SlotRoute, refusal: tuple[int, str]) -> tuple[bytes, bytes]:
        """The answer the slot's inference server would give to a body it cannot take."""
        status, message = refusal
        return self._relay(
            request, slot, UpstreamAnswer(status, REASONS[status], [JSON_TYPE], _message(message))
        )

    def _unavailable(self, request: Request, slot: SlotRoute, why: str) -> tuple[bytes, bytes]:
        message = (
            f"deployment '{slot.name}' is unavailable: {why}; "
            f"see `tdsp-deploy status` and `tdsp-deploy logs --deployment {slot.name}`"
        )
        answer = UpstreamAnswer(503, REASONS[503], [JSON_TYPE, (b"Retry-After", b"1")], _message(message))
        return self._relay(request, slot, answer)


_parse_json = json.JSONDecoder().decode


def is_json_type(content_type: bytes) -> bool:
    """application/json or application/*+json, parameters (charset) allowed: the media types
    Azure ML's inference server (werkzeug's is_json) takes as JSON."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def body_refusal(request: Request) -> tuple[int, str] | None:
    """Why a scoring request cannot be taken as JSON (status, message); None when it can.

    A Content-Type that is present and not JSON is a 415; a body that does not parse is a 400
    that says where (one parse of the body, nothing else copied)."""
    content_type = request.content_type
    if content_type is not None and not is_json_type(content_type):
        shown = content_type.decode("latin-1")[:100]
        return 415, (
            f"Content-Type '{shown}' is not JSON: send the request body as JSON with "
            "'Content-Type: application/json'"
        )
    body = request.body
    if not body:
        return 400, "the request body is empty: send a JSON document ('Content-Type: application/json')"
    try:
        # UTF-8, as the inference server decodes it for run(); the decoder object directly, which
        # skips json.loads' encoding sniffing (a third of the cost on a small body).
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):  # json.loads in run() refuses it too
            return 400, "the request body starts with a byte order mark: send JSON in UTF-8 without one"
        _parse_json(text)
    except json.JSONDecodeError as exc:
        return 400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except UnicodeDecodeError as exc:
        return 400, f"the request body is not UTF-8 text (byte {exc.start}): send JSON in UTF-8"
    except RecursionError:
        return None  # valid as far as the router can tell; nested too deeply to walk here
    return None


def upstream_head(request: Request) -> bytes:
    """The request line and headers sent to a slot (keep-alive, the caller's key left out)."""
    lines = [request.method, b" ", request.url, b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"]
    for name, value in request.headers:
        if name not in HOP_BY_HOP:
            lines += [name, b": ", value, b"\r\n"]
    lines += [b"x-request-id: ", request.request_id or b"", b"\r\nContent-Length: "]
    lines += [str(len(request.body)).encode(), b"\r\n\r\n"]
    return b"".join(lines)


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


def _message(text: str) -> bytes:
    return json.dumps({"message": text}).encode()


def _parts(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    keep_alive: bool,
    reason: bytes | None = None,
) -> tuple[bytes, bytes]:
    """A response's head (status line and headers) and its body, kept apart so that a large
    body is written as it is."""
    if not headers or all(n.lower() != b"content-type" for n, _ in headers):
        headers = [*headers, JSON_TYPE]
    parts = [b"HTTP/1.1 ", str(status).encode(), b" ", reason or REASONS.get(status, b"Unknown"), b"\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), body


def _response(status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, keep_alive: bool) -> bytes:
    head, body = _parts(status, headers, body, keep_alive=keep_alive)
    return head + body


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

    def every_second() -> None:  # a quiet endpoint's last requests still reach the log
        router.measurements.flush()
        router.tidy()
        loop.call_later(1.0, every_second)

    every_second()
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
    for pool in router.pools.values():
        pool.close_idle()
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
