"""The local endpoint's front door: one process on the endpoint port.

It does what an Azure ML managed online endpoint does in front of its deployments: checks
the key (``Authorization: Bearer <key>``), picks a slot (the ``azureml-model-deployment``
request header pins one; otherwise by traffic weight), forwards the request to that slot's
inference server on loopback, and names the slot that answered in the response header
``azureml-model-deployment``.

Speed matters here (the router sits on every request), so it is an asyncio protocol with
httptools' C parser rather than a web framework: keep-alive toward clients and toward the
slots (pooled connections), no per-request copies of a body, and one small task per request.
The parts, each in its module:

- http1.py: the client side (parsing, pipelining, 100 Continue, streamed answers), with
  responses.py building the router's own answers;
- admission.py: what a request may cost before it is admitted, and which key opens what;
- dispatch.py: what an admitted request gets (control routes, slot choice, retries, mirrors);
- upstream.py: the connections to the slots (pools, 1xx, streams, back-off);
- deadlines.py: the time limit on every request to a slot, kept by one timer;
- this module: the shared state (routes, keys, pools, client connections, drains) and the
  process (signals, start, stop).

Unpinned requests without a sticky key go where the split says and a worker is free
(balance.py); each request's time in the router is measured by phase (timing.py, served at
``GET /-/timing``).

Each slot's requests in flight are counted (``GET /-/state``, ``/metrics``), and
``POST /-/drain`` stops new requests to a slot and answers once the ones it has are done; the
control routes (``/-/state``, ``/-/timing``, ``/-/drain``, ``/-/resume``) take the admin key
only (admin.json), never the scoring key.

The number of client connections is capped below what the process's file descriptors allow;
at the cap, a refused connection still lingering, else the connection idle longest, is closed
to make room, and when none is either the new one is refused; either is logged.

Run as: ``python -m tdsp_deploy.backends.local.router ROUTER_JSON``. SIGHUP reloads the
configuration and keys; SIGTERM stops accepting, lets in-flight requests finish, and exits.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import resource
import signal
import time
from pathlib import Path

from tdsp_deploy.backends.local.admission import Credentials
from tdsp_deploy.backends.local.balance import Balancer
from tdsp_deploy.backends.local.dispatch import Dispatch
from tdsp_deploy.backends.local.http1 import ClientConnection
from tdsp_deploy.backends.local.metrics import Measurements
from tdsp_deploy.backends.local.routes import RouterConfig, RouteTable, SlotRoute
from tdsp_deploy.backends.local.slot_guard import slot_secret
from tdsp_deploy.backends.local.timing import RouterTiming
from tdsp_deploy.backends.local.upstream import IDLE_TIMEOUT_S, InFlightCount, SlotPool

log = logging.getLogger("tdsp_deploy.router")

DRAIN_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 4096
# File descriptors kept for everything but client connections: logs, the listening socket, and
# one connection to a slot per client connection (counted in the cap's halving).
RESERVED_FDS = 64
CAP_LOG_EVERY_S = 10.0


class Router(InFlightCount):
    """Shared state of the router process: routes, keys, slot pools and in-flight accounting."""

    def __init__(self, config_path: Path):
        super().__init__()
        self.config_path = config_path
        self.config = RouterConfig.read(config_path)
        self.routes = RouteTable(())
        self.balancer = Balancer()
        self.pools: dict[int, SlotPool] = {}  # by port: one pool per slot process
        self.draining: set[str] = set()
        self.down_until = 0.0  # the latest back-off of any pool: before it, look for down slots
        self.connections: set[ClientConnection] = set()
        # Idle client connections, longest idle first: the first to close when the cap is reached,
        # after those refused and waiting to close (http1.py lingers after a refusal).
        self.idle_connections: dict[ClientConnection, None] = {}
        self.refused_connections: dict[ClientConnection, None] = {}
        self.max_connections = DEFAULT_MAX_CONNECTIONS
        self.cap_closed = 0  # connections closed or refused at the cap since it was last logged
        self.cap_logged = 0.0
        self.measurements = Measurements(self.config.endpoint, None)
        self.timing = RouterTiming()
        self.sticky_header: bytes | None = None
        self.credentials = Credentials((), None)
        self.slot_key: str | None = None
        self.dispatch = Dispatch(self)
        self.apply(self.config)

    def apply(self, config: RouterConfig) -> None:
        keys = json.loads(Path(config.keys_file).read_text())
        scoring = tuple(keys[name].encode() for name in ("primary_key", "secondary_key") if keys.get(name))
        admin = json.loads(Path(config.admin_file).read_text()) if config.admin_file else {}
        # No admin key (a router.json from before there was one): the control routes open to nobody.
        self.credentials = Credentials(
            scoring, admin["admin_key"].encode() if admin.get("admin_key") else None
        )
        self.slot_key = admin.get("slot_key") or None
        self.max_connections = connection_cap(config.max_connections)
        self.routes = RouteTable(config.slots, salt=config.experiment_id or config.endpoint)
        self.balancer = Balancer()  # a new split starts even
        self._sync_pools(config.slots)
        self.measurements.log_to(config.request_log)
        self.sticky_header = config.sticky_header.lower().encode() if config.sticky_header else None
        self.config = config

    def _new_pool(self, slot: SlotRoute) -> SlotPool:
        secret = (
            slot_secret(self.slot_key, slot.name, slot.revision) if self.slot_key and slot.revision else ""
        )
        return SlotPool(slot.name, slot.port, secret.encode())

    def _sync_pools(self, slots: tuple[SlotRoute, ...]) -> None:
        ports = {s.port: s.name for s in slots}
        for slot in slots:
            pool = self.pools.get(slot.port)
            fresh = self._new_pool(slot)
            if pool is None or pool.retired or pool.name != slot.name or pool.secret != fresh.secret:
                if pool is not None:
                    pool.close_idle()
                self.pools[slot.port] = fresh
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

    # -- slots -----------------------------------------------------------------------------
    def pool(self, slot: SlotRoute) -> SlotPool:
        pool = self.pools.get(slot.port)
        if pool is None or pool.retired:
            pool = self.pools[slot.port] = self._new_pool(slot)
        return pool

    def avoided(self) -> set[str]:
        """Slots that weighted traffic leaves out now: draining, or in a back-off."""
        if not self.draining and time.monotonic() >= self.down_until:
            return set()
        now = time.monotonic()
        down = {p.name for p in self.pools.values() if not p.retired and p.is_down(now)}
        return down | self.draining

    def choose(self, sticky: bytes | None, tried: set[str] | None = None) -> SlotRoute | None:
        """A slot for a weighted request: by its sticky key's hash when it has one (the same key,
        the same slot), else by the balancer (balance.py), leaving out draining slots, those in
        a back-off and those already ``tried``."""
        avoid = self.avoided()
        if tried:
            avoid |= tried
        if sticky is not None:
            if not avoid:
                return self.routes.choose(sticky)
            slot = self.routes.choose(sticky, avoid)
            if slot is None and not tried:
                # Every slot with traffic is in a back-off: try one anyway rather than refuse
                # (never a draining one).
                slot = self.routes.choose(sticky, self.draining)
            return slot
        weighted = self.routes.weighted
        if avoid:
            candidates = [s for s in weighted if s.name not in avoid]
            if not candidates and not tried:  # as above: a slot in a back-off rather than none
                candidates = [s for s in weighted if s.name not in self.draining]
        else:
            candidates = weighted
        if not candidates:
            return None
        return self.balancer.pick(candidates, self._in_flight)

    def _in_flight(self, slot: SlotRoute) -> int:
        pool = self.pools.get(slot.port)
        return pool.in_flight if pool is not None else 0

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
        waits = [asyncio.ensure_future(p.quiet()) for p in pools if p.in_flight]
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

    # -- client connections ----------------------------------------------------------------
    def connection_opened(self, connection: ClientConnection) -> bool:
        """Take a new client connection, or not (False) when the cap is reached and no open
        connection is idle or refused; at the cap, the oldest refused connection, else the
        connection idle longest, is closed to make room."""
        if len(self.connections) >= self.max_connections:
            oldest = next(iter(self.refused_connections), None)
            if oldest is not None:
                self._at_cap("closing a refused connection waiting to close for each new one")
            else:
                oldest = next(iter(self.idle_connections), None)
                self._at_cap(
                    "closing the connection idle longest for each new one"
                    if oldest is not None
                    else "refusing new connections, none is idle"
                )
            if oldest is None:
                return False
            self.connection_closed(oldest)
            if oldest.transport is not None:
                oldest.closing = True
                oldest.transport.close()
        self.connections.add(connection)
        self.idle_connections[connection] = None
        return True

    def connection_idle(self, connection: ClientConnection) -> None:
        if connection in self.connections:
            self.idle_connections[connection] = None

    def connection_busy(self, connection: ClientConnection) -> None:
        self.idle_connections.pop(connection, None)

    def connection_refused(self, connection: ClientConnection) -> None:
        """Its request was refused and answered; it only waits to close (the first to go at the cap)."""
        self.idle_connections.pop(connection, None)
        if connection in self.connections:
            self.refused_connections[connection] = None

    def connection_closed(self, connection: ClientConnection) -> None:
        self.connections.discard(connection)
        self.idle_connections.pop(connection, None)
        self.refused_connections.pop(connection, None)

    def _at_cap(self, what: str) -> None:
        self.cap_closed += 1
        now = time.monotonic()
        if now - self.cap_logged >= CAP_LOG_EVERY_S:
            log.warning(
                "%d client connections open, the cap (%d): %s (%d at the cap since the last such line)",
                len(self.connections),
                self.max_connections,
                what,
                self.cap_closed,
            )
            self.cap_logged, self.cap_closed = now, 0


async def serve(config_path: Path) -> None:
    router = Router(config_path)
    # Each request allocates a few dozen short-lived objects without reference cycles; at the
    # default threshold the cyclic collector ran often enough to take ~6% of the router's CPU
    # (measured with py-spy). Keep it, but far less often, and leave start-up objects out of it.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    loop = asyncio.get_running_loop()
    config = router.config
    log.info("at most %d client connections at once", router.max_connections)
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
        await asyncio.wait_for(router.quiet(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        log.warning("stopping with %s requests still in flight", router.in_flight)
    for connection in list(router.connections):
        if connection.transport:
            connection.transport.close()
    for pool in router.pools.values():
        pool.close_idle()
    router.measurements.close()
    log.info("router stopped after draining for %.2f s", time.monotonic() - started)


def connection_cap(configured: int) -> int:
    """How many client connections the router takes at once: as configured, but never so many
    that accept() or a connection to a slot fails for want of file descriptors (the soft limit
    is raised to the hard one first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if wanted > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
    room = max((soft - RESERVED_FDS) // 2, 16)
    return min(configured or DEFAULT_MAX_CONNECTIONS, room)


def main(argv: list[str] | None = None) -> None:
    from tdsp_deploy.backends.local import daemon

    config = daemon.start(argv, "router", "ROUTER_JSON")
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it: asyncio's own loop works too
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))


if __name__ == "__main__":
    main()
