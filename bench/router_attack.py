"""Benchmark: what a client without the key costs the local endpoint's router.

The iris example is pushed; then, against its router process:

- each keyless attack once, alone: a 64 MB header, a 99 MB body (announced and sent), and a
  head that streams header lines without end (reconnecting when refused, for a few seconds).
  Measured: the router's CPU time (user + system, from /proc through psutil) from the
  attack's first byte to the router's refusal, and its peak RSS against its RSS when idle;
- a keyed client's latency (sequential requests on one kept-alive connection, the example's
  sample request), for the same number of seconds, with no attack (the peer) and with each
  attack repeated for that whole time (ours), in three rounds alternating the two, pooled per
  side: p50 and p99, and their ratios. Reported beside them (no goal): the CPU time each process
  involved spent per second in each side's rounds (the router, the slot, the keyed client and
  the attacker, all on the same cores), to tell the router's share of an attack from the
  attacker's own.

Goals (issue 15): a keyless 64 MB header or 99 MB body refused within 50 ms of router CPU, the
router's peak RSS within 2x its idle RSS, and the keyed client's p99 within 2x its p99 without
the attack. Run: ``python bench/router_attack.py [--quick] [--seconds S]``; one JSON document
on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from common import EXAMPLE, EXAMPLE_DIR, deployed, emit, note, result

GOAL_CPU_MS = 50.0
GOAL_RSS_RATIO = 2.0
GOAL_P99_RATIO = 2.0
MB = 1_000_000
PIECE = 64 * 1024
ROUNDS = 3  # alternating no-attack / attack rounds per attack (paired())


def _send_until_refused(host: str, port: int, head: bytes, total: int, filler: bytes) -> dict[str, Any]:
    """Send ``head`` and then ``total`` bytes of ``filler`` pieces until the router stops
    taking them; what it answered and how much it took."""
    sent = 0
    answer = b""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        piece = filler * (PIECE // len(filler))
        try:
            while sent < total:
                sock.sendall(piece[: min(len(piece), total - sent)])
                sent += min(len(piece), total - sent)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError, OSError):
            pass
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "none (reset)"
    return {"sent_bytes": sent, "status": status}


def attack_header(host: str, port: int) -> dict[str, Any]:
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Big: "
    return _send_until_refused(host, port, head, 64 * MB, b"a")


def attack_body(host: str, port: int) -> dict[str, Any]:
    head = (
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (99 * MB)
    )
    return _send_until_refused(host, port, head, 99 * MB, b"0")


def attack_streaming_headers(host: str, port: int, seconds: float = 3.0) -> dict[str, Any]:
    """Header lines as fast as the router takes them, a new connection each time it refuses."""
    head = b"POST /score HTTP/1.1\r\nHost: x\r\n"
    deadline = time.monotonic() + seconds
    connections = sent = 0
    while time.monotonic() < deadline:
        outcome = _send_until_refused(host, port, head, 8 * MB, b"X-Stream: header-line-of-no-end\r\n")
        connections += 1
        sent += outcome["sent_bytes"]
    return {"sent_bytes": sent, "connections": connections, "status": outcome["status"]}


class RssWatch:
    """Samples a process's RSS every 20 ms; the peak."""

    def __init__(self, process: psutil.Process):
        self.process = process
        self.peak = process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def cpu_ms(process: psutil.Process) -> float:
    """The process's time on a CPU so far, in ms, to the nanosecond (the scheduler's own count,
    /proc/PID/task/*/schedstat, summed over its threads); psutil's cpu_times counts in 10 ms
    clock ticks, too coarse for one refusal."""
    return cpu_ms_of([process.pid])


