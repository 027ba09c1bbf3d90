"""The router's side of its connections to the slots: keep-alive pools, one per slot process.

A request reuses an idle connection to its slot when there is one, so a busy endpoint pays
for a TCP connection set-up once per connection rather than once per request. Each pool also
counts the requests in flight to its slot (for drains and /-/state) and remembers when the
slot last refused a connection (a short back-off during which weighted traffic goes elsewhere).

Kept free of the router's request handling so that the rules about when a request may be
sent again live in one place: only when the slot cannot have seen it (no connection, or a
reused connection that the slot had closed while idle).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

import httptools

from tdsp_deploy.backends.local.responses import RESPONSE_DROP
from tdsp_deploy.backends.local.slot_guard import SLOT_SECRET_HEADER

log = logging.getLogger("tdsp_deploy.router")

# Idle connections are closed after this long: below gunicorn's --keep-alive (2 s), so the
# router, not the slot, closes an idle connection and a request never races that close.
IDLE_TIMEOUT_S = 1.5
MAX_IDLE_PER_SLOT = 64
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
MAX_DOUBLINGS = 16  # far past the ceiling
STREAM_HIGH_WATER = 1024 * 1024  # bytes of a streamed answer held for a slow client at most
HAS_LENGTH, CHUNKED = 1, 2  # an answer's framing, as its headers say


class SlotUnavailable(Exception):
    """No connection to the slot could be made: it never saw the request."""


class SlotClosed(Exception):
    """The slot closed the connection after the request was sent, before a whole answer."""


class UpstreamAnswer:
    """A slot's final answer: its body whole, or (a chunked answer) ``stream`` as it comes.

    ``headers`` are those to relay: a slot's answer has RESPONSE_DROP's left out as they are
    parsed, and ``dropped`` names the headers its Connection header listed (to leave out too);
    ``typed``: whether a Content-Type is among them (None: not known, look)."""

    __slots__ = (
        "status",
        "reason",
        "headers",
        "body",
        "stream",
        "sent",
        "answered",
        "fresh",
        "dropped",
        "typed",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        stream: BodyStream | None = None,
    ):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.stream = stream
        self.dropped: set[bytes] | None = None
        self.typed: bool | None = None
        # perf_counter() when the request was written to the slot and when its answer was read
        # (0.0 for the router's own answers), and whether a new connection carried it: timing.py
        self.sent = 0.0
        self.answered = 0.0
        self.fresh = False


class BodyStream:
    """The body of a chunked answer, handed on as the slot produces it (a streaming run()).

    The reader takes chunks with ``next()``; when it falls behind by STREAM_HIGH_WATER bytes
    the slot's connection stops being read until it catches up, so a slow client never makes
    the router hold a fast slot's whole answer. ``when_done`` callbacks run once, at its end
    or failure: only then is the connection free for another request."""

    def __init__(self, connection: UpstreamConnection):
        self.connection = connection
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.done = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.when_done: list[Callable[[], None]] = []

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > STREAM_HIGH_WATER and not self.paused and self.connection.transport:
            self.paused = True
            self.connection.transport.pause_reading()
        self._wake()

    def end(self, error: Exception | None = None) -> None:
        if self.done:
            return
        self.done, self.error = True, error
        self._wake()
        callbacks, self.when_done = self.when_done, []
        for callback in callbacks:
            callback()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at the stream's end or failure (now, if it has ended already: a short
        answer may be whole before anyone asks)."""
        if self.done:
            callback()
        else:
            self.when_done.append(callback)

    async def next(self) -> bytes:
        """The next chunk; b"" at the end. Raises SlotClosed when the slot stopped midway."""
        while not self.chunks:
            if self.done:
                if self.error is not None:
                    raise self.error
                return b""
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered <= STREAM_HIGH_WATER // 4 and self.connection.transport:
            self.paused = False
            self.connection.transport.resume_reading()
        return chunk

    def abandon(self) -> None:
        """The reader gives up (its client left, or time ran out): the rest is never read, so the
        connection cannot be used again."""
        self.connection.close()
        self.end(SlotClosed("abandoned"))

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    """One connection to a slot's server; answers one request at a time.

    It is given back to its pool only after a whole final answer with nothing after it: 1xx
    answers are interim and skipped (the final one follows), and a byte past the final answer
    closes it, so no answer can ever be read as the next request's."""

    def __init__(self, pool: SlotPool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[UpstreamAnswer] | None = None
        self.stream: BodyStream | None = None
        self.busy = False  # from sending a request to the end of its final answer
        self.received = False  # any byte of the current answer
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.reusable = False
        self.idle_since = 0.0
        self.closed = False
        self.interim = False  # the message being parsed is a 1xx: the final answer follows it
        self.until_close = False  # the answer has no length: its end is the connection's
        self.sent_at = 0.0  # perf_counter() once the current request was written
        self.framing = 0  # HAS_LENGTH, CHUNKED: what the current message's headers said
        self.typed = False  # the current message has a Content-Type
        self.dropped: set[bytes] | None = None  # headers its Connection header names

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _forget_answer(self) -> None:
        """Clears what was parsed of an answer, before a request or after an interim answer."""
        self.reason = b""
        self.headers = []
        self.framing = 0
        self.typed = False
        self.dropped = None
        self.body = []

    def send(self, head: bytes, body: bytes, answer: asyncio.Future[UpstreamAnswer]) -> None:
        self.answer = answer
        self.busy = True
        self.received = False
        self.reusable = False
        self._forget_answer()
        transport = self.transport
        assert transport is not None
        if len(body) <= 65536:
            transport.write(head + body)  # one segment for the usual small request
        else:
            transport.write(head)  # a large body is handed to the kernel as it is, not copied
            transport.write(body)
        self.sent_at = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # nothing asked: a slot talking out of turn is not to be trusted
            log.warning(
                "deployment %s (port %s) sent bytes nobody asked for; that connection is closed",
                self.pool.name,
                self.pool.port,
            )
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(SlotClosed(f"malformed response from the slot: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        del self.parser  # it calls back into this object: a cycle left to the cyclic collector
        if self.stream is not None and self.until_close and exc is None:  # its end, not a failure
            stream, self.stream = self.stream, None
            self.busy = False
            stream.end()
            return
        self._fail(SlotClosed("the slot closed the connection before answering"))

    def _fail(self, error: Exception) -> None:
        self.busy = False
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        self.answer = None
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.end(SlotClosed(f"the slot stopped in the middle of its answer ({error})"))

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if not self.busy:
            # Bytes after the whole answer: whatever they are, they must never be read as the
            # next request's answer, so the connection is not used again.
            log.warning(
                "deployment %s (port %s) sent more than its answer; that connection is closed",
                self.pool.name,
                self.pool.port,
            )
            self.close()
            raise SlotClosed("the slot sent more than its answer")

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # What is relayed is sorted out here, once: the framing and the hop-by-hop headers are
        # noted and left out, the rest kept as the slot sent them.
        lname = name.lower()
        if lname not in RESPONSE_DROP:
            if lname == b"content-type":
                self.typed = True
            self.headers.append((name, value))
        elif lname == b"content-length":
            self.framing |= HAS_LENGTH
        elif lname == b"transfer-encoding":
            if b"chunked" in value.lower():
                self.framing |= CHUNKED
        elif lname == b"connection":  # and the headers it names (RFC 9110 7.6.1)
            tokens = {token.strip().lower() for token in value.split(b",")}
            self.dropped = tokens if self.dropped is None else self.dropped | tokens

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        # 1xx answers are interim (100 Continue, 103 Early Hints): the final one follows on the
        # same connection, and only the final one answers the request.
        self.interim = 100 <= status < 200
        if self.interim or self.answer is None:
            return
        chunked = bool(self.framing & CHUNKED)
        # An answer with no length ends when the slot closes the connection (HTTP/1.0 style).
        self.until_close = not chunked and status not in (204, 304) and not self.framing & HAS_LENGTH
        if chunked or self.until_close:
            # A chunked answer is a stream (a run() that yields): hand it on as it comes.
            self.stream = BodyStream(self)
            answer, self.answer = self.answer, None
            if not answer.done():
                result = UpstreamAnswer(status, self.reason, self.headers, b"", self.stream)
                result.sent, result.answered = self.sent_at, time.perf_counter()
                result.dropped, result.typed = self.dropped, self.typed
                answer.set_result(result)

    def on_body(self, body: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            if self.parser.get_status_code() == 101:  # never asked for: the stream is no longer HTTP
                self._fail(SlotClosed("the slot switched protocols (101) unasked"))
                self.close()
                return
            self._forget_answer()  # the final answer follows the interim one
            return
        self.busy = False
        self.reusable = self.parser.should_keep_alive()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.end()
            return
        answer = self.answer
        self.answer = None
        if answer is not None and not answer.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            result = UpstreamAnswer(self.parser.get_status_code(), self.reason, self.headers, body)
            result.sent, result.answered = self.sent_at, time.perf_counter()
            result.dropped, result.typed = self.dropped, self.typed
            answer.set_result(result)


class InFlightCount:
    """Requests begun and not yet answered, and ``quiet()``: a wait until there are none, which a
    drain waits on (the whole router's, or one slot pool's). Counting is all a request pays:
    the waiters are made only when someone waits."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiters: list[asyncio.Future[None]] = []

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.waiters:
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def quiet(self) -> None:
        """Return once nothing is in flight (at once if nothing is)."""
        if self.in_flight == 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        await waiter


class SlotPool(InFlightCount):
    """Connections to one slot process (one port), its requests in flight, and its health."""

    def __init__(self, name: str, port: int, secret: bytes = b""):
        super().__init__()
        self.name = name
        self.port = port
        # The header line that tells the slot a request comes from the router (slot_guard.py).
        self.secret_line = SLOT_SECRET_HEADER + b": " + secret + b"\r\n" if secret else b""
        self.secret = secret
        self.idle: list[UpstreamConnection] = []
        self.failures = 0
        self.down_until = 0.0
        self.retired = False  # no longer in the routes; closed once its last request is done

    def finished(self) -> None:
        super().finished()
        if self.in_flight == 0 and self.retired:
            self.close_idle()

    def is_down(self, now: float) -> bool:
        return now < self.down_until

    def refused(self) -> None:
        """The slot could not be reached: keep weighted traffic away for a while, longer each time."""
        # The exponent stops growing at the ceiling: a slot down for long is refused thousands of
        # times (every pinned request), and 2**1024 no longer converts to a float.
        delay = min(FIRST_BACKOFF_S * 2 ** min(self.failures, MAX_DOUBLINGS), MAX_BACKOFF_S)
        self.failures += 1
        self.down_until = time.monotonic() + delay
        self.close_idle()

    def reached(self) -> None:
        if self.failures:
            self.failures = 0
            self.down_until = 0.0

    # -- connections ---------------------------------------------------------------------
    async def exchange(
        self, head: bytes, body: bytes, loop: asyncio.AbstractEventLoop | None = None
    ) -> UpstreamAnswer:
        """Send one request and read the answer. Raises SlotUnavailable when the slot cannot
        have seen the request, SlotClosed when it may have. The caller bounds the time, and may
        pass its loop (asyncio.get_running_loop() costs a getpid() system call)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        connection = self._reuse()
        fresh = connection is None
        while True:
            if connection is None:
                try:
                    _, connection = await loop.create_connection(
                        lambda: UpstreamConnection(self), "127.0.0.1", self.port
                    )
                except OSError as exc:
                    raise SlotUnavailable(str(exc) or type(exc).__name__) from None
            answer: asyncio.Future[UpstreamAnswer] = loop.create_future()
            connection.send(head, body, answer)
            try:
                result = await answer
            except SlotClosed:
                if fresh or connection.received:
                    connection.close()
                    raise
                # The slot closed this idle connection just as it was reused: it read nothing
                # from it, so the request goes again on a new connection.
                connection, fresh = None, True
                continue
            except BaseException:
                connection.close()
                raise
            break
        self.reached()
        result.fresh = fresh
        if result.stream is not None:  # free once the whole stream is read
            result.stream.on_done(lambda: self._release(connection))
        else:
            self._release(connection)
        return result

    def _release(self, connection: UpstreamConnection) -> None:
        if (
            connection.reusable
            and not connection.closed
            and not connection.busy
            and not self.retired
            and len(self.idle) < MAX_IDLE_PER_SLOT
        ):
            connection.idle_since = time.monotonic()
            self.idle.append(connection)
        else:
            connection.close()

    def _reuse(self) -> UpstreamConnection | None:
        while self.idle:
            connection = self.idle.pop()  # the most recently used: least likely to be stale
            if not connection.closed and time.monotonic() - connection.idle_since < IDLE_TIMEOUT_S:
                return connection
            connection.close()
        return None

    def forget(self, connection: UpstreamConnection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    def close_idle(self, older_than: float | None = None) -> None:
        """Close idle connections (all, or those idle for longer than ``older_than`` seconds)."""
        now = time.monotonic()
        keep = []
        for connection in self.idle:
            if older_than is not None and now - connection.idle_since < older_than:
                keep.append(connection)
            else:
                connection.close()
        self.idle = keep
