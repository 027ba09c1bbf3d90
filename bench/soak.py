"""Benchmark: the local endpoint under constant load for a minute, at the highest load it
sustains within the manifest's latency objective, with no error and flat memory.

With the iris example pushed (fresh TDSP_DEPLOY_HOME, deleted at the end):

1. Find the load: `wrk` POSTs the sample request through the router (with the key) at rising
   concurrency (1, 2, 4, 8, 16, 32), 3 s each (--quick: 1 s). The kept concurrency is the one
   with the most requests/s whose p99 stays under the manifest's objective
   (smoke_test.latency.p95_ms; p99 is the stricter reading) with no error. wrk is closed-loop:
   a fixed number of connections, each sending its next request when the last is answered.
2. Soak: 60 s (--quick: 10 s) through the router at that concurrency. RSS of the router, the
   supervisor and each slot (with its workers) is read at the start, every 5 s, and at the end.
3. Peer, in the same run: the same load straight to the slot's inference server, for as long.

Goals: no error (non-2xx or socket error) on our side, p99 under the objective, RSS at the
end within 10% (+2 MB) of the start for every process, and throughput through the router at
least 0.85 of the bare server's.

    python bench/soak.py [--quick] [--duration S]      (needs wrk: apt-get install wrk)

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import psutil
import yaml
from common import EXAMPLE, EXAMPLE_DIR, deployed, emit, note, result, run_wrk, slot_pass, wrk_script

CONCURRENCY = (1, 2, 4, 8, 16, 32)
SAMPLE_EVERY_S = 5.0
GOAL_THROUGHPUT = 0.85
GOAL_RSS_GROWTH = 1.10
RSS_SLACK_MB = 2.0  # allocator noise on a process of a few tens of MB


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process and its children (a slot's server and its workers)."""
    try:
        process = psutil.Process(pid)
        members = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in members) / (1 << 20)
    except psutil.Error:
        return None


