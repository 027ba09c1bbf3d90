"""What the router answers to an admitted request: a control route, or a slot's answer.

A request reaches here with its credential already checked (admission.py). Scoring requests
go to a slot: the one the ``azureml-model-deployment`` header pins, else one chosen by traffic
weight (or sticky key); live requests are copied to mirrored slots without making the caller
wait. The answer names the slot in ``azureml-model-deployment``.

Bad bodies: a scoring request (``POST /score``) with a Content-Type that is not JSON gets a 415,
and one whose body is not JSON a 400 that says where it fails, as Azure ML's inference server
answers for a script that declares its input; the body is parsed once, and only for that check.
A deployment whose run() takes raw requests (``@rawhttp``) gets every request unchanged.

Reliability: a weighted request whose slot cannot be reached (no connection: it never saw the
request) goes once to another slot with traffic, and that slot is left out for a short
back-off; a pinned request to such a slot gets a 503 saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from json.scanner import make_scanner
from typing import TYPE_CHECKING

from tdsp_deploy.backends.local.deadlines import Deadlines
from tdsp_deploy.backends.local.request import Request
from tdsp_deploy.backends.local.responses import (
    JSON_TYPE,
    PIN_HEADER,
    REASONS,
    REQUEST_ID,
    message_body,
    parts,
)
from tdsp_deploy.backends.local.routes import SlotRoute
from tdsp_deploy.backends.local.upstream import (
    BodyStream,
    SlotClosed,
    SlotPool,
    SlotUnavailable,
    UpstreamAnswer,
)

if TYPE_CHECKING:
    from tdsp_deploy.backends.local.router import Router

log = logging.getLogger("tdsp_deploy.router")

MAX_SHADOWS_IN_FLIGHT = 64
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
DRAIN_TIMEOUT_S = 30.0
MAX_DRAIN_TIMEOUT_S = 600.0
# Headers that describe one connection, not the message (RFC 9110 7.6.1), plus those the
# router sets or answers itself.
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
        b"expect",  # answered by the router (100 Continue); the slot gets the whole body at once
        PIN_HEADER,
    }
)

Reply = tuple[bytes, "bytes | BodyStream"]


class Dispatch:
    """Answers admitted requests for one router."""

    def __init__(self, router: Router):
        self.router = router
        self.shadows_in_flight = 0
        self.deadlines = Deadlines()

    async def answer(self, request: Request) -> Reply:
        path = request.path
        keep = request.keep_alive
        if path == b"/" and request.method in (b"GET", b"HEAD"):
            return parts(200, [(b"Content-Type", b"text/plain")], b"Healthy", keep_alive=keep)
        if path.startswith(b"/-/") or path == b"/metrics":
            return await self._control(path, request)
        if request.method == b"HEAD":  # an answer without a body would stall a kept-alive upstream
            return parts(
                405, [(b"Allow", b"GET, POST")], message_body("HEAD is answered only at /"), keep_alive=keep
            )
        scoring = path == b"/score" and request.method == b"POST"
        if request.pin:
            return await self._pinned(request, scoring)
        return await self._weighted(request, scoring)

    # -- control routes (the admin key, see admission.py) --------------------------------
    async def _control(self, path: bytes, request: Request) -> Reply:
        router, keep = self.router, request.keep_alive
        if path == b"/-/state":
            router.measurements.flush()  # readers of the request log see every answered request
            return parts(200, [JSON_TYPE], router.state_document(), keep_alive=keep)
        if path == b"/-/timing" and request.method == b"GET":
            return parts(200, [JSON_TYPE], json.dumps(router.timing.document()).encode(), keep_alive=keep)
        if path == b"/metrics" and request.method == b"GET":
            router.measurements.flush()
            text = router.measurements.prometheus(router.in_flight_by_slot())
            return parts(200, [(b"Content-Type", PROMETHEUS_TYPE)], text, keep_alive=keep)
        if path in (b"/-/drain", b"/-/resume"):
            if request.method != b"POST":
                return parts(
                    405, [(b"Allow", b"POST")], message_body(f"use POST {path.decode()}"), keep_alive=keep
                )
            return await self._drain_control(path, request)
        return parts(404, [], message_body(f"no such path: {path.decode('latin-1')}"), keep_alive=keep)

    async def _drain_control(self, path: bytes, request: Request) -> Reply:
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
            return parts(400, [], message_body(f"bad {path.decode()} request: {exc}"), keep_alive=keep)
        if name is not None and router.routes.pinned(name) is None:
            names = ", ".join(router.routes.by_name) or "none"
            return parts(
                404, [], message_body(f"deployment '{name}' not found; deployments: {names}"), keep_alive=keep
            )
        if path == b"/-/resume":
            router.draining.discard(name)
            log.info("deployment %s takes requests again", name)
            body = json.dumps({"deployment": name, "draining": False}).encode()
            return parts(200, [JSON_TYPE], body, keep_alive=keep)
        log.info("draining %s", name if name is not None else f"port {port}")
        result = await router.drain(name, port, timeout)
        if not result["drained"]:
            result["message"] = f"{result['in_flight']} requests still in flight after {timeout:g} s"
        status = 200 if result["drained"] else 504
        return parts(status, [JSON_TYPE], json.dumps(result).encode(), keep_alive=keep)

    # -- scoring -------------------------------------------------------------------------
    async def _pinned(self, request: Request, scoring: bool) -> Reply:
        router, keep = self.router, request.keep_alive
        name = request.pin.decode("latin-1")  # type: ignore[union-attr]
        slot = router.routes.pinned(name)
        if slot is None:
            names = ", ".join(router.routes.by_name) or "none"
            return parts(
                404, [], message_body(f"deployment '{name}' not found; deployments: {names}"), keep_alive=keep
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

    async def _weighted(self, request: Request, scoring: bool) -> Reply:
        router = self.router
        slot = router.choose(request.sticky)
        if slot is None:
            message = (
                "no deployment takes traffic; set traffic with a push, "
                "or pin one with the azureml-model-deployment header"
            )
            return parts(503, [], message_body(message), keep_alive=request.keep_alive)
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
        request.picked = time.perf_counter()
        # The answering task and its loop as http1.py noted them (no getpid() per request).
        task: asyncio.Task[object] = request.task or asyncio.current_task()  # type: ignore[assignment]
        loop = task.get_loop()
        timeout_s = router.config.request_timeout_s
        live: asyncio.Future[UpstreamAnswer] | None = None
        if shadows:
            live = loop.create_future()
            for shadow in shadows:
                if shadow.name not in router.draining:
                    self.start_shadow(shadow, request, live, timeout_s)
        # One limit for connect + answer, kept with every other request's (deadlines.py).
        deadlines = self.deadlines
        deadlines.watch(task, loop, timeout_s)
        pool.started()
        streaming = False
        try:
            answer = await pool.exchange(upstream_head(request, pool.secret_line), request.body, loop)
            request.upstream = answer
            if answer.stream is not None:  # in flight until its last chunk
                streaming = True
                answer.stream.on_done(pool.finished)
                if not answer.stream.done:
                    answer.stream.on_done(loop.call_later(timeout_s, answer.stream.abandon).cancel)
        except asyncio.CancelledError:
            if not deadlines.release(task):
                raise  # the client went away: nothing to answer
            message = (
                f"deployment '{pool.name}' did not answer within {timeout_s:g} s (target.request_timeout_ms)"
            )
            answer = UpstreamAnswer(504, REASONS[504], [JSON_TYPE], message_body(message))
        except SlotClosed as exc:
            message = (
                f"deployment '{pool.name}' closed the connection without answering ({exc}); "
                f"see `tdsp-deploy logs --deployment {pool.name}`"
            )
            answer = UpstreamAnswer(502, REASONS[502], [JSON_TYPE], message_body(message))
        except BaseException:
            if live is not None:
                live.cancel()  # the shadows stop waiting for a live answer that will not come
            raise
        finally:
            deadlines.release(task)
            if not streaming:
                pool.finished()
        if live is not None:
            live.set_result(answer)
        return answer

    def _relay(self, request: Request, slot: SlotRoute, answer: UpstreamAnswer) -> Reply:
        # Counted and logged once written (http1.py), in the name of this slot.
        request.deployment, request.status = slot.name, answer.status
        # A slot's headers come without the hop-by-hop ones (upstream.py), save any its
        # Connection header named; the router's own answers have none of either.
        dropped = answer.dropped
        headers = (
            [(n, v) for n, v in answer.headers if n.lower() not in dropped] if dropped else answer.headers
        )
        headers = [*headers, (PIN_HEADER, slot.name.encode()), (REQUEST_ID, request.request_id)]  # type: ignore[list-item]
        if answer.stream is not None:
            if not request.http11:  # no chunked framing: the end of the body is the end of the connection
                request.keep_alive = False
            head, _ = parts(
                answer.status,
                headers,
                b"",
                keep_alive=request.keep_alive,
                reason=answer.reason,
                streamed=True,
                typed=answer.typed,
            )
            return head, answer.stream
        return parts(
            answer.status,
            headers,
            answer.body,
            keep_alive=request.keep_alive,
            reason=answer.reason,
            typed=answer.typed,
        )

    def _refuse(self, request: Request, slot: SlotRoute, refusal: tuple[int, str]) -> Reply:
        """The answer the slot's inference server would give to a body it cannot take."""
        status, message = refusal
        return self._relay(
            request, slot, UpstreamAnswer(status, REASONS[status], [JSON_TYPE], message_body(message))
        )

    def _unavailable(self, request: Request, slot: SlotRoute, why: str) -> Reply:
        message = (
            f"deployment '{slot.name}' is unavailable: {why}; "
            f"see `tdsp-deploy status` and `tdsp-deploy logs --deployment {slot.name}`"
        )
        answer = UpstreamAnswer(503, REASONS[503], [JSON_TYPE, (b"Retry-After", b"1")], message_body(message))
        return self._relay(request, slot, answer)

    # -- shadows -------------------------------------------------------------------------
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
        router = self.router
        started = time.perf_counter()
        pool = router.pool(shadow)
        pool.started()
        try:
            answer = await asyncio.wait_for(self._shadow_answer(pool, request), timeout)
            elapsed = time.perf_counter() - started
            try:
                live_answer = await live
            except asyncio.CancelledError:  # the live request itself was abandoned
                live_answer = None
            agreed = same_answer(live_answer, answer) if live_answer and live_answer.status < 500 else None
            router.measurements.shadow(
                shadow.name, answer.status, elapsed, (request.request_id or b"").decode("latin-1"), agreed
            )
        except SlotUnavailable as exc:
            router.slot_refused(pool, str(exc))
        except Exception as exc:  # a shadow's trouble is logged, never the caller's
            log.warning("shadow request to %s failed: %s", shadow.name, exc or type(exc).__name__)
        finally:
            pool.finished()
            self.shadows_in_flight -= 1

    async def _shadow_answer(self, pool: SlotPool, request: Request) -> UpstreamAnswer:
        answer = await pool.exchange(upstream_head(request, pool.secret_line), request.body)
        if answer.stream is not None:  # read to its end (and dropped), which frees the connection
            try:
                while await answer.stream.next():
                    pass
            except BaseException:
                answer.stream.abandon()
                raise
        return answer


