"""How an A/B experiment's primary metric and guardrails become a decision, with error rates
that hold however often the experiment is looked at.

The primary metric spends its alpha in two parts:

- ``SEQUENTIAL_SHARE`` of it on an always-valid confidence sequence (tdsp_deploy.ab.sequential)
  of the difference, looked at on every analysis, before and after the planned sample: it
  may stop the experiment early (for a large improvement, or for harm) and it is the only
  thing that can change the decision after the planned sample;
- the rest on the fixed-horizon test (two-proportion z-test, Welch's t-test) of exactly the
  first ``required`` outcomes of each variant, in the order they arrived. However many times
  the experiment is analyzed past its plan, that test sees the same data and gives the same
  answer: it is made once.

The sample size is planned at the fixed part's alpha and with the split (a treatment taking 10%
needs fewer control outcomes than treatment ones), so the planned power holds.

Guardrails are judged on always-valid bounds, never on point estimates: the treatment's error
rate above ``max_error_rate``, its p95 latency above ``max_p95_ms``, its error rate above the
control's by more than ``max_error_rate_increase`` — each shown at level alpha shared among them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as _st

from tdsp_deploy.ab import sequential, stats

SEQUENTIAL_SHARE = 0.1
HIGHER = "higher_is_better"
# A positive metric whose values are this skewed (sample skewness of both variants together) is
# compared on a log scale: with unequal variants the t statistic of skewed values is itself
# skewed, and its one-sided false positives drift far from alpha/2 (lognormal at 90/10: 5%).
SKEWED = 1.0


def transform(
    control: np.ndarray, treatment: np.ndarray, metric_type: str
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The values a continuous metric is compared on: logs when all are positive and skewed
    (the effect is then a ratio of geometric means), else the values; and the scale's name."""
    if metric_type == "binary" or len(control) < 3 or len(treatment) < 3:
        return control, treatment, None
    pooled = np.concatenate([control, treatment])
    if pooled.min() <= 0 or float(_st.skew(pooled)) < SKEWED:
        return control, treatment, None
    return np.log(control), np.log(treatment), "log"


def alphas(alpha: float) -> tuple[float, float]:
    """(the always-valid part, the fixed-horizon part) of the primary metric's alpha."""
    return alpha * SEQUENTIAL_SHARE, alpha * (1 - SEQUENTIAL_SHARE)


def required_sample(
    metric_type: str | None,
    baseline: float | None,
    mde: float | None,
    alpha: float,
    power: float,
    treatment_share: float = 0.5,
) -> dict[str, int] | None:
    """Outcomes needed per variant, ``{"control": n, "treatment": n}``, for the fixed part of
    the test to see an effect of ``mde`` with ``power``; None when it cannot be planned.

    With a share ``w`` for the treatment, the variance of the difference is
    ``s2_c / ((1-w) N) + s2_t / (w N)``; solved for the total ``N`` and split by the shares.
    At 50/50 this is the classic per-variant formula (Fleiss' for rates)."""
    if baseline is None or not mde or metric_type is None:
        return None
    _, fixed = alphas(alpha)
    w = min(max(treatment_share, 0.01), 0.99)
    z_a = float(_st.norm.ppf(1 - fixed / 2))
    z_b = float(_st.norm.ppf(power))
    if metric_type == "binary":
        stats.sample_size_proportions(baseline, mde, fixed, power)  # its checks, its messages
        p1, p2 = baseline, baseline + mde
        p_bar = (1 - w) * p1 + w * p2
        null = z_a * math.sqrt(p_bar * (1 - p_bar) * (1 / (1 - w) + 1 / w))
        alternative = z_b * math.sqrt(p1 * (1 - p1) / (1 - w) + p2 * (1 - p2) / w)
        total = (null + alternative) ** 2 / mde**2
    else:
        stats.sample_size_means(baseline, mde, fixed, power)
        total = (z_a + z_b) ** 2 * baseline**2 * (1 / (1 - w) + 1 / w) / mde**2
    return {"control": math.ceil((1 - w) * total), "treatment": math.ceil(w * total)}