class MemoryWatch:
    """RSS of the named processes: at the start, every few seconds, and at the end."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.samples: dict[str, list[float]] = {name: [] for name in pids}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            value = rss_mb(pid)
            if value is not None:
                self.samples[name].append(value)

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def __enter__(self) -> MemoryWatch:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 s soak, 1 s probes")
    parser.add_argument("--duration", type=int, default=60, help="seconds of soak (each side)")
    args = parser.parse_args()
    duration = 10 if args.quick else args.duration
    probe = 1 if args.quick else 3
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("soak: `wrk` is not installed (Debian: apt-get install wrk); nothing was measured")
    manifest = yaml.safe_load(EXAMPLE.read_text())
    objective_ms = float(manifest["smoke_test"]["latency"]["p95_ms"])
    body = (EXAMPLE_DIR / "sample-request.json").read_text()

    with deployed(EXAMPLE) as endpoint, tempfile.TemporaryDirectory(prefix="tdsp-bench-soak-") as tmp:
        status = endpoint["status"]
        slot = status["slots"][0]
        router_url = status["scoring_uri"]
        direct_url = f"http://127.0.0.1:{slot['details']['port']}/score"
        auth = {"Authorization": f"Bearer {endpoint['key']}"}
        router_script = wrk_script(Path(tmp) / "router.lua", body, auth)
        direct_script = wrk_script(Path(tmp) / "direct.lua", body, slot_pass(endpoint, slot))
        run_wrk(wrk, router_url, router_script, concurrency=4, duration=1)  # warm-up, not kept

        probes = []
        for concurrency in CONCURRENCY:
            run = run_wrk(wrk, router_url, router_script, concurrency=concurrency, duration=probe)
            errors = sum(run["errors"].values())
            note(
                f"probe c={concurrency}: {run['requests_per_s']:.0f} req/s, p99 {run['p99_ms']:.2f} ms, "
                f"errors {errors}"
            )
            probes.append({"concurrency": concurrency, **run})
            if run["p99_ms"] > objective_ms:
                break  # past the knee: more connections only queue
        within = [p for p in probes if p["p99_ms"] <= objective_ms and not sum(p["errors"].values())]
        chosen = max(within or probes[:1], key=lambda p: p["requests_per_s"])["concurrency"]
        note(f"soaking {duration} s at c={chosen} (objective: p99 <= {objective_ms:g} ms)")

        pids = {"router": status["details"]["router"]["pid"], f"slot {slot['name']}": slot["details"]["pid"]}
        supervisor = status["details"].get("supervisor", {}).get("pid")
        if supervisor:
            pids["supervisor"] = supervisor
        with MemoryWatch(pids) as memory:
            ours = run_wrk(wrk, router_url, router_script, concurrency=chosen, duration=duration)
        note(f"router: {ours['requests_per_s']:.0f} req/s, p99 {ours['p99_ms']:.2f} ms, {ours['errors']}")
        slot_pid = {f"slot {slot['name']}": slot["details"]["pid"]}
        with MemoryWatch(slot_pid) as peer_memory:
            peer = run_wrk(wrk, direct_url, direct_script, concurrency=chosen, duration=duration)
        note(f"direct: {peer['requests_per_s']:.0f} req/s, p99 {peer['p99_ms']:.2f} ms, {peer['errors']}")

    emit(
        report(
            ours,
            peer,
            memory,
            peer_memory,
            chosen=chosen,
            duration=duration,
            objective_ms=objective_ms,
            probes=probes,
        )
    )


def report(
    ours: dict[str, Any],
    peer: dict[str, Any],
    memory: MemoryWatch,
    peer_memory: MemoryWatch,
    *,
    chosen: int,
    duration: int,
    objective_ms: float,
    probes: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    where = f"c={chosen}, {duration} s"
    ratio = ours["requests_per_s"] / peer["requests_per_s"]
    our_errors, peer_errors = sum(ours["errors"].values()), sum(peer["errors"].values())
    entries = [
        result(
            f"soak: req/s through the router vs the bare inference server ({where})",
            ours["requests_per_s"],
            peer["requests_per_s"],
            unit="req/s",
            goal=f">= {GOAL_THROUGHPUT} (ratio)",
            # a peer that answered errors measured nothing: its rate cannot be the baseline
            met=ratio >= GOAL_THROUGHPUT and not peer_errors,
            requests=ours["requests"],
            probes=[{k: p[k] for k in ("concurrency", "requests_per_s", "p99_ms")} for p in probes],
        ),
        result(
            f"soak: p99 latency through the router vs the bare server ({where})",
            ours["p99_ms"],
            peer["p99_ms"],
            unit="ms",
            goal=f"<= {objective_ms:g} ms (the manifest's latency objective)",
            met=ours["p99_ms"] <= objective_ms,
            p50_ms=ours["p50_ms"],
            peer_p50_ms=peer["p50_ms"],
        ),
        result(
            f"soak: errors (non-2xx and socket) through the router vs the bare server ({where})",
            our_errors,
            peer_errors,
            unit="requests",
            goal="0",
            met=our_errors == 0,
            ratio=None,
            detail=ours["errors"],
            peer_detail=peer["errors"],
        ),
    ]
    for name, samples in memory.samples.items():
        start, end = samples[0], samples[-1]
        flat = end <= start * GOAL_RSS_GROWTH + RSS_SLACK_MB
        peer_samples = peer_memory.samples.get(name)
        entries.append(
            result(
                f"soak: {name} RSS at the end vs the start ({where})",
                end,
                start,
                unit="MB",
                goal=f"<= {GOAL_RSS_GROWTH} x start + {RSS_SLACK_MB:g} MB (flat)",
                met=flat,
                max_mb=round(max(samples), 2),
                samples_mb=[round(s, 2) for s in samples],
                **(
                    {"bare_server_start_end_mb": [round(peer_samples[0], 2), round(peer_samples[-1], 2)]}
                    if peer_samples
                    else {}
                ),
            )
        )
    return entries


if __name__ == "__main__":
    main()
