"""Benchmark: what the local target's router adds to a request, against the slot's own server.

With the iris example pushed (fresh TDSP_DEPLOY_HOME, deleted at the end), `wrk` POSTs the
sample request to:

- ours: the scoring URI, through the router, with ``Authorization: Bearer <primary key>``;
- peer: the slot's inference server directly, ``http://127.0.0.1:<slot port>/score``.

At concurrency 1, 4 and 16 (wrk threads: 1 for c=1, else 2), 10 s each (--quick: 2 s, one round),
direct, the bare relay (below) and router in turn so they share the machine's noise, 2 rounds;
the run with more requests/s of each side is kept. Each router run also reads the router's own timing
(``GET /-/timing`` before and after) and reports where its time went per request (parse,
queue, pick, connect, slot, relay) and how many connections to the slot it opened and reused.
Goals per concurrency: router p50 - direct p50 <= 1 ms, router/direct requests/s >= 0.90, and
no non-2xx answer or socket error on either side.

A third side, reported without a goal (``router_vs_bare_relay_c*``): the same wrk load through
a bare relay (this file, ``--bare-relay``: one process on uvloop, httptools finding where each
request and answer ends, the bytes passed on unchanged over one kept-alive slot connection per
client connection; no key, no checks, no log), run right after the direct side. It is the
floor of any Python relay between wrk and the slot on this machine: the router's ratio to it
says what the router's own work costs, and its ratio to direct what the extra hop costs.

The slot's inference server keeps connections alive (granian, or gunicorn's threaded worker,
see slot_server.py), so every side runs on kept-alive connections: wrk's to the slot, the
relay or the router, and the relay's and the router's to the slot.

    python bench/router_overhead.py [--quick]      (needs wrk: apt-get install wrk)

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import httptools
import uvloop
from common import (
    EXAMPLE,
    EXAMPLE_DIR,
    deployed,
    emit,
    free_port,
    note,
    result,
    router_timing,
    run_wrk,
    slot_pass,
    stop_group,
    timing_change,
    wrk_script,
    wrk_threads,
)

CONCURRENCY = (1, 4, 16)
ROUNDS = 2
GOAL_ADDED_P50_MS = 1.0
GOAL_THROUGHPUT = 0.90


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 s per run and one round, instead of 10 s and two"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(  # the relay's own process (started_relay)
        "--bare-relay", nargs=2, type=int, metavar=("PORT", "SLOT_PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.bare_relay:
        bare_relay(*args.bare_relay)
        return
    duration = 2 if args.quick else args.duration
    rounds = 1 if args.quick else ROUNDS
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "router_overhead: `wrk` is not installed (Debian: apt-get install wrk); nothing was measured"
        )
    body = (EXAMPLE_DIR / "sample-request.json").read_text()

    with (
        deployed(EXAMPLE) as endpoint,
        tempfile.TemporaryDirectory(prefix="tdsp-bench-wrk-") as tmp,
        started_relay(endpoint["status"]["slots"][0]["details"]["port"]) as relay_port,
    ):
        status = endpoint["status"]
        slot = status["slots"][0]
        direct_script = wrk_script(Path(tmp) / "direct.lua", body, slot_pass(endpoint, slot))
        targets = {
            "direct": (f"http://127.0.0.1:{slot['details']['port']}/score", direct_script),
            "relay": (f"http://127.0.0.1:{relay_port}/score", direct_script),
            "router": (
                status["scoring_uri"],
                wrk_script(Path(tmp) / "router.lua", body, {"Authorization": f"Bearer {endpoint['key']}"}),
            ),
        }
        note(f"router {targets['router'][0]}, slot {slot['name']} {targets['direct'][0]}; {duration} s/run")
        for url, script in targets.values():  # warm-up, not kept
            run_wrk(wrk, url, script, concurrency=4, duration=1)
        best: dict[tuple[str, int], dict[str, Any]] = {}
        for round_ in range(1, rounds + 1):
            for concurrency in CONCURRENCY:
                for side, (url, script) in targets.items():
                    before = router_timing(endpoint) if side == "router" else None
                    run = run_wrk(wrk, url, script, concurrency=concurrency, duration=duration)
                    if side == "router":
                        run["router_timing"] = timing_change(before, router_timing(endpoint))
                        note(f"  the router's own timing: {breakdown_line(run['router_timing'])}")
                    note(
                        f"round {round_} c={concurrency} {side}: {run['requests_per_s']:.0f} req/s, "
                        f"p50 {run['p50_ms']:.3f} ms, p99 {run['p99_ms']:.3f} ms, errors {run['errors']}"
                    )
                    kept = best.get((side, concurrency))
                    if kept is None or run["requests_per_s"] > kept["requests_per_s"]:
                        best[side, concurrency] = run

    entries = []
    for c in CONCURRENCY:
        router, direct, relay = best["router", c], best["direct", c], best["relay", c]
        entries.append(
            result(
                f"router_vs_bare_relay_c{c}",
                router["requests_per_s"],
                relay["requests_per_s"],
                unit="req/s",
                goal="(reported: the router against the floor of a Python relay on the same hop)",
                met=None,
                concurrency=c,
                relay=relay,
                relay_vs_direct=round(relay["requests_per_s"] / direct["requests_per_s"], 3),
                peer_command="wrk POST through a bare httptools relay on uvloop to the same slot "
                "(router_overhead.py --bare-relay), same script as the direct side",
            )
        )
        timing = router.pop("router_timing", None)
        clean = sum(router["errors"].values()) + sum(direct["errors"].values()) == 0
        added = router["p50_ms"] - direct["p50_ms"]
        throughput = router["requests_per_s"] / direct["requests_per_s"]
        detail = {
            "concurrency": c,
            "threads": wrk_threads(c),
            "router": router,
            "direct": direct,
            "errors_ok": clean,
            # the router's own per-phase timing of the router run kept (timing.py): where the
            # time it adds goes
            "router_timing": timing,
            "peer_command": "wrk POST to the slot's inference server directly (no router, no key; "
            "the slot's secret header)",
            "notes": f"wrk --latency, {duration} s per run, direct/relay/router in turn, "
            f"better of {rounds} round(s) (by requests/s); met also requires 0 non-2xx and 0 socket errors "
            "on both sides",
        }
        entries.append(
            result(
                f"router_added_p50_c{c}",
                router["p50_ms"],
                direct["p50_ms"],
                unit="ms",
                goal=f"router p50 - direct p50 <= {GOAL_ADDED_P50_MS:g} ms",
                met=added <= GOAL_ADDED_P50_MS and clean,
                added_p50_ms=round(added, 3),
                **detail,
            )
        )
        entries.append(
            result(
                f"router_throughput_c{c}",
                router["requests_per_s"],
                direct["requests_per_s"],
                unit="req/s",
                goal=f"router/direct >= {GOAL_THROUGHPUT:g}",
                met=throughput >= GOAL_THROUGHPUT and clean,
                **detail,
            )
        )
    emit(entries)


def breakdown_line(change: dict[str, Any] | None) -> str:
    """The router's per-phase means in one line (us per request)."""
    if not change or not change["requests"]:
        return "not served by this router"
    phases = ", ".join(f"{name} {p['mean_us']:.0f}" for name, p in change["phases"].items())
    connections = change["slot_connections"]
    return (
        f"{phases} us per request; router's own {change['router_us_per_request']:.0f} us; "
        f"slot connections opened {connections['opened']}, reused {connections['reused']}"
    )


