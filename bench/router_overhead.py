"""Benchmark: what the local target's router adds to a request, against the slot's own server.

With the iris example pushed (fresh TDSP_DEPLOY_HOME, deleted at the end), `wrk` POSTs the
sample request to:

- ours: the scoring URI, through the router, with ``Authorization: Bearer <primary key>``;
- peer: the slot's inference server directly, ``http://127.0.0.1:<slot port>/score``.

At concurrency 1, 4 and 16 (wrk threads: 1 for c=1, else 2), 10 s each (--quick: 3 s),
direct and router alternating so they share the machine's noise, 2 rounds; the run with
more requests/s of each pair is kept. Goals per concurrency: router p50 - direct p50 <= 1 ms,
router/direct requests/s >= 0.90, and no non-2xx answer or socket error on either side.
The inference server answers ``Connection: close``, so wrk reconnects for every direct
request, while it keeps its connections to the router open.

    python bench/router_overhead.py [--quick]      (needs wrk: apt-get install wrk)

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import EXAMPLE, EXAMPLE_DIR, deployed, emit, note, result

CONCURRENCY = (1, 4, 16)
ROUNDS = 2
GOAL_ADDED_P50_MS = 1.0
GOAL_THROUGHPUT = 0.90
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s per run instead of 10")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    args = parser.parse_args()
    duration = 3 if args.quick else args.duration
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "router_overhead: `wrk` is not installed (Debian: apt-get install wrk); nothing was measured"
        )
    body = (EXAMPLE_DIR / "sample-request.json").read_text()

    with deployed(EXAMPLE) as endpoint, tempfile.TemporaryDirectory(prefix="tdsp-bench-wrk-") as tmp:
        status = endpoint["status"]
        slot = status["slots"][0]
        targets = {
            "direct": (
                f"http://127.0.0.1:{slot['details']['port']}/score",
                _lua(Path(tmp) / "direct.lua", body, {}),
            ),
            "router": (
                status["scoring_uri"],
                _lua(Path(tmp) / "router.lua", body, {"Authorization": f"Bearer {endpoint['key']}"}),
            ),
        }
        note(f"router {targets['router'][0]}, slot {slot['name']} {targets['direct'][0]}; {duration} s/run")
        for url, script in targets.values():  # warm-up, not kept
            _wrk(wrk, url, script, concurrency=4, duration=1)
        best: dict[tuple[str, int], dict[str, Any]] = {}
        for round_ in range(1, ROUNDS + 1):
            for concurrency in CONCURRENCY:
                for side, (url, script) in targets.items():
                    run = _wrk(wrk, url, script, concurrency=concurrency, duration=duration)
                    note(
                        f"round {round_} c={concurrency} {side}: {run['requests_per_s']:.0f} req/s, "
                        f"p50 {run['p50_ms']:.3f} ms, p99 {run['p99_ms']:.3f} ms, errors {run['errors']}"
                    )
                    kept = best.get((side, concurrency))
                    if kept is None or run["requests_per_s"] > kept["requests_per_s"]:
                        best[side, concurrency] = run

    entries = []
    for c in CONCURRENCY:
        router, direct = best["router", c], best["direct", c]
        clean = sum(router["errors"].values()) + sum(direct["errors"].values()) == 0
        added = router["p50_ms"] - direct["p50_ms"]
        throughput = router["requests_per_s"] / direct["requests_per_s"]
        detail = {
            "concurrency": c,
            "threads": _threads(c),
            "router": router,
            "direct": direct,
            "errors_ok": clean,
            "peer_command": "wrk POST to the slot's inference server directly (no router, no key)",
            "notes": f"wrk --latency, {duration} s per run, direct/router alternating, "
            f"better of {ROUNDS} rounds (by requests/s); met also requires 0 non-2xx and 0 socket errors "
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


def _threads(concurrency: int) -> int:
    return 1 if concurrency == 1 else 2


def _lua(path: Path, body: str, headers: dict[str, str]) -> Path:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [==[{body.strip()}]==]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _wrk(wrk: str, url: str, script: Path, *, concurrency: int, duration: int) -> dict[str, Any]:
    command = [
        wrk,
        f"-t{_threads(concurrency)}",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, p50/p90/p99 latency in ms and error counts from `wrk --latency` output."""
    latency = {
        f"p{pct}_ms": round(float(value) * UNITS_MS[unit], 4)
        for pct, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    if len(latency) != 3:
        raise ValueError(f"no latency distribution in wrk's output:\n{text}")
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = {"non_2xx": int(non_2xx.group(1)) if non_2xx else 0}
    counts = map(int, socket.groups()) if socket else (0, 0, 0, 0)
    errors.update(zip(("connect", "read", "write", "timeout"), counts, strict=True))
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),  # type: ignore[union-attr]
        **latency,
        "errors": errors,
    }


if __name__ == "__main__":
    main()
