"""Benchmark: the router's own CPU time per request, without sockets, against a bare relay.

The router's throughput next to a slot is decided by its CPU time per request (on two cores
it shares them with the slot and the client), and that time is hard to see through wrk on a
loaded machine. Here the router's request path runs in this process, on uvloop, with its
sockets replaced by transports that hand each write straight to the other side: a client
connection (http1.py) sends the iris example's request with the key, the router admits it,
checks its JSON, picks the slot, writes the request to a kept-alive slot connection
(upstream.py), whose "slot" answers at once with the head a granian slot sends; the answer
is relayed back, logged and timed. No system call is made but the request log's writes.

- ours: the router (router.Router, with its request log on), CPU time per request;
- peer: a bare relay in the same loop: httptools parses the request, the same bytes go to the
  slot side, httptools parses the answer, the same bytes go back. It checks nothing, logs
  nothing, times nothing: the floor of a Python relay with this parser.

Ours and the peer alternate (5 rounds, --quick 3) and the median of each is kept. Reported,
no goal: it says where the router's own cost stands and how it moves between commits.

``--sweep-kib N`` writes over N KiB of memory (and walks as many Python objects) between one
request and the next, its own CPU time left out: the caches the request finds are then as
cold as behind a real socket, where the slot's and the client's processes run between the
router's two halves of each request on the same two cores. Its entry is
``router_cpu_per_request_cold``.

    python bench/router_cpu.py [--quick] [--sweep-kib N]

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httptools
import uvloop
from common import EXAMPLE_DIR, emit, note, result

ANSWER_BODY = b"[0, 2, 2]"
ANSWER = (
    b"HTTP/1.1 200 OK\r\nserver: granian\r\ndate: Mon, 07 Dec 2026 18:00:00 GMT\r\n"
    b"content-type: application/json\r\nx-ms-run-function-failed: False\r\n"
    b"x-request-id: 0123456789abcdef0123456789abcdef\r\ncontent-length: 9\r\n\r\n" + ANSWER_BODY
)
KEY = "bench-key"


class Relay(asyncio.Transport):
    """A transport whose writes go to ``deliver`` on the loop's next turn, as a socket's would."""

    def __init__(self, deliver: Any):
        super().__init__()
        self.deliver = deliver
        self.loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.loop.call_soon(self.deliver, data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request_bytes() -> bytes:
    body = (EXAMPLE_DIR / "sample-request.json").read_bytes().strip()
    return (
        b"POST /score HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (KEY.encode(), len(body))
    ) + body


async def ours(requests: int, folder: Path) -> float:
    """CPU seconds per request through the router's own code."""
    from tdsp_deploy.backends.local import upstream
    from tdsp_deploy.backends.local.http1 import ClientConnection
    from tdsp_deploy.backends.local.router import Router
    from tdsp_deploy.backends.local.routes import RouterConfig, SlotRoute

    (folder / "keys.json").write_text(json.dumps({"primary_key": KEY}))
    (folder / "admin.json").write_text(json.dumps({"admin_key": "admin", "slot_key": "slots"}))
    RouterConfig(
        endpoint="bench",
        host="127.0.0.1",
        port=1,
        keys_file=str(folder / "keys.json"),
        admin_file=str(folder / "admin.json"),
        slots=(SlotRoute("blue", 9, 100, revision="r1"),),
        request_log=str(folder / "requests.jsonl"),
    ).write(folder / "router.json")
    router = Router(folder / "router.json")
    pool = router.pool(router.routes.weighted[0])
    slot = upstream.UpstreamConnection(pool)
    slot.connection_made(Relay(lambda _: slot.data_received(ANSWER)))
    slot.reusable, slot.idle_since = True, time.monotonic() + 3600  # never too old to reuse
    pool.idle.append(slot)
    return await _drive(requests, lambda deliver: _client(ClientConnection(router), deliver))


def _client(connection: asyncio.Protocol, deliver: Any) -> asyncio.Protocol:
    connection.connection_made(Relay(deliver))
    return connection