def cpu_ms_of(pids: list[int]) -> float:
    """cpu_ms summed over processes; one that is gone counts nothing."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    total += int((task / "schedstat").read_text().split()[0])
    return total / 1e6


class CpuShares:
    """CPU time per second of wall time that each process spent in the no-attack and the attacked
    rounds: the router, the slot (its processes), the keyed client (this thread) and the
    attacker. Reported only: on two shared cores the attacker's own CPU competes with the keyed
    client's path as much as the router's work on the attack does."""

    def __init__(self, router: int, slot: list[int]):
        self.pids = {"router": [router], "slot": slot}
        self.spent: dict[str, dict[str, float]] = {}
        self.seconds: dict[str, float] = {}

    def snapshot(self, attacker: int | None) -> dict[str, float]:
        now = {name: cpu_ms_of(pids) for name, pids in self.pids.items()}
        now["keyed_client"] = time.thread_time() * 1000
        now["attacker"] = cpu_ms_of([attacker]) if attacker else 0.0
        now["wall"] = time.perf_counter()
        return now

    def add(self, side: str, before: dict[str, float], after: dict[str, float]) -> None:
        spent = self.spent.setdefault(side, {})
        for name, value in after.items():
            if name != "wall":
                spent[name] = spent.get(name, 0.0) + value - before[name]
        self.seconds[side] = self.seconds.get(side, 0.0) + after["wall"] - before["wall"]

    def per_second(self) -> dict[str, dict[str, float]]:
        return {
            side: {name: round(ms / self.seconds[side], 1) for name, ms in spent.items()}
            for side, spent in self.spent.items()
        }


def keyed_latencies(uri: str, key: str, body: bytes, seconds: float) -> list[float]:
    parts = urllib.parse.urlsplit(uri)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        connection.request("POST", parts.path, body, headers)
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise RuntimeError(f"the keyed client got {response.status}")
    connection.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _attack_loop(attack: Callable[[], Any], stop: Any) -> None:
    while not stop.is_set():
        attack()


def during(
    attack: Callable[[], Any],
    seconds: float,
    keyed: Callable[[float], list[float]],
    shares: CpuShares | None = None,
) -> list[float]:
    """The keyed client's latencies while ``attack`` runs again and again, from a process of its
    own (a thread here would take the keyed client's interpreter lock, not the router's time)."""
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    attacker = context.Process(target=_attack_loop, args=(attack, stop), daemon=True)
    attacker.start()
    time.sleep(0.2)  # the attack under way first
    try:
        before = shares.snapshot(attacker.pid) if shares else {}
        latencies = keyed(seconds)
        if shares:
            shares.add("attack", before, shares.snapshot(attacker.pid))
        return latencies
    finally:
        stop.set()
        attacker.join(timeout=60)
        if attacker.is_alive():
            attacker.kill()


def paired(
    attack: Callable[[], Any],
    seconds: float,
    keyed: Callable[[float], list[float]],
    shares: CpuShares | None = None,
) -> tuple[list[float], list[float]]:
    """The keyed client's latencies without and with the attack, in ROUNDS alternating rounds
    of ``seconds / ROUNDS`` each, pooled per side: the machine's load moves over a run, and a
    single quiet-or-busy window for one side would decide the ratio."""
    baseline: list[float] = []
    attacked: list[float] = []
    for _ in range(ROUNDS):
        before = shares.snapshot(None) if shares else {}
        baseline += keyed(seconds / ROUNDS)
        if shares:
            shares.add("no_attack", before, shares.snapshot(None))
        attacked += during(attack, seconds / ROUNDS, keyed, shares)
    return baseline, attacked


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of keyed requests per phase")
    parser.add_argument("--quick", action="store_true", help="2 s of keyed requests per phase")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 2.0
    body = (EXAMPLE_DIR / "sample-request.json").read_bytes()
    entries = []
    with deployed(EXAMPLE) as endpoint:
        status = endpoint["status"]
        uri, key = status["scoring_uri"], endpoint["key"]
        parts = urllib.parse.urlsplit(uri)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        router = psutil.Process(status["details"]["router"]["pid"])
        slot_pids = []
        for slot in status.get("slots") or ():
            with contextlib.suppress(psutil.Error, KeyError, TypeError):
                process = psutil.Process(slot["details"]["pid"])
                slot_pids += [process.pid, *(child.pid for child in process.children(recursive=True))]

        def keyed(seconds: float) -> list[float]:
            return keyed_latencies(uri, key, body, seconds)

        keyed(1.0)  # warm-up: connections made, code paths run
        time.sleep(0.5)
        idle_rss = router.memory_info().rss
        attacks: dict[str, Callable[[], dict[str, Any]]] = {
            "header_64mb": lambda: attack_header(host, port),
            "body_99mb": lambda: attack_body(host, port),
            "streaming_headers": lambda: attack_streaming_headers(host, port),
        }
        for name, attack in attacks.items():
            watch = RssWatch(router)
            before = cpu_ms(router)
            outcome = attack()
            time.sleep(0.2)  # the router's last bytes of work on it (closing) counted too
            spent = cpu_ms(router) - before
            peak = watch.stop()
            note(f"{name}: {outcome}, router CPU {spent:.1f} ms, peak RSS {peak / MB:.1f} MB")
            cpu_goal = name != "streaming_headers"
            entries.append(
                result(
                    f"router_cpu_per_keyless_{name}",
                    spent,
                    None,
                    unit="ms",
                    goal=f"<= {GOAL_CPU_MS:g} ms of router CPU" if cpu_goal else "(recorded)",
                    met=spent <= GOAL_CPU_MS if cpu_goal else None,
                    attack=outcome,
                    router_cpu_ms_per_attacker_mb=round(spent / max(outcome["sent_bytes"] / MB, 1e-9), 3),
                )
            )
            entries.append(
                result(
                    f"router_peak_rss_{name}",
                    peak / MB,
                    idle_rss / MB,
                    unit="MB",
                    goal=f"peak/idle <= {GOAL_RSS_RATIO:g}",
                    met=peak / idle_rss <= GOAL_RSS_RATIO,
                    peer_command="the router's RSS when idle, before the attacks",
                )
            )
        for name, attack in attacks.items():
            watch = RssWatch(router)
            shares = CpuShares(router.pid, slot_pids)
            baseline, attacked = paired(attack, args.seconds, keyed, shares)
            peak = watch.stop()
            cpu = shares.per_second()
            note(f"CPU ms per s during {name} (and without it): {cpu}")
            quiet_p99 = percentile(baseline, 0.99)
            note(f"keyed, no attack (beside {name}): {len(baseline)} requests, p99 {quiet_p99:.2f} ms")
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                ours, peer = percentile(attacked, q), percentile(baseline, q)
                goal_met = ours / peer <= GOAL_P99_RATIO if label == "p99" else None
                entries.append(
                    result(
                        f"keyed_{label}_during_{name}",
                        ours,
                        peer,
                        unit="ms",
                        goal=f"ours/peer <= {GOAL_P99_RATIO:g}" if label == "p99" else "(recorded)",
                        met=goal_met,
                        requests=len(attacked),
                        peer_requests=len(baseline),
                        rounds=ROUNDS,
                        peak_rss_mb=round(peak / MB, 1),
                        cpu_ms_per_s=cpu,
                        peer_command="the same keyed client, same seconds, no attack, in rounds "
                        "alternating with the attacked ones",
                    )
                )
            p50, p99 = percentile(attacked, 0.5), percentile(attacked, 0.99)
            note(f"keyed during {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    emit(entries)


if __name__ == "__main__":
    main()