@contextlib.contextmanager
def started_relay(slot_port: int) -> Iterator[int]:
    """The bare relay in a process of its own, in front of the slot; its port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--bare-relay", str(port), str(slot_port)], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # listening: the slot behind it is up already
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare relay did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        stop_group(process)


class _RelayClient(asyncio.Protocol):
    """One client connection of the bare relay, with its own kept-alive slot connection."""

    def __init__(self, slot_port: int):
        self.slot_port = slot_port
        self.parser = httptools.HttpRequestParser(self)
        self.pending: list[bytes] = []
        self.slot: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.pending_requests: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            slot, _ = await loop.create_connection(lambda: _RelaySlot(self), "127.0.0.1", self.slot_port)
        except OSError:  # no slot: the client sees its connection closed
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.transport.is_closing():  # type: ignore[union-attr]  # the client left meanwhile
            slot.close()
            return
        if self.pending_requests:  # what came while the connection was made
            slot.write(b"".join(self.pending_requests))
        self.slot = slot

    def data_received(self, data: bytes) -> None:
        self.pending.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:  # a whole request: on to the slot as it came
        data, self.pending = b"".join(self.pending), []
        if self.slot is None:
            self.pending_requests.append(data)
        else:
            self.slot.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None:
            self.slot.close()


class _RelaySlot(asyncio.Protocol):
    def __init__(self, client: _RelayClient):
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.pending: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.pending.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:  # a whole answer: back to the client as it came
        data, self.pending = b"".join(self.pending), []
        self.client.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


def bare_relay(port: int, slot_port: int) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _RelayClient(slot_port), "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
