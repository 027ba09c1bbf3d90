"""The router's HTTP/1 side toward its clients: one protocol object per client connection.

httptools' C parser reads the requests; requests on one connection are answered in order
(pipelining-safe), one small task at a time. What a request may cost is settled while its
head arrives (admission.py): the request line, each header, the whole head and the header
count are bounded, the head must arrive within a time limit, and the credential is checked
as soon as the head is complete, so a refused request is answered and closed before any of
its body is read. ``Expect: 100-continue`` is answered here (after the credential and size
checks, and never ahead of an answer still due on the connection) and never forwarded.

What the router answers comes from dispatch.py: a body whole, or a slot's stream, which is
written to the client chunk by chunk as the slot produces it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING

import httptools

from tdsp_deploy.backends.local import admission
from tdsp_deploy.backends.local.request import Request
from tdsp_deploy.backends.local.responses import PIN_HEADER, REQUEST_ID, message_body, parts, response
from tdsp_deploy.backends.local.upstream import BodyStream

if TYPE_CHECKING:
    from tdsp_deploy.backends.local.router import Router

log = logging.getLogger("tdsp_deploy.router")

MAX_REQUEST_ID = 100
KEEPALIVE_TIMEOUT_S = 75.0
BODY_READ_TIMEOUT_S = 60.0
MAX_PIPELINED = 16
SMALL_BODY = 65536  # bodies up to this size are joined to their head; larger ones are not copied
# After refusing a request whose body is on its way, read and drop at most this much of it
# (for at most LINGER_S) so that a client that sends its whole body before it reads still
# reads the refusal rather than a reset. The bytes are dropped one read (up to the loop's read
# size, 256 KiB) per LINGER_PACE_S: read as fast as they came, they held up the loop for
# milliseconds at a time and let a client without the key send as fast as loopback goes,
# reconnecting at once for more. A refusal while the head still arrives drops nothing: the
# connection is not read again, and closed after LINGER_S.
LINGER_BYTES = 4 * 1024 * 1024
LINGER_S = 2.0
LINGER_PACE_S = 0.01
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Request ids the router makes: 32 hex digits, a random half drawn once per process and a
# counting half, so they never repeat and cost no system call each (os.urandom did).
_ID_PREFIX = os.urandom(8).hex().encode()
_id_numbers = itertools.count(int.from_bytes(os.urandom(4), "big"))


# Request headers the router acts on (the rest it only passes on), by what it does with them.
_AUTHORIZATION, _CONTENT_TYPE, _CONTENT_LENGTH, _PIN, _REQUEST_ID, _EXPECT, _CONNECTION = range(7)
_NOTED = {
    b"authorization": _AUTHORIZATION,
    b"content-type": _CONTENT_TYPE,
    b"content-length": _CONTENT_LENGTH,
    PIN_HEADER: _PIN,
    REQUEST_ID: _REQUEST_ID,
    b"expect": _EXPECT,
    b"connection": _CONNECTION,
}


class Refused(Exception):
    """Raised inside a parser callback to stop parsing a request already answered."""


class ClientConnection(asyncio.Protocol):
    """One client connection; requests on it are answered in order (pipelining-safe)."""

    def __init__(self, router: Router):
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: Request | None = None
        self.body_size = 0
        self.in_head = True  # between requests or inside a head: its bytes are counted
        self.head_bytes = 0
        self.queue: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.stopped = False  # nothing more is read: the last request came, or a refusal waits its turn
        self.deferred: tuple[int, str, list[tuple[bytes, bytes]] | None] | None = None
        self.lingering = False  # refused: the answer is written, the connection waits to close
        self.linger_left = 0  # bytes of the refused request's body still to be dropped
        self.pace: asyncio.TimerHandle | None = None  # the next read of a lingering connection
        # One timer for the connection's time limits (head, body, keep-alive, linger): a limit
        # set later than the armed timer only moves ``deadline``, and the timer, when it fires,
        # waits on until the deadline then in force. So a request on a kept-alive connection
        # arms no timer of its own (three per request did, each a call_later and a cancel).
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # loop.time() the armed timer fires at
        self.deadline = 0.0  # loop.time() the current limit runs out; 0.0: none
        self.reading_paused = False  # paused for too many pipelined requests
        self.writable = asyncio.Event()
        self.writable.set()
        self.accepted_at = 0.0  # perf_counter() at accept, until the first request begins

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.accepted_at = time.perf_counter()
        if not self.router.connection_opened(self):
            self.closing = True
            transport.close()
            return
        self._arm_timer(KEEPALIVE_TIMEOUT_S)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.writable.set()
        self.router.connection_closed(self)
        if self.timer:
            self.timer.cancel()
            self.timer = None
        if self.pace:
            self.pace.cancel()
            self.pace = None
        if self.task and not self.task.done():
            self.task.cancel()
        # The parser calls back into this object, which holds it: a cycle that only the cyclic
        # collector would free, with the request half-parsed. Connections refused by the
        # hundred a second (an attacker reconnecting) piled up enough of them that one
        # collection held up the loop for tens of ms; freed here, nothing is left to collect.
        del self.parser
        self.current = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.linger_left -= len(data)
            if self.transport:
                if self.linger_left < 0:
                    self.transport.close()
                else:
                    self.transport.pause_reading()
                    self.pace = self.loop.call_later(LINGER_PACE_S, self._drop_more)
            return
        if self.closing or self.stopped:
            return
        counted = self.in_head
        if counted:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.closing and not self.stopped:
                self._fail(400, f"malformed HTTP request: {exc}")
        if counted and self.in_head and self.head_bytes > admission.MAX_HEAD_BYTES and not self.stopped:
            # The head goes on and on (a target that does is a 414 already, see on_url): stop
            # here, before the parser buffers any more of it.
            self._fail(431, f"request head larger than {admission.MAX_HEAD_BYTES} bytes")

    def _arm_timer(self, seconds: float) -> None:
        at = self.loop.time() + seconds
        self.deadline = at
        if self.timer is None or self.timer_at > at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(at, self._timer_fired)
            self.timer_at = at

    def _timer_fired(self) -> None:
        self.timer = None
        deadline = self.deadline
        if not deadline:
            return
        if self.loop.time() < deadline:  # a later limit replaced the one this timer was armed for
            self.timer = self.loop.call_at(deadline, self._timer_fired)
            self.timer_at = deadline
            return
        self.deadline = 0.0
        self._timed_out()

    def _timed_out(self) -> None:
        if self.lingering:  # the refused client had its time to read the refusal
            if self.transport:
                self.transport.close()
        elif self.current is not None and not self.stopped:  # a request began, never finished arriving
            what = "request head" if self.in_head else "request"
            self._fail(408, f"{what} not received in time")
        elif self.task is None and not self.queue and self.transport:
            self.transport.close()  # idle keep-alive connection

    def _fail(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer an error the client caused, then close: the stream may be out of sync. What
        the client still sends of its body is dropped for a moment, so it reads this answer.
        With earlier pipelined requests still to answer, it waits for them (see _next)."""
        self.stopped = True
        if self.task is not None or self.queue:
            self.deferred = (status, message, headers)
            if self.transport:
                self.transport.pause_reading()
            return
        self.closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response(status, headers or [], message_body(message), keep_alive=False))
        try:
            transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            transport.close()
            return
        # Not read at the loop's pace from here on (see LINGER_PACE_S), and the first to close
        # when the connection cap is reached.
        transport.pause_reading()
        self.router.connection_refused(self)
        self.lingering = True
        self._arm_timer(LINGER_S)
        if not self.in_head and self.current is not None:  # its body is on its way: drop some
            self.linger_left = LINGER_BYTES
            self.pace = self.loop.call_later(LINGER_PACE_S, self._drop_more)

    def _drop_more(self) -> None:
        self.pace = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.stopped:  # pipelined after a request that closes the connection: never read
            raise Refused
        self.current = request = Request()
        request.begun = time.perf_counter()
        if self.accepted_at:
            self.router.timing.first_byte(request.begun - self.accepted_at)
            self.accepted_at = 0.0
        self.body_size = 0
        self.router.connection_busy(self)
        self._arm_timer(self.router.config.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        request = self.current
        assert request is not None
        request.url_parts.append(url)
        request.head_size += len(url)
        if request.head_size > admission.MAX_REQUEST_LINE and not request.header_count:
            self._fail(414, f"request line longer than {admission.MAX_REQUEST_LINE} bytes")
            raise Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        request.header_count += 1
        if request.header_count > admission.MAX_HEADERS:
            self._fail(431, f"more than {admission.MAX_HEADERS} header fields")
            raise Refused
        size = len(name) + len(value)
        if size > admission.MAX_HEADER_LINE:
            self._fail(431, f"a header field longer than {admission.MAX_HEADER_LINE} bytes")
            raise Refused
        request.head_size += size + 4  # the head so far (the target, and each "name: value\r\n")
        if request.head_size > admission.MAX_HEAD_BYTES:
            self._fail(431, f"request head larger than {admission.MAX_HEAD_BYTES} bytes")
            raise Refused
        lname = name.lower()
        kind = _NOTED.get(lname)  # one lookup for most headers, which the router only passes on
        if kind is None:
            if lname == self.router.sticky_header:
                request.sticky = value
        elif kind == _AUTHORIZATION:
            request.authorization.append(value)
            return
        elif kind == _CONTENT_TYPE:
            request.content_type = value
        elif kind == _CONTENT_LENGTH:
            if value.isdigit() and int(value) > self.router.config.max_request_bytes:
                request.oversized = True  # a 413, once the credential is checked
        elif kind == _PIN:
            request.pin = value.strip()
        elif kind == _REQUEST_ID:
            if 0 < len(value) <= MAX_REQUEST_ID:  # the inference server refuses longer ids
                request.request_id = value
            return
        elif kind == _EXPECT:
            request.expect = value
        else:  # Connection
            tokens = {token.strip().lower() for token in value.split(b",")}
            request.connection_tokens = request.connection_tokens | tokens
        request.headers.append((lname, value))

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        self.in_head = False
        request.url = request.url_parts[0] if len(request.url_parts) == 1 else b"".join(request.url_parts)
        request.url_parts = []
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()
        request.http11 = self.parser.get_http_version() == "1.1"
        request.path = path = request.url.split(b"?", 1)[0]
        refusal = self.router.credentials.refusal(
            admission.needed(request.method, path), request.authorization
        )
        if refusal is not None:
            status, message, ask = refusal
            self._fail(status, message, [(b"WWW-Authenticate", b"Bearer")] if ask else None)
            raise Refused
        if b"upgrade" in request.connection_tokens and any(n == b"upgrade" for n, _ in request.headers):
            self._fail(400, "protocol upgrades are not supported")  # before it is queued and sent on
            raise Refused
        if request.oversized:
            self._too_large()
            raise Refused
        if request.expect is not None:
            self._expect_continue(request)
        self._arm_timer(BODY_READ_TIMEOUT_S)

    def _expect_continue(self, request: Request) -> None:
        """Expect is hop-by-hop: the router answers it and never forwards it. A client waiting for
        100 Continue gets it now, unless answers to earlier pipelined requests are still due (it
        then goes out after them, see _next: a 100 must not overtake an earlier answer)."""
        if request.expect.strip().lower() != b"100-continue":  # type: ignore[union-attr]
            self._fail(417, "the only expectation this endpoint meets is 'Expect: 100-continue'")
            raise Refused
        if not request.http11:  # HTTP/1.0 clients never wait for it
            request.expect = b""
            return
        if self.task is None and not self.queue and self.transport:
            request.expect = b""
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        request = self.current
        assert request is not None
        self.body_size += len(body)
        request.expect = b""  # the body is coming: no 100 needed
        if self.body_size > self.router.config.max_request_bytes:  # chunked bodies have no length
            self._too_large()
            raise Refused
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        request = self.current
        assert request is not None
        self.in_head = True
        self.head_bytes = 0
        self.deadline = 0.0  # no limit while it is answered (the timer, if armed, finds none)
        request.started = time.perf_counter()
        chunks = request.chunks
        # The usual body arrives in one piece and is kept as it is; only a split one is joined.
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.chunks = []
        if request.request_id is None:
            request.request_id = b"%s%016x" % (_ID_PREFIX, next(_id_numbers))
        self.current = None
        self.queue.append(request)
        if not request.keep_alive:  # the last one on this connection (RFC 9112 9.6)
            self.stopped = True
            if self.transport:
                self.transport.pause_reading()
        if len(self.queue) > MAX_PIPELINED and self.transport:
            self.reading_paused = True
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
            if self.closing:
                return
            if self.deferred is not None:  # a refusal that waited for the answers before it
                status, message, headers = self.deferred
                self.deferred = None
                self._fail(status, message, headers)
                return
            current = self.current
            if current is None:
                self.router.connection_idle(self)
                self._arm_timer(KEEPALIVE_TIMEOUT_S)
            elif current.expect and self.transport:  # a deferred 100 Continue: its turn now
                current.expect = b""
                self.transport.write(CONTINUE)
            return
        request = self.queue.popleft()
        if self.reading_paused and len(self.queue) <= MAX_PIPELINED // 2 and not self.stopped:
            self.reading_paused = False
            if self.transport:
                self.transport.resume_reading()
        self.task = request.task = self.loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        router = self.router
        request.served = time.perf_counter()
        router.started()
        try:
            try:
                head, body = await router.dispatch.answer(request)
            except Exception:
                # A fault of the router's own costs this request a 500, never the connection:
                # left unanswered, every later request on it would wait forever.
                log.exception("the router failed on a request to %s", request.url.decode("latin-1")[:200])
                request.keep_alive = False
                message = "the endpoint's router failed on this request; its log (router.log) says why"
                head, body = parts(500, [], message_body(message), keep_alive=False)
            transport = self.transport
            if request.method == b"HEAD" and not isinstance(body, BodyStream):
                # The head only (its length is the GET's): a client on a kept-alive connection
                # would read a body as the start of its next answer.
                body = b""
            if isinstance(body, BodyStream):
                written = time.perf_counter()  # a stream's head: its latency, as the slot's
                self._measured(request, written)
                await self._write_stream(head, body, request)
            else:
                if transport and not transport.is_closing():
                    if len(body) <= SMALL_BODY:
                        transport.write(head + body)
                    else:
                        transport.write(head)
                        transport.write(body)
                # What follows is bookkeeping: done once the answer is on its way, so that at
                # concurrency 1 it overlaps the client's turn rather than delaying the answer.
                written = time.perf_counter()
                self._measured(request, written)
            if request.upstream is not None:
                router.timing.add(request, request.upstream, written)
            if not request.keep_alive and transport and not transport.is_closing():
                transport.close()
                self.closing = True
        finally:
            request.task = None  # no cycle (task -> coroutine -> request -> task) left for the GC
            router.finished()
            self._next()

    def _measured(self, request: Request, now: float) -> None:
        if request.deployment is not None:
            self.router.measurements.live(
                request.deployment,
                request.status,
                now - request.started,
                request.request_id.decode("latin-1"),  # type: ignore[union-attr]
                request.pin is not None,
            )

    async def _write_stream(self, head: bytes, stream: BodyStream, request: Request) -> None:
        """A slot's streamed answer, relayed chunk by chunk as it comes (chunked to an HTTP/1.1
        client; to an HTTP/1.0 one, raw until the connection closes)."""
        transport = self.transport
        chunked = request.http11
        ended = False
        try:
            if transport is None or transport.is_closing():
                return
            transport.write(head)
            while True:
                chunk = await stream.next()
                if not chunk:
                    break
                if transport.is_closing():
                    return
                if chunked:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    transport.write(chunk)
                if not self.writable.is_set():  # the client reads slower than the slot writes
                    await self.writable.wait()
            if chunked and not transport.is_closing():
                transport.write(b"0\r\n\r\n")
            ended = True
        except Exception as exc:  # the slot stopped midway: the client must see an incomplete answer
            log.warning("a streamed answer ended early: %s", exc or type(exc).__name__)
        finally:
            if not ended:
                stream.abandon()
                request.keep_alive = False
                if transport is not None:
                    transport.close()
                self.closing = True
