"""Judging one look at a step: each guardrail against the new deployment's (and the
control's) window, with the always-valid tests of tdsp_deploy.ab.sequential.

A guardrail is breached only when the evidence shows it, at level alpha over every look of
the step: alpha is shared among the guardrails that apply (Bonferroni), so a deployment that
breaches nothing is rolled back at most alpha of the time however often it is looked at.
A guardrail relative to the control applies only while there is a control taking traffic.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from tdsp_deploy.ab import sequential
from tdsp_deploy.rollout.sources import ArmWindow

RELATIVE = ("max_error_rate_increase", "max_p95_increase_ms", "max_p99_increase_ms")
QUANTILE = {"max_p95_ms": 0.95, "max_p99_ms": 0.99, "max_p95_increase_ms": 0.95, "max_p99_increase_ms": 0.99}


@dataclasses.dataclass
class GuardrailCheck:
    name: str
    value: float | None  # the new deployment's estimate (rate, or ms)
    limit: float  # the limit it is judged against (for an increase: the control's bound plus it)
    breached: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _finite(self.value),
            "limit": _finite(self.limit),
            "breached": self.breached,
            "detail": self.detail,
        }


def active(guardrails: dict[str, Any], has_control: bool) -> list[str]:
    names = [
        "max_error_rate",
        "max_error_rate_increase",
        "max_p95_ms",
        "max_p99_ms",
        "max_p95_increase_ms",
        "max_p99_increase_ms",
        "max_mirror_disagreement",
    ]
    return [n for n in names if guardrails.get(n) is not None and (has_control or n not in RELATIVE)]


def evaluate(
    guardrails: dict[str, Any], canary: ArmWindow, control: ArmWindow | None
) -> list[GuardrailCheck]:
    """Every guardrail that applies, judged on the windows since the step began."""
    names = active(guardrails, control is not None)
    if not names:
        return []
    alpha = float(guardrails.get("alpha", 0.05)) / len(names)
    planned = max(int(guardrails.get("min_requests", 200)), 1)
    rho2 = sequential.tuned_rho2(planned, alpha)
    checks = []
    for name in names:
        limit = float(guardrails[name])
        if name == "max_error_rate":
            checks.append(_error_rate(canary, limit, alpha, rho2))
        elif name == "max_error_rate_increase":
            assert control is not None
            checks.append(_error_rate_increase(canary, control, limit, alpha, rho2))
        elif name in ("max_p95_ms", "max_p99_ms"):
            checks.append(_quantile(name, canary, QUANTILE[name], limit, alpha, rho2))
        elif name in ("max_p95_increase_ms", "max_p99_increase_ms"):
            assert control is not None
            checks.append(_quantile_increase(name, canary, control, QUANTILE[name], limit, alpha, rho2))
        else:
            checks.append(_mirror(canary, limit, alpha, rho2))
    return checks


def _rate(errors: int, n: int) -> float | None:
    return errors / n if n else None


def _error_rate(canary: ArmWindow, limit: float, alpha: float, rho2: float) -> GuardrailCheck:
    breached = bool(sequential.rate_above(canary.errors, canary.requests, limit, alpha, rho2))
    return GuardrailCheck(
        "max_error_rate",
        _rate(canary.errors, canary.requests),
        limit,
        breached,
        f"{canary.errors} errors in {canary.requests} requests",
    )


def _error_rate_increase(
    canary: ArmWindow, control: ArmWindow, limit: float, alpha: float, rho2: float
) -> GuardrailCheck:
    estimate, low, _ = sequential.difference_of_rates(
        control.errors, control.requests, canary.errors, canary.requests, alpha, rho2
    )
    breached = bool(control.requests > 0 and canary.requests > 0 and low > limit)
    return GuardrailCheck(
        "max_error_rate_increase",
        estimate if control.requests and canary.requests else None,
        limit,
        breached,
        f"increase at least {low:.4f} (always-valid lower bound);"
        f" control {control.errors}/{control.requests}, new {canary.errors}/{canary.requests}",
    )


def _quantile(
    name: str, canary: ArmWindow, q: float, limit: float, alpha: float, rho2: float
) -> GuardrailCheck:
    if canary.minutes is not None:
        return _minutes_above(name, canary.minutes.get(_key(q), []), limit, alpha)
    counts = canary.latency_counts()
    n = int(counts.sum())
    slower = int(sequential.slower_than(counts, limit))
    breached = bool(sequential.quantile_above(slower, n, q, alpha, rho2))
    return GuardrailCheck(
        name, quantile_ms(counts, q), limit, breached, f"{slower} of {n} requests slower than {limit:g} ms"
    )


def _quantile_increase(
    name: str, canary: ArmWindow, control: ArmWindow, q: float, increase: float, alpha: float, rho2: float
) -> GuardrailCheck:
    if canary.minutes is not None and control.minutes is not None:
        return _minutes_increase(
            name, control.minutes.get(_key(q), []), canary.minutes.get(_key(q), []), increase, alpha
        )
    breached, threshold = sequential.quantile_increase_above(
        control.latency_counts(), canary.latency_counts(), q, increase, alpha, rho2
    )
    ours, theirs = quantile_ms(canary.latency_counts(), q), quantile_ms(control.latency_counts(), q)
    rise = ours - theirs if ours is not None and theirs is not None else None
    return GuardrailCheck(
        name,
        rise,
        increase,
        bool(breached),
        f"p{round(q * 100)} {_ms(ours)} against the control's {_ms(theirs)};"
        f" judged at {_ms(threshold)} (control's always-valid upper bound + {increase:g} ms)",
    )


# Where a target reports only each minute's quantile (Azure Monitor), the guardrail judges
# the mean of those per-minute values: the always-valid interval of a mean (of the minutes,
# tightest after ten of them), against the limit or against the control's minutes.
PLANNED_MINUTES = 10


def _key(q: float) -> str:
    return f"p{round(q * 100)}"


def _minutes_above(name: str, values: list[float], limit: float, alpha: float) -> GuardrailCheck:
    n = len(values)
    if n < 2:
        return GuardrailCheck(name, values[0] if values else None, limit, False, f"{n} minute(s) reported")
    mean, var = float(np.mean(values)), float(np.var(values, ddof=1))
    low = mean - float(sequential.radius(var, n, alpha, sequential.tuned_rho2(PLANNED_MINUTES, alpha)))
    return GuardrailCheck(
        name, mean, limit, low > limit, f"mean of {n} per-minute values {mean:.1f} ms, at least {low:.1f} ms"
    )


def _minutes_increase(
    name: str, control: list[float], canary: list[float], increase: float, alpha: float
) -> GuardrailCheck:
    if len(control) < 2 or len(canary) < 2:
        return GuardrailCheck(name, None, increase, False, f"{len(canary)} minute(s) of the new deployment")
    a, b = np.asarray(control), np.asarray(canary)
    rise, low, _ = sequential.difference_of_means(
        a.mean(),
        a.var(ddof=1),
        len(a),
        b.mean(),
        b.var(ddof=1),
        len(b),
        alpha,
        sequential.tuned_rho2(PLANNED_MINUTES, alpha),
    )
    return GuardrailCheck(
        name,
        float(rise),
        increase,
        bool(low > increase),
        f"per-minute means {b.mean():.1f} ms against the control's {a.mean():.1f} ms;"
        f" rise at least {low:.1f} ms",
    )


def _mirror(canary: ArmWindow, limit: float, alpha: float, rho2: float) -> GuardrailCheck:
    compared = canary.shadow_agreed + canary.shadow_disagreed
    breached = bool(sequential.rate_above(canary.shadow_disagreed, compared, limit, alpha, rho2))
    return GuardrailCheck(
        "max_mirror_disagreement",
        _rate(canary.shadow_disagreed, compared),
        limit,
        breached,
        f"{canary.shadow_disagreed} of {compared} mirrored answers differ",
    )


def quantile_ms(counts: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of binned latencies (its bin's upper edge), None without requests."""
    n = int(counts.sum())
    if n == 0:
        return None
    index = int(np.searchsorted(np.cumsum(counts), math.ceil(q * n)))
    edges = np.append(sequential.LATENCY_EDGES_MS, np.inf)
    return float(edges[min(index, len(edges) - 1)])


def _ms(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1f} ms"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)
