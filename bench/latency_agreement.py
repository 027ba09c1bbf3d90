"""Benchmark: do the smoke test's latency figures agree with an independent load generator?

With the iris example pushed (fresh TDSP_DEPLOY_HOME, deleted at the end), at concurrency 1, 4
and 16 against the same scoring URI with the same body and key:

- ours: the smoke test's latency runner (`tdsp_deploy.smoke.run_latency` with the same HTTP
  callers `push` uses), N requests with no warm-up left out (wrk leaves none out, and a
  warm-up of 20 requests took a third off our p99 at concurrency 4); its p50/p99, and its own
  CPU time (this process) per request and as a share of one core;
- peer: `wrk --latency` for about as long as our run took; its p50/p99 and its CPU time.

Rounds alternate (ours, then wrk for as long as ours took; 7 rounds of about 4 s each, --quick:
3 of about 1.5 s), and the verdict is the median over rounds of each round's ratio: on a shared
machine the load moves between runs, and a pair taken back to back shares most of it. An odd
number of rounds, so that the median is one round's ratio and one round caught in a burst of
load cannot decide the verdict (the median of two is their mean). Goals: our p50 within 15%
of wrk's (issue 7); our p99 within 15% of wrk's or hey's, whichever agrees with the router's
own record, at concurrency 1 and 4 (issue 21, which put that in place of issue 7's "p99 within
15% of wrk's": the refereed entries below); the runner well short of one core (a Python
runner's threads share one core: at 0.75 of it, it would start to be what is measured).
Our p99 against wrk alone, against hey alone, and the refereed p99 at concurrency 16 are
reported cross-checks: no issue asks for them, and on a shared machine the endpoint's own tail
moves between two runs by more than 15% (see ``drift_adjusted``).

Two cross-checks, for when the tools disagree:

- a second independent load generator, `hey` (Go; Debian package), run after wrk for as long,
  judged by the same 15% (skipped, and said so, when it is not installed);
- the endpoint's own record of every request: the router logs each one's time from its last
  byte in to the slot's answer (requests.jsonl). For each run, the tool's p99 minus the
  router's p99 over the same window is what the tool measured outside the endpoint: the
  client, the kernel and the hop to the router (reported per tool).

The verdict (``latency_agreement_refereed_p99_c*``): round by round, our p99 against the p99
of wrk or hey, whichever stands nearer the router's own p99 over its run (the issue's goal:
within 15% at concurrency 1 and 4; at 16 reported), and which of the three tools is right: the
one whose p99 is nearest the router's record (a tool cannot see less than the endpoint spent,
and only the client side beyond it).

Also reported (no goal): ``latency_agreement_drift_adjusted_p99_c*``, the refereed rounds
with the endpoint's own movement between the two runs of a round (by the router's record)
divided out, which says whether a disagreement is the tools' or the endpoint's; and the
fixed-rate mode (`rate=`, as wrk2 does) at half the closed
loop's throughput, where each latency runs from the request's scheduled start.

    python bench/latency_agreement.py [--quick]   (needs wrk, and hey for the cross-check:
                                                   apt-get install wrk hey)

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import EXAMPLE, EXAMPLE_DIR, deployed, emit, note, parse_wrk, result, wrk_script, wrk_threads

from tdsp_deploy.http_caller import http_callers
from tdsp_deploy.manifest.model import LatencyObjective
from tdsp_deploy.smoke import percentile, run_latency

CONCURRENCY = (1, 4, 16)
GOAL_AGREEMENT = 0.15
# Where issue 21 asks for the refereed p99 to agree ("the smoke test's p99 at c=1 and c=4");
# at the other concurrencies it is reported.
REFEREED_GOAL_CONCURRENCY = (1, 4)
GOAL_RUNNER_CORES = 0.75


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of about 1.5 s instead of 7 of 4 s")
    args = parser.parse_args()
    rounds, slice_s = (3, 1.5) if args.quick else (7, 4.0)
    shortest_wrk_s = 1 if args.quick else 2
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "latency_agreement: `wrk` is not installed (Debian: apt-get install wrk); nothing was measured"
        )
    body = (EXAMPLE_DIR / "sample-request.json").read_bytes()

    with tempfile.TemporaryDirectory(prefix="tdsp-bench-latency-") as tmp_name:
        tmp = Path(tmp_name)
        with deployed(EXAMPLE) as endpoint:
            url = endpoint["status"]["scoring_uri"]
            headers = {"Authorization": f"Bearer {endpoint['key']}"}
            script = wrk_script(tmp / "post.lua", body.decode(), headers)
            (tmp / "body.json").write_bytes(body)
            hey = shutil.which("hey")
            if hey is None:
                note("hey is not installed (apt-get install hey): its cross-check is left out")
            request_log = Path(endpoint["env"]["TDSP_DEPLOY_HOME"]) / "endpoints" / "iris" / "requests.jsonl"
            load_before = [round(v, 2) for v in os.getloadavg()]
            entries = []
            for concurrency in CONCURRENCY:
                pairs, windows = [], []
                size = 50 * concurrency  # the first slice; then sized to last about `slice_s`
                for round_ in range(1, rounds + 1):
                    # no warm-up left out: wrk has none, and like must be compared with like
                    began = time.time()
                    mine = runner(url, headers, body, concurrency, size, warmup=0)
                    windows.append(("ours", began, time.time(), mine))
                    seconds = max(shortest_wrk_s, round(mine["duration_s"]))
                    began = time.time()
                    run = wrk_run(wrk, url, script, concurrency, seconds)
                    windows.append(("wrk", began, time.time(), run))
                    second = None
                    if hey is not None:
                        began = time.time()
                        second = hey_run(hey, url, endpoint["key"], tmp / "body.json", concurrency, seconds)
                        windows.append(("hey", began, time.time(), second))
                    note(
                        f"round {round_} c={concurrency}: ours p50 {mine['p50_ms']:.3f} "
                        f"p99 {mine['p99_ms']:.3f} ms "
                        f"({mine['requests']} requests, {mine['cpu_cores']:.2f} of a core); wrk p50 "
                        f"{run['p50_ms']:.3f} p99 {run['p99_ms']:.3f} ms ({run['requests']} requests)"
                        + (
                            f"; hey p50 {second['p50_ms']:.3f} p99 {second['p99_ms']:.3f} ms"
                            if second
                            else ""
                        )
                    )
                    pairs.append((mine, run, second))
                    size = min(20_000, max(100, int(mine["requests_per_second"] * slice_s)))
                entries += judge(concurrency, [(mine, run) for mine, run, _ in pairs])
                if hey is not None:
                    entries += judge_hey(concurrency, [(mine, second) for mine, _, second in pairs])
                entries.append(outside_the_endpoint(concurrency, windows, request_log))
                entries.append(refereed(concurrency, windows, request_log))
                entries.append(drift_adjusted(entries[-1]))
            # The fixed-rate mode, at half of what the closed loop sustained at concurrency 4.
            requests = 300 if args.quick else 3000
            closed = runner(url, headers, body, 4, requests)
            rate = max(10.0, closed["requests_per_second"] / 2)
            fixed = runner(url, headers, body, 4, requests, rate=rate)
            note(
                f"fixed rate {rate:.0f}/s, c=4: p50 {fixed['p50_ms']:.3f} p99 {fixed['p99_ms']:.3f} ms "
                f"(closed loop: p50 {closed['p50_ms']:.3f} p99 {closed['p99_ms']:.3f} ms)"
            )
            entries.append(
                result(
                    "latency_fixed_rate_p99_c4",
                    fixed["p99_ms"],
                    closed["p99_ms"],
                    unit="ms",
                    goal="(reported: fixed-rate mode at half the closed loop's rate vs the closed loop)",
                    met=None,
                    rate_per_s=round(rate, 1),
                    fixed=fixed,
                    closed=closed,
                )
            )
            load_after = [round(v, 2) for v in os.getloadavg()]
    for entry in entries:
        entry["load_average_before"], entry["load_average_after"] = load_before, load_after
    emit(entries)


def wrk_run(wrk: str, url: str, script: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            wrk,
            f"-t{wrk_threads(concurrency)}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    run = parse_wrk(done.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run["cpu_us_per_request"] = round(cpu / max(run["requests"], 1) * 1e6, 1)
    run["cpu_cores"] = round(cpu / seconds, 3)
    return run


def hey_run(hey: str, url: str, key: str, body: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    """`hey` (Go's HTTP client, keep-alive), closed loop at ``concurrency`` for ``seconds``.

    Its per-request CSV is read rather than its summary: the summary's 99% line is empty when
    a run has fewer than 100 requests (a loaded machine), and the CSV gives every latency."""
    done = subprocess.run(
        [
            *(hey, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json"),
            *("-H", f"Authorization: Bearer {key}", "-D", str(body), "-o", "csv", url),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    rows = [line.split(",") for line in done.stdout.splitlines()[1:] if line.count(",") >= 7]
    if done.returncode != 0 or not rows:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr or done.stdout[-2000:]}")
    latencies = sorted(float(row[0]) * 1000 for row in rows)  # seconds, to 0.1 ms
    return {
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "requests": len(rows),
        "errors": sum(row[6] != "200" for row in rows),
    }


def outside_the_endpoint(
    concurrency: int, windows: list[tuple[str, float, float, dict[str, Any]]], request_log: Path
) -> dict[str, Any]:
    """Each tool's p99 minus the router's own p99 over the same run: the time a tool counted
    that the endpoint (router to slot and back) did not spend."""
    time.sleep(1.5)  # the router writes its log at least once a second
    lines = [json.loads(line) for line in request_log.read_text().splitlines()]
    excess: dict[str, list[float]] = {}
    by_tool: dict[str, list[float]] = {}
    for tool_name, began, ended, run in windows:
        p99 = router_p99(lines, began, ended)
        if p99 is None:
            continue
        by_tool.setdefault(tool_name, []).append(p99)
        excess.setdefault(tool_name, []).append(run["p99_ms"] - p99)
    median = {name: round(statistics.median(values), 3) for name, values in excess.items()}
    return result(
        f"latency_p99_outside_the_endpoint_c{concurrency}",
        median["ours"],
        median["wrk"],
        unit="ms",
        goal="(reported: tool's p99 minus the router's own p99 over the same run; ours vs wrk)",
        met=None,
        concurrency=concurrency,
        median_by_tool=median,
        router_p99_ms_by_tool={name: [round(v, 3) for v in values] for name, values in by_tool.items()},
        excess_ms_by_tool={name: [round(v, 3) for v in values] for name, values in excess.items()},
    )


def router_p99(lines: list[dict[str, Any]], began: float, ended: float) -> float | None:
    """The router's own p99 over the live requests it answered between ``began`` and ``ended``."""
    inside = sorted(
        line["latency_ms"] for line in lines if line["kind"] == "live" and began <= line["t"] <= ended
    )
    return inside[min(len(inside) - 1, int(0.99 * len(inside)))] if inside else None


def refereed(
    concurrency: int, windows: list[tuple[str, float, float, dict[str, Any]]], request_log: Path
) -> dict[str, Any]:
    """Our p99 against wrk's or hey's, whichever agrees with the router's own record, round by
    round; and which of the three tools is right when they disagree.

    Every request a tool times passes through the router, which times it too (from its last
    byte in to the slot's answer), so a tool's p99 can be above the router's p99 over the same
    run only by what lies outside the endpoint: the client, the kernel and the hop to the
    router, a fraction of a millisecond on loopback. The tool whose p99 is nearest the router's
    (smallest ``|tool p99 - router p99|`` over its own run, median over rounds) measures the
    endpoint; a tool far above it counts time of its own."""
    time.sleep(1.5)  # the router writes its log at least once a second
    lines = [json.loads(line) for line in request_log.read_text().splitlines()]
    rounds: list[dict[str, dict[str, float]]] = []
    failed: list[dict[str, int]] = []  # per round, each tool's failed requests
    for tool_name, began, ended, run in windows:
        if tool_name == "ours":
            rounds.append({})
            failed.append({})
        inside = router_p99(lines, began, ended)
        if inside is not None and rounds:
            rounds[-1][tool_name] = {"p99_ms": run["p99_ms"], "router_p99_ms": inside}
        if rounds:
            errors = run["errors"]
            failed[len(rounds) - 1][tool_name] = sum(errors.values()) if isinstance(errors, dict) else errors
    tools = sorted({name for found in rounds for name in found})
    excess = {
        name: statistics.median(
            found[name]["p99_ms"] - found[name]["router_p99_ms"] for found in rounds if name in found
        )
        for name in tools
    }
    right = min(excess, key=lambda name: abs(excess[name]))
    ratios, referees, ours, theirs, drifts = [], [], [], [], []
    clean = True
    for found, errors in zip(rounds, failed):
        peers = [name for name in ("wrk", "hey") if name in found]
        if "ours" not in found or not peers:
            continue
        # the peer of this round whose p99 stands nearest the router's own record of its run
        peer = min(peers, key=lambda name: abs(found[name]["p99_ms"] - found[name]["router_p99_ms"]))
        # a round whose compared runs had failed requests: their p99s are not the endpoint's
        clean = clean and errors.get("ours", 0) == 0 and errors.get(peer, 0) == 0
        referees.append(peer)
        ours.append(found["ours"]["p99_ms"])
        theirs.append(found[peer]["p99_ms"])
        ratios.append(found["ours"]["p99_ms"] / found[peer]["p99_ms"])
        # How much the endpoint itself moved between the two runs of the round, by its own
        # record: a round ratio far from 1 with a drift as far is the endpoint, not a tool.
        drifts.append(found["ours"]["router_p99_ms"] / found[peer]["router_p99_ms"])
    ratio = statistics.median(ratios)
    within = [abs(r - 1) <= GOAL_AGREEMENT for r in ratios]
    verdict = (
        f"{right} is nearest the router's own record (its p99 minus the router's: "
        + ", ".join(f"{name} {excess[name]:+.2f} ms" for name in tools)
        + ")"
    )
    goal = (
        f"our p99 within {GOAL_AGREEMENT:.0%} of wrk's or hey's, whichever agrees with the "
        "router's own record (round by round)"
    )
    judged = concurrency in REFEREED_GOAL_CONCURRENCY
    return result(
        f"latency_agreement_refereed_p99_c{concurrency}",
        statistics.median(ours),
        statistics.median(theirs),
        ratio=ratio,
        unit="ms",
        goal=goal if judged else f"(reported: {goal}; issue 21 asks it at concurrency 1 and 4)",
        met=(abs(ratio - 1) <= GOAL_AGREEMENT and clean) if judged else None,
        errors_ok=clean,
        concurrency=concurrency,
        round_ratios=[round(r, 3) for r in ratios],
        rounds_within=f"{sum(within)} of {len(within)}",
        referee_by_round=referees,
        # the router's p99 over our run / over the refereed peer's run, per round; and the
        # rounds' ratios with that drift taken out (ours/peer / router's ours/peer): what is
        # left is the tools' own difference
        endpoint_drift_by_round=[round(d, 3) for d in drifts],
        drift_adjusted_round_ratios=[round(r / d, 3) for r, d in zip(ratios, drifts)],
        right=right,
        verdict=verdict,
        p99_minus_router_p99_ms={name: round(value, 3) for name, value in excess.items()},
        rounds=[
            {name: {k: round(v, 3) for k, v in figures.items()} for name, figures in found.items()}
            for found in rounds
        ],
    )


def drift_adjusted(verdict: dict[str, Any]) -> dict[str, Any]:
    """The refereed rounds again, with what the endpoint itself did between the two runs of a
    round taken out: each round's ratio divided by the router's own p99 over our run against
    its p99 over the peer's. The runs of a round follow each other, and on a shared machine
    the endpoint's tail moves between them by as much as the tools could differ; the router
    saw every request of both, so what is left after dividing its movement out is the tools'
    own difference."""
    adjusted = verdict["drift_adjusted_round_ratios"]
    ratio = statistics.median(adjusted)
    within = [abs(r - 1) <= GOAL_AGREEMENT for r in adjusted]
    return result(
        verdict["name"].replace("refereed", "drift_adjusted"),
        verdict["ours"],
        verdict["peer"],
        ratio=ratio,
        unit="ms",
        goal="(reported: the refereed rounds' ratios divided by the router's own p99 ratio "
        "between the same two runs)",
        met=None,
        concurrency=verdict["concurrency"],
        round_ratios=adjusted,
        rounds_within=f"{sum(within)} of {len(within)}",
        raw_round_ratios=verdict["round_ratios"],
        endpoint_drift_by_round=verdict["endpoint_drift_by_round"],
    )


def judge_hey(concurrency: int, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Ours against hey, round by round, by the same rule as against wrk."""
    clean = all(mine["errors"] == 0 and second["errors"] == 0 for mine, second in pairs)
    return agreement(
        "latency_agreement_hey",
        "hey (a second independent generator)",
        pairs,
        clean,
        judged=(),  # a cross-check: the goal is on the refereed entries
        concurrency=concurrency,
        peer_command=f"hey -c {concurrency} -z Ns -m POST, the sample with the key",
    )


def agreement(
    prefix: str,
    peer: str,
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
    clean: bool,
    *,
    judged: tuple[str, ...],
    **extra: Any,
) -> list[dict[str, Any]]:
    """p50 and p99 entries: medians over rounds, judged by the median of the rounds' ratios;
    those of ``judged`` carry the goal, the others report the same figures as cross-checks."""
    out = []
    for key in ("p50_ms", "p99_ms"):
        ratios = [mine[key] / theirs[key] for mine, theirs in pairs]
        ratio = statistics.median(ratios)
        goal = f"within {GOAL_AGREEMENT:.0%} of {peer}"
        out.append(
            result(
                f"{prefix}_{key.removesuffix('_ms')}_c{extra['concurrency']}",
                statistics.median(mine[key] for mine, _ in pairs),
                statistics.median(theirs[key] for _, theirs in pairs),
                ratio=ratio,
                unit="ms",
                goal=goal if key in judged else f"(reported cross-check: {goal}; the p99 goal is "
                "latency_agreement_refereed_p99_c1 and _c4)",
                met=(abs(ratio - 1) <= GOAL_AGREEMENT and clean) if key in judged else None,
                round_ratios=[round(r, 3) for r in ratios],
                **extra,
            )
        )
    return out


def runner(
    url: str,
    headers: dict[str, str],
    body: bytes,
    concurrency: int,
    requests: int,
    *,
    rate: float | None = None,
    warmup: int | None = None,
) -> dict[str, Any]:
    warmup = max(20, concurrency * 5) if warmup is None else warmup
    objective = LatencyObjective(requests=requests, concurrency=concurrency, warmup=warmup)
    with http_callers(url, headers, timeout=30) as callers:
        report = run_latency(callers, body, objective, rate=rate).to_json()
    report["cpu_us_per_request"] = round(report["client_cpu_s"] / report["requests"] * 1e6, 1)
    report["cpu_cores"] = round(report["client_cpu_s"] / report["duration_s"], 3)
    return report


def judge(concurrency: int, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each round pairs our run with wrk's right after it; the verdict is the median of the
    rounds' ratios, so a burst of load on the shared machine moves one pair, not the result."""
    clean = all(mine["errors"] == 0 and sum(run["errors"].values()) == 0 for mine, run in pairs)
    common = {
        "concurrency": concurrency,
        "rounds": len(pairs),
        "ours_requests": [mine["requests"] for mine, _ in pairs],
        "peer_requests": [run["requests"] for _, run in pairs],
        "errors_ok": clean,
        "peer_command": f"wrk -t{wrk_threads(concurrency)} -c{concurrency} --latency, "
        "POST the sample with the key",
        "notes": "rounds alternate ours then wrk for as long as ours took; figures are medians over "
        "rounds, the ratio is the median of the rounds' ratios",
    }
    # the p50 against wrk is issue 7's goal, which issue 21 left as it was; the p99 against wrk
    # alone is what issue 21 replaced with the refereed p99
    out = agreement("latency_agreement", "wrk", pairs, clean, judged=("p50_ms",), **common)
    cores = statistics.median(mine["cpu_cores"] for mine, _ in pairs)
    out.append(
        result(
            f"latency_runner_cpu_c{concurrency}",
            cores,
            statistics.median(run["cpu_cores"] for _, run in pairs),
            unit="cores",
            goal=f"runner < {GOAL_RUNNER_CORES:g} of one core (not the bottleneck)",
            met=cores < GOAL_RUNNER_CORES,
            ours_cpu_us_per_request=statistics.median(mine["cpu_us_per_request"] for mine, _ in pairs),
            peer_cpu_us_per_request=statistics.median(run["cpu_us_per_request"] for _, run in pairs),
            ours_requests_per_second=statistics.median(mine["requests_per_second"] for mine, _ in pairs),
            peer_requests_per_second=statistics.median(run["requests_per_s"] for _, run in pairs),
            **common,
        )
    )
    return out


if __name__ == "__main__":
    main()
