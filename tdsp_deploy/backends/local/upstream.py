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
import time

import httptools

# Idle connections are closed after this long: below gunicorn's --keep-alive (2 s), so the
# router, not the slot, closes an idle connection and a request never races that close.
IDLE_TIMEOUT_S = 1.5
MAX_IDLE_PER_SLOT = 64
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
MAX_DOUBLINGS = 16  # far past the ceiling


class SlotUnavailable(Exception):
    """No connection to the slot could be made: it never saw the request."""


class SlotClosed(Exception):
    """The slot closed the connection after the request was sent, before a whole answer."""


class UpstreamAnswer:
    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class UpstreamConnection(asyncio.Protocol):
    """One connection to a slot's server; answers one request at a time."""

    def __init__(self, pool: SlotPool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[UpstreamAnswer] | None = None
        self.received = False  # any byte of the current answer
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.reusable = False
        self.idle_since = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, head: bytes, body: bytes, answer: asyncio.Future[UpstreamAnswer]) -> None:
        self.answer = answer
        self.received = False
        self.reusable = False
        self.reason = b""
        self.headers = []
        self.body = []
        transport = self.transport
        assert transport is not None
        if len(body) <= 65536:
            transport.write(head + body)  # one segment for the usual small request
        else:
            transport.write(head)  # a large body is handed to the kernel as it is, not copied
            transport.write(body)

    def data_received(self, data: bytes) -> None:
        if self.answer is None:  # nothing asked: a slot talking out of turn is not to be trusted
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
        self._fail(SlotClosed("the slot closed the connection before answering"))

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        self.answer = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks -------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        answer = self.answer
        self.answer = None
        self.reusable = self.parser.should_keep_alive()
        if answer is not None and not answer.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            answer.set_result(UpstreamAnswer(self.parser.get_status_code(), self.reason, self.headers, body))


class SlotPool:
    """Connections to one slot process (one port), its requests in flight, and its health."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.port = port
        self.idle: list[UpstreamConnection] = []
        self.in_flight = 0
        self.failures = 0
        self.down_until = 0.0
        self.retired = False  # no longer in the routes; closed once its last request is done
        self.quiet = asyncio.Event()  # set while nothing is in flight
        self.quiet.set()

    # -- accounting ----------------------------------------------------------------------
    def started(self) -> None:
        self.in_flight += 1
        self.quiet.clear()

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.quiet.set()
            if self.retired:
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
    async def exchange(self, head: bytes, body: bytes) -> UpstreamAnswer:
        """Send one request and read the answer. Raises SlotUnavailable when the slot cannot
        have seen the request, SlotClosed when it may have. The caller bounds the time."""
        loop = asyncio.get_running_loop()
        connection = self._reuse()
        if connection is not None:
            answer: asyncio.Future[UpstreamAnswer] = loop.create_future()
            connection.send(head, body, answer)
            try:
                return await self._finish(connection, answer)
            except SlotClosed:
                if connection.received:
                    raise
                # The slot closed this idle connection just as it was reused: it read nothing
                # from it, so the request goes again on a new connection.
            except BaseException:
                connection.close()
                raise
        try:
            _, connection = await loop.create_connection(
                lambda: UpstreamConnection(self), "127.0.0.1", self.port
            )
        except OSError as exc:
            raise SlotUnavailable(str(exc) or type(exc).__name__) from None
        answer = loop.create_future()
        connection.send(head, body, answer)
        try:
            return await self._finish(connection, answer)
        except BaseException:
            connection.close()
            raise

    async def _finish(
        self, connection: UpstreamConnection, answer: asyncio.Future[UpstreamAnswer]
    ) -> UpstreamAnswer:
        result = await answer
        self.reached()
        if (
            connection.reusable
            and not connection.closed
            and not self.retired
            and len(self.idle) < MAX_IDLE_PER_SLOT
        ):
            connection.idle_since = time.monotonic()
            self.idle.append(connection)
        else:
            connection.close()
        return result

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