def primary(
    control: list[float] | np.ndarray,
    treatment: list[float] | np.ndarray,
    metric_type: str,
    direction: str,
    alpha: float,
    required: dict[str, int] | None,
) -> dict[str, Any]:
    """The primary metric's two tests and what they decide.

    ``control`` and ``treatment`` are the outcomes in arrival order. Returns ``decision``
    ("promote", "keep control" or None to go on), ``by`` (which test decided), the fixed test
    (``fixed``: a stats.TestResult, or None before the planned sample) and the always-valid
    interval (``always_valid_ci``)."""
    a, b, scale = transform(np.asarray(control, dtype=float), np.asarray(treatment, dtype=float), metric_type)
    sequential_alpha, fixed_alpha = alphas(alpha)
    low, high = _always_valid(a, b, metric_type, sequential_alpha, required)
    sign = 1.0 if direction == HIGHER else -1.0
    result: dict[str, Any] = {
        "decision": None,
        "by": None,
        "fixed": None,
        "always_valid_ci": [low, high],
        "alpha_sequential": sequential_alpha,
        "alpha_fixed": fixed_alpha,
        "scale": scale,
    }
    if low > 0 or high < 0:  # the whole interval on one side of 0
        better = (low > 0) == (sign > 0)
        result.update(decision="promote" if better else "keep control", by="always-valid")
        return result
    if required is not None and len(a) >= required["control"] and len(b) >= required["treatment"]:
        fixed = _fixed_test(a[: required["control"]], b[: required["treatment"]], metric_type, fixed_alpha)
        result["fixed"] = fixed
        if fixed is not None and fixed.p_value < fixed_alpha and sign * fixed.effect > 0:
            result.update(decision="promote", by="planned sample")
        else:
            result.update(decision="keep control", by="planned sample")
    return result


def _always_valid(
    a: np.ndarray, b: np.ndarray, metric_type: str, alpha: float, required: dict[str, int] | None
) -> tuple[float, float]:
    if len(a) < 2 or len(b) < 2:
        return -math.inf, math.inf
    planned = (
        required["control"] * required["treatment"] / (required["control"] + required["treatment"])
        if required
        else len(a) * len(b) / (len(a) + len(b))
    )
    rho2 = sequential.tuned_rho2(max(planned, 1.0), alpha)
    if metric_type == "binary":
        _, low, high = sequential.difference_of_rates(a.sum(), len(a), b.sum(), len(b), alpha, rho2)
    else:
        _, low, high = sequential.difference_of_means(
            a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b), alpha, rho2
        )
    return float(low), float(high)


def _fixed_test(a: np.ndarray, b: np.ndarray, metric_type: str, alpha: float) -> stats.TestResult | None:
    if metric_type == "binary":
        return stats.two_proportion_ztest(int(round(a.sum())), len(a), int(round(b.sum())), len(b), alpha)
    if len(a) >= 2 and len(b) >= 2:
        return stats.welch_ttest(a, b, alpha)
    return None


def guardrails(
    limits: dict[str, Any],
    control: dict[str, Any],
    treatment: dict[str, Any],
    alpha: float,
) -> list[dict[str, Any]]:
    """Each guardrail set in ``limits``, judged on always-valid bounds. ``control`` and
    ``treatment`` hold ``n``, ``errors`` and ``latencies`` (ms) of each variant."""
    names = [
        n for n in ("max_error_rate", "max_p95_ms", "max_error_rate_increase") if limits.get(n) is not None
    ]
    if not names:
        return []
    share = alpha / len(names)
    planned = max(min(control["n"], treatment["n"]), 1)
    rho2 = sequential.tuned_rho2(planned, share)
    rate_c = control["errors"] / control["n"] if control["n"] else None
    rate_t = treatment["errors"] / treatment["n"] if treatment["n"] else None
    found = []
    for name in names:
        limit = float(limits[name])
        if name == "max_error_rate":
            breached = bool(sequential.rate_above(treatment["errors"], treatment["n"], limit, share, rho2))
            found.append(_guardrail("error_rate", limit, rate_c, rate_t, breached))
        elif name == "max_p95_ms":
            counts = sequential.latency_counts(treatment["latencies"])
            slower = int(sequential.slower_than(counts, limit))
            breached = bool(sequential.quantile_above(slower, int(counts.sum()), 0.95, share, rho2))
            found.append(
                _guardrail(
                    "p95_ms", limit, _p95(control["latencies"]), _p95(treatment["latencies"]), breached
                )
            )
        else:
            _, low, _ = sequential.difference_of_rates(
                control["errors"], control["n"], treatment["errors"], treatment["n"], share, rho2
            )
            breached = bool(control["n"] and treatment["n"] and low > limit)
            found.append(_guardrail("error_rate_increase", limit, rate_c, rate_t, breached, bound=float(low)))
    return found


def _guardrail(
    name: str, limit: float, control: Any, treatment: Any, breached: bool, bound: float | None = None
) -> dict[str, Any]:
    doc = {"name": name, "limit": limit, "control": control, "treatment": treatment, "breached": breached}
    if bound is not None and math.isfinite(bound):
        doc["always_valid_lower_bound"] = bound
    return doc


def _p95(latencies: list[float]) -> float | None:
    return float(np.percentile(latencies, 95)) if len(latencies) else None
