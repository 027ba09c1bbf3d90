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
# skewed, and its one-sided false positives drift far from alpha/2 (BENCHMARKS.md, "A/B verdict,
# by simulation").
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
    units: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    """The primary metric's two tests and what they decide.

    ``control`` and ``treatment`` are the outcomes in arrival order. Returns ``decision``
    ("promote", "keep control" or None to go on), ``by`` (which test decided), the fixed test
    (``fixed``: a stats.TestResult, or None before the planned sample) and the always-valid
    interval (``always_valid_ci``).

    ``units``: the unit of randomisation of each outcome (the sticky key's value, e.g. a
    user), when it is not the request. Requests of one user are alike, so counting them as
    independent understates the variance (5 requests a user: 12% false positives instead of
    5%); the comparison is then made between units (a ratio of sums, its variance by the delta
    method) and the log scale is not used."""
    if units is not None:
        return _clustered_primary(control, treatment, units, direction, alpha, required)
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
        # the fixed-horizon test of everything so far: shown before the planned sample, for
        # comparison; it decides nothing
        "current": _fixed_test(a, b, metric_type, fixed_alpha),
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


def _clustered_primary(
    control: Any,
    treatment: Any,
    units: tuple[list[str], list[str]],
    direction: str,
    alpha: float,
    required: dict[str, int] | None,
) -> dict[str, Any]:
    a, b = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    sequential_alpha, fixed_alpha = alphas(alpha)
    sums_a, sums_b = _by_unit(a, units[0]), _by_unit(b, units[1])
    result: dict[str, Any] = {
        "decision": None,
        "by": None,
        "fixed": None,
        "always_valid_ci": [-math.inf, math.inf],
        "alpha_sequential": sequential_alpha,
        "alpha_fixed": fixed_alpha,
        "scale": None,
        "units": {"control": len(sums_a[0]), "treatment": len(sums_b[0])},
        "current": None,
    }
    if len(sums_a[0]) < 2 or len(sums_b[0]) < 2:
        return result
    result["current"] = _clustered_test(sums_a, sums_b, fixed_alpha)
    effect, variance = _ratio_difference(sums_a, sums_b)
    k_eff = len(sums_a[0]) * len(sums_b[0]) / (len(sums_a[0]) + len(sums_b[0]))
    planned = k_eff
    if required:
        size = (len(a) + len(b)) / (len(sums_a[0]) + len(sums_b[0]))  # requests per unit
        planned = (
            required["control"] * required["treatment"] / (required["control"] + required["treatment"]) / size
        )
    rho2 = sequential.tuned_rho2(max(planned, 1.0), sequential_alpha)
    r = float(sequential.radius(variance * k_eff, k_eff, sequential_alpha, rho2))
    result["always_valid_ci"] = [effect - r, effect + r]
    sign = 1.0 if direction == HIGHER else -1.0
    if effect - r > 0 or effect + r < 0:
        better = (effect - r > 0) == (sign > 0)
        result.update(decision="promote" if better else "keep control", by="always-valid")
        return result
    if required is not None and len(a) >= required["control"] and len(b) >= required["treatment"]:
        planned_a = _by_unit(a[: required["control"]], units[0][: required["control"]])
        planned_b = _by_unit(b[: required["treatment"]], units[1][: required["treatment"]])
        fixed = _clustered_test(planned_a, planned_b, fixed_alpha)
        result["fixed"] = fixed
        if fixed.p_value < fixed_alpha and sign * fixed.effect > 0:
            result.update(decision="promote", by="planned sample")
        else:
            result.update(decision="keep control", by="planned sample")
    return result


def _by_unit(values: np.ndarray, units: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: the sum of its outcomes and its number of requests."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(u, len(index)) for u in units), dtype=np.int64, count=len(units))
    return np.bincount(codes, weights=values, minlength=len(index)), np.bincount(codes, minlength=len(index))


def _ratio_difference(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[float, float]:
    """Treatment minus control of outcomes per request, and its variance with units as the
    observations (the delta method for a ratio of sums)."""

    def ratio(sums: np.ndarray, sizes: np.ndarray) -> tuple[float, float]:
        r = sums.sum() / sizes.sum()
        k = len(sums)
        variance = k / (k - 1) * float(((sums - r * sizes) ** 2).sum()) / float(sizes.sum()) ** 2
        return float(r), variance

    r_a, v_a = ratio(*a)
    r_b, v_b = ratio(*b)
    return r_b - r_a, v_a + v_b


def _clustered_test(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], alpha: float
) -> stats.TestResult:
    effect, variance = _ratio_difference(a, b)
    control = float(a[0].sum() / a[1].sum())
    se = math.sqrt(variance)
    z = effect / se if se > 0 else 0.0
    half = float(_st.norm.ppf(1 - alpha / 2)) * se
    return stats.TestResult(
        test="z-test by unit (delta method)",
        control=control,
        treatment=control + effect,
        effect=effect,
        ci_low=effect - half,
        ci_high=effect + half,
        relative_effect=effect / control if control else None,
        p_value=float(2 * _st.norm.sf(abs(z))),
        n_control=int(a[1].sum()),
        n_treatment=int(b[1].sum()),
    )


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