class BareRelay(asyncio.Protocol):
    """The peer: parse the request and the answer, pass the bytes on; nothing else."""

    def __init__(self, client_write: Any):
        self.client_write = client_write
        self.request = httptools.HttpRequestParser(self)
        self.answer = httptools.HttpResponseParser(_AnswerDone(self))
        self.pending: list[bytes] = []
        self.slot = Relay(self.answer_received)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.pending.append(data)
        self.request.feed_data(data)

    def on_message_complete(self) -> None:
        data, self.pending = b"".join(self.pending), []
        self.slot.write(data)

    def answer_received(self, _: bytes) -> None:
        self.answer.feed_data(ANSWER)


class _AnswerDone:
    def __init__(self, relay: BareRelay):
        self.relay = relay

    def on_message_complete(self) -> None:
        self.relay.client_write(ANSWER)


async def peer(requests: int) -> float:
    return await _drive(requests, lambda deliver: BareRelay(Relay(deliver).write))


class Sweep:
    """Evicts the caches between two requests (see --sweep-kib) and counts its own CPU time."""

    def __init__(self, kib: int):
        self.buffer = bytearray(kib * 1024)
        self.zeros = bytes(kib * 1024)
        self.objects = [object() for _ in range(kib * 16)]
        self.spent = 0.0

    def __call__(self) -> None:
        if self.buffer:
            started = time.process_time()
            self.buffer[:] = self.zeros
            for _ in self.objects:
                pass
            self.spent += time.process_time() - started


SWEEP = Sweep(0)


async def _drive(requests: int, make: Any) -> float:
    """Send ``requests`` requests one after another (each when the previous is answered)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sent = [0]
    request = request_bytes()
    SWEEP.spent = 0.0

    def answered(_: bytes) -> None:
        sent[0] += 1
        if sent[0] >= requests:
            done.set_result(None)
        else:
            SWEEP()
            loop.call_soon(server.data_received, request)

    server = make(answered)
    started = time.process_time()
    server.data_received(request)
    await done
    return (time.process_time() - started - SWEEP.spent) / requests


def rounds_and_requests() -> tuple[int, int, int]:
    """From the command line: 3 rounds of 5,000 requests with --quick, else 5 of 20,000; and
    the KiB swept between requests."""
    formatter = argparse.RawDescriptionHelpFormatter
    options = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    options.add_argument("--quick", action="store_true", help="3 rounds of 5,000 requests, not 5 of 20,000")
    options.add_argument("--sweep-kib", type=int, default=0, help="KiB of memory written between requests")
    args = options.parse_args()
    return (3, 5_000, args.sweep_kib) if args.quick else (5, 20_000, args.sweep_kib)


def main() -> None:
    global SWEEP
    rounds, requests, sweep_kib = rounds_and_requests()
    SWEEP = Sweep(sweep_kib)
    ours_s, peer_s = [], []
    with tempfile.TemporaryDirectory(prefix="tdsp-bench-cpu-") as tmp:
        for round_ in range(rounds):
            folder = Path(tmp) / f"r{round_}"
            folder.mkdir()
            ours_s.append(uvloop.run(ours(requests, folder)))
            peer_s.append(uvloop.run(peer(requests)))
            note(
                f"round {round_ + 1}: router {ours_s[-1] * 1e6:.1f} us, "
                f"bare relay {peer_s[-1] * 1e6:.1f} us CPU/request"
            )
    ours_us, peer_us = statistics.median(ours_s) * 1e6, statistics.median(peer_s) * 1e6
    emit(
        [
            result(
                "router_cpu_per_request_cold" if sweep_kib else "router_cpu_per_request",
                ours_us,
                peer_us,
                unit="us CPU/request",
                goal="(reported: the router's own path, no sockets, against a bare httptools relay)",
                met=None,
                rounds=rounds,
                requests_per_round=requests,
                sweep_kib=sweep_kib,
                ours_rounds_us=[round(s * 1e6, 2) for s in ours_s],
                peer_rounds_us=[round(s * 1e6, 2) for s in peer_s],
                peer_command="a bare relay in the same loop: httptools parses the request and the answer, "
                "the bytes go on unchanged",
            )
        ]
    )


if __name__ == "__main__":
    main()