_parse_json = json.JSONDecoder().decode
_scan_json = make_scanner(json.JSONDecoder())  # one value from an index: (value, end)
_JSON_SPACE = " \t\n\r"


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
        if not _well_formed(text):
            _parse_json(text)  # raises, saying where (a body _well_formed is unsure of passes here)
    except json.JSONDecodeError as exc:
        return 400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except UnicodeDecodeError as exc:
        return 400, f"the request body is not UTF-8 text (byte {exc.start}): send JSON in UTF-8"
    except RecursionError:
        return None  # valid as far as the router can tell; nested too deeply to walk here
    return None


def _well_formed(text: str) -> bool:
    """True when ``text`` is one JSON value, with nothing but JSON's whitespace after it, and
    no whitespace before it (the usual body): the scanner alone, without ``decode``'s two
    regular-expression matches. False when unsure (leading whitespace) or not JSON at all."""
    try:
        _, end = _scan_json(text, 0)
    except (StopIteration, json.JSONDecodeError):
        return False
    return end == len(text) or not text[end:].strip(_JSON_SPACE)


def upstream_head(request: Request, secret_line: bytes = b"") -> bytes:
    """The request line and headers sent to a slot: keep-alive, the caller's key and every
    hop-by-hop header left out (those named in its Connection header too), the slot's secret in."""
    lines = [request.method, b" ", request.url, b" HTTP/1.1\r\nHost: 127.0.0.1\r\n", secret_line]
    dropped = request.connection_tokens
    for name, value in request.headers:
        if name not in HOP_BY_HOP and name not in dropped:
            lines += [name, b": ", value, b"\r\n"]
    lines += [b"x-request-id: ", request.request_id or b"", b"\r\nContent-Length: "]
    lines += [str(len(request.body)).encode(), b"\r\n\r\n"]
    return b"".join(lines)


def same_answer(a: UpstreamAnswer, b: UpstreamAnswer) -> bool | None:
    """Did two slots answer alike? Same status and the same body (as JSON when both are);
    None when either answer was streamed (its body is not kept to compare)."""
    if a.stream is not None or b.stream is not None:
        return None
    if a.status != b.status:
        return False
    if a.body == b.body:
        return True
    try:
        return json.loads(a.body) == json.loads(b.body)
    except ValueError:
        return False
