"""Benchmark: the rollout guardrails' statistics, by simulation (no deployment involved).

A canary takes 5% of 100 requests a second; the guardrails are checked every 10 s for an hour
(360 looks). Each guardrail is judged three ways on the same simulated traffic:

- ours: the always-valid confidence sequences of tdsp_deploy.ab.sequential (alpha 0.05);
- peer: the same statistic against a fixed-sample critical value (z at alpha 0.05), repeated at
  every look, as a fixed-sample test checked each interval would be;
- threshold_on_estimates (false rollbacks only): the limit applied to the point estimates at
  every look, as a dashboard alarm would.

Measured: the false-rollback rate on A/A traffic (goal: ours <= alpha, the peer's far above),
and the detection delay of real regressions: the error rate up 2 and 3 points (1% -> 3%, 4%;
guardrail max_error_rate_increase: 0) and the latency 20 ms slower (guardrail
max_p95_increase_ms: 10).

    python bench/rollout_statistics.py [--quick] [--runs N] [--seed S]

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import emit, note, result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tdsp_deploy.ab import sequential  # noqa: E402

ALPHA = 0.05
RATE = 100.0  # requests a second through the endpoint
CANARY = 0.05  # the canary's share
CHECK_S = 10.0
HOUR_LOOKS = 360
BASE_ERROR = 0.01
PLANNED_S = 600.0  # the sequences are tuned to be tightest after 10 minutes


def _arm_sizes() -> tuple[int, int]:
    per_look = int(RATE * CHECK_S)
    canary = int(round(per_look * CANARY))
    return per_look - canary, canary


def error_runs(rng: np.random.Generator, runs: int, looks: int, canary_error: float) -> dict[str, np.ndarray]:
    """First look (1-based, 0 = never) at which each run rolls back, per method."""
    n_a, n_b = _arm_sizes()
    errors_a = np.cumsum(rng.binomial(n_a, BASE_ERROR, size=(runs, looks)), axis=1)
    errors_b = np.cumsum(rng.binomial(n_b, canary_error, size=(runs, looks)), axis=1)
    total_a = n_a * np.arange(1, looks + 1)
    total_b = n_b * np.arange(1, looks + 1)
    planned = PLANNED_S / CHECK_S * n_a * n_b / (n_a + n_b)
    rho2 = sequential.tuned_rho2(planned, ALPHA)
    out = {}
    for method, scale in (("always_valid", rho2), ("fixed_sample", None)):
        _, low, _ = sequential.difference_of_rates(errors_a, total_a, errors_b, total_b, ALPHA, scale)
        out[method] = _first(low > 0.0)
    # a threshold on the point estimates, checked at every look (as an alarm on a dashboard is)
    out["threshold"] = _first(errors_b / total_b - errors_a / total_a > 0.0)
    return out


def latency_runs(
    rng: np.random.Generator, runs: int, looks: int, shift_ms: float, increase_ms: float
) -> dict[str, np.ndarray]:
    """As error_runs, for a p95-increase guardrail on lognormal latencies (median 40 ms)."""
    n_a, n_b = _arm_sizes()
    bins = len(sequential.LATENCY_EDGES_MS) + 1
    control = np.zeros((runs, bins), dtype=np.int64)
    canary = np.zeros((runs, bins), dtype=np.int64)
    planned = PLANNED_S / CHECK_S * n_b
    rho2 = sequential.tuned_rho2(planned, ALPHA / 2)
    offsets = (np.arange(runs) * bins)[:, None]
    fired = {m: np.zeros(runs, dtype=int) for m in ("always_valid", "fixed_sample", "threshold")}
    for look in range(1, looks + 1):
        for counts, size, shift in ((control, n_a, 0.0), (canary, n_b, shift_ms)):
            values = np.exp(rng.normal(np.log(40.0), 0.35, size=(runs, size))) + shift
            index = np.searchsorted(sequential.LATENCY_EDGES_MS, values) + offsets
            counts += np.bincount(index.ravel(), minlength=runs * bins).reshape(runs, bins)
        for method, scale in (("always_valid", rho2), ("fixed_sample", None)):
            breached, _ = sequential.quantile_increase_above(control, canary, 0.95, increase_ms, ALPHA, scale)
            newly = (fired[method] == 0) & breached
            fired[method][newly] = look
        over = _binned_quantile(canary, 0.95) > _binned_quantile(control, 0.95) + increase_ms
        fired["threshold"][(fired["threshold"] == 0) & over] = look
        if all((f > 0).all() for f in fired.values()):
            break
    return fired


def _binned_quantile(counts: np.ndarray, q: float) -> np.ndarray:
    cumulative = np.cumsum(counts, axis=1)
    index = (cumulative < np.ceil(q * cumulative[:, -1:])).sum(axis=1)
    return np.append(sequential.LATENCY_EDGES_MS, np.inf)[index]


def _first(breached: np.ndarray) -> np.ndarray:
    hit = breached.any(axis=1)
    return np.where(hit, breached.argmax(axis=1) + 1, 0)


def _rate(first: np.ndarray) -> float:
    return float((first > 0).mean())


def _delay(first: np.ndarray, quantile: float) -> float | None:
    found = first[first > 0]
    return float(np.quantile(found, quantile) * CHECK_S) if len(found) else None


def _mc_error(rate: float, runs: int) -> float:
    return float(np.sqrt(max(rate * (1 - rate), 1e-12) / runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (about a tenth)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    runs = args.runs or (400 if args.quick else 4000)
    latency_runs_n = max(50, runs // 10)
    rng = np.random.default_rng(args.seed)
    entries: list[dict[str, Any]] = []
    started = time.perf_counter()

    note(f"A/A error rates: {runs} runs x {HOUR_LOOKS} looks")
    aa = error_runs(rng, runs, HOUR_LOOKS, BASE_ERROR)
    ours, peer = _rate(aa["always_valid"]), _rate(aa["fixed_sample"])
    entries.append(
        result(
            "false rollbacks, A/A error rate, 360 looks in an hour",
            ours,
            peer,
            unit="share of runs",
            goal=f"ours <= alpha ({ALPHA}) + Monte Carlo error",
            met=ours <= ALPHA + 2 * _mc_error(ALPHA, runs),
            runs=runs,
            monte_carlo_se=round(_mc_error(ours, runs), 4),
            guardrail="max_error_rate_increase: 0",
            threshold_on_estimates=_rate(aa["threshold"]),
        )
    )
    for points in (0.02, 0.03):
        note(f"error rate +{points:.0%}: {runs} runs")
        hit = error_runs(rng, runs, HOUR_LOOKS, BASE_ERROR + points)
        ours_d, peer_d = _delay(hit["always_valid"], 0.5), _delay(hit["fixed_sample"], 0.5)
        entries.append(
            result(
                f"detection delay, error rate {BASE_ERROR:.0%} -> {BASE_ERROR + points:.0%} (median)",
                ours_d if ours_d is not None else HOUR_LOOKS * CHECK_S,
                peer_d,
                unit="seconds",
                goal="detected in every run within the hour",
                met=_rate(hit["always_valid"]) == 1.0,
                detected=_rate(hit["always_valid"]),
                p90_s=_delay(hit["always_valid"], 0.9),
                peer_p90_s=_delay(hit["fixed_sample"], 0.9),
                canary_requests_at_median=(ours_d or 0) * RATE * CANARY,
            )
        )

    for shift, label in ((0.0, "A/A"), (10.0, "canary exactly 10 ms slower (at the limit)")):
        note(f"latency, {label}: {latency_runs_n} runs x {HOUR_LOOKS} looks")
        null = latency_runs(rng, latency_runs_n, HOUR_LOOKS, shift, 10.0)
        ours, peer = _rate(null["always_valid"]), _rate(null["fixed_sample"])
        entries.append(
            result(
                f"false rollbacks, latency {label}, max_p95_increase_ms: 10, 360 looks in an hour",
                ours,
                peer,
                unit="share of runs",
                goal=f"ours <= alpha ({ALPHA}) + Monte Carlo error",
                met=ours <= ALPHA + 2 * _mc_error(ALPHA, latency_runs_n),
                runs=latency_runs_n,
                monte_carlo_se=round(_mc_error(ours, latency_runs_n), 4),
                threshold_on_estimates=_rate(null["threshold"]),
            )
        )
    note(f"latency +20 ms: {latency_runs_n} runs")
    slow = latency_runs(rng, latency_runs_n, HOUR_LOOKS, 20.0, 10.0)
    ours_d, peer_d = _delay(slow["always_valid"], 0.5), _delay(slow["fixed_sample"], 0.5)
    entries.append(
        result(
            "detection delay, latency +20 ms against max_p95_increase_ms: 10 (median)",
            ours_d if ours_d is not None else HOUR_LOOKS * CHECK_S,
            peer_d,
            unit="seconds",
            goal="detected in every run within the hour",
            met=_rate(slow["always_valid"]) == 1.0,
            detected=_rate(slow["always_valid"]),
            p90_s=_delay(slow["always_valid"], 0.9),
            peer_p90_s=_delay(slow["fixed_sample"], 0.9),
        )
    )
    note(f"done in {time.perf_counter() - started:.1f} s")
    emit(entries)


if __name__ == "__main__":
    main()
