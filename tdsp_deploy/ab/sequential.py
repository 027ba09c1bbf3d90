"""Always-valid sequential statistics: confidence sequences that may be looked at after every
request, every ten seconds or whenever one likes, and still cover with probability 1 - alpha
at all looks at once.

One engine for staged rollouts (checked every few seconds while a step bakes) and for A/B
experiments (looked at whenever someone runs ``ab analyze``). A fixed-sample test looked at
repeatedly is wrong far more often than its alpha says; these are not.

The construction is the normal mixture martingale (Robbins 1970; the mixture SPRT of Johari,
Pekelis and Walsh, and the asymptotic confidence sequences of Waudby-Smith et al., 2021): an
estimate from ``n`` observations of variance ``s2`` each is, up to a vanishing error, a Brownian
motion in the information ``1/v``; mixing its likelihood ratio over a normal prior on the
effect gives a test martingale, and Ville's inequality bounds the chance that it ever crosses
``1/alpha``. Inverting that crossing gives the radius::

    r = sqrt(s2 * (1 + x) / (n x) * (log(1 + x) + 2 log(1/alpha))),   x = rho2 * n

``rho2`` sets where the sequence is tightest; ``tuned_rho2`` puts that at a planned ``n``.
Every function takes numpy arrays as well as numbers, so the simulations vectorise.

Three kinds of question, each a one-liner over the radius:

- ``difference_of_rates``: treatment rate minus control rate (error rates, conversions);
- ``rate_above``: is one arm's rate above a limit (the null variance at the limit is used,
  so zero errors in a few requests is not mistaken for certainty);
- quantiles, through the same rate tests: "p95 is above L" is "more than 5% of the requests
  take longer than L" (``quantile_above``), and "p95 rose by more than D" is judged against
  an always-valid upper bound of the control's p95 (``quantile_upper_bound``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "difference_of_means",
    "difference_of_rates",
    "quantile_above",
    "quantile_increase_above",
    "quantile_upper_bound",
    "latency_counts",
    "radius",
    "rate_above",
    "tuned_rho2",
]


def tuned_rho2(planned_n: float, alpha: float) -> float:
    """The mixing scale that makes the sequence tightest after ``planned_n`` observations
    (Waudby-Smith et al.'s choice: rho^2 n = -2 log(alpha) + log(1 - 2 log(alpha)))."""
    if planned_n <= 0:
        raise ValueError("planned_n must be > 0")
    minus_two_log = -2.0 * math.log(alpha)
    return (minus_two_log + math.log(1.0 + minus_two_log)) / planned_n


def radius(variance: Any, n: Any, alpha: float, rho2: float | None) -> Any:
    """Half-width of the two-sided (1 - alpha) confidence sequence of an estimate whose
    variance is ``variance`` after ``n`` observations. Infinite before the first one.

    ``rho2=None`` gives the fixed-sample interval's half-width instead (z * sqrt(v / n)),
    valid at one planned look only: kept to measure what repeated looks do to it."""
    n = np.asarray(n, dtype=float)
    variance = np.asarray(variance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if rho2 is None:
            out = _z(alpha) * np.sqrt(variance / n)
        else:
            x = rho2 * n
            inner = (1.0 + x) / (n * x) * (np.log1p(x) + 2.0 * math.log(1.0 / alpha))
            out = np.sqrt(variance * inner)
    out = np.where(n > 0, out, np.inf)
    return out if out.ndim else float(out)


def _z(alpha: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / 2)


def _smoothed_variance(errors: Any, n: Any) -> Any:
    # A rate's variance estimated with one pseudo-error and one pseudo-success: without them
    # no error in 50 requests would claim a variance of 0 and an interval of width 0.
    p = (np.asarray(errors, dtype=float) + 1.0) / (np.asarray(n, dtype=float) + 2.0)
    return p * (1.0 - p)


def difference_of_rates(
    errors_a: Any, n_a: Any, errors_b: Any, n_b: Any, alpha: float, rho2: float | None
) -> tuple[Any, Any, Any]:
    """Treatment (b) rate minus control (a) rate: ``(estimate, low, high)``, always valid.

    ``rho2`` is per effective observation, ``n_a n_b / (n_a + n_b)``: the information of a
    difference grows with the smaller arm."""
    n_a = np.asarray(n_a, dtype=float)
    n_b = np.asarray(n_b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.where(n_b > 0, errors_b / np.maximum(n_b, 1), 0.0) - np.where(
            n_a > 0, errors_a / np.maximum(n_a, 1), 0.0
        )
        variance = _smoothed_variance(errors_a, n_a) / n_a + _smoothed_variance(errors_b, n_b) / n_b
        effective_n = n_a * n_b / (n_a + n_b)
        # radius() takes a per-observation variance; hand it the difference's, scaled back
        r = radius(variance * effective_n, np.where((n_a > 0) & (n_b > 0), effective_n, 0.0), alpha, rho2)
    return _tuple(estimate, estimate - r, estimate + r)


def difference_of_means(
    mean_a: Any, var_a: Any, n_a: Any, mean_b: Any, var_b: Any, n_b: Any, alpha: float, rho2: float | None
) -> tuple[Any, Any, Any]:
    """Treatment (b) mean minus control (a) mean: ``(estimate, low, high)``, always valid
    (asymptotically: the arms' sample variances stand in for the true ones). Meant for a
    bounded or transformed metric (log latency, a capped value), whose variance settles fast."""
    n_a = np.asarray(n_a, dtype=float)
    n_b = np.asarray(n_b, dtype=float)
    estimate = np.asarray(mean_b, dtype=float) - np.asarray(mean_a, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.asarray(var_a) / n_a + np.asarray(var_b) / n_b
        effective_n = n_a * n_b / (n_a + n_b)
        r = radius(variance * effective_n, np.where((n_a > 1) & (n_b > 1), effective_n, 0.0), alpha, rho2)
    return _tuple(estimate, estimate - r, estimate + r)


def rate_above(errors: Any, n: Any, limit: float, alpha: float, rho2: float | None) -> Any:
    """True where the evidence says the rate is above ``limit`` (a one-sided test of
    "rate <= limit", always valid at level alpha). The variance is the null's, at the limit;
    a limit of 0 is breached by the first error."""
    errors = np.asarray(errors, dtype=float)
    n = np.asarray(n, dtype=float)
    if limit <= 0:
        return _scalar(errors > 0)
    if limit >= 1:
        return _scalar(np.zeros_like(errors, dtype=bool))
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = errors / np.maximum(n, 1) - limit
    return _scalar((n > 0) & (excess > radius(limit * (1 - limit), n, alpha, rho2)))


def quantile_above(slower: Any, n: Any, q: float, alpha: float, rho2: float | None) -> Any:
    """True where the ``q`` quantile of latency is shown to be above a limit: more than
    ``1 - q`` of the ``n`` requests took longer, ``slower`` of them did."""
    return rate_above(slower, n, 1.0 - q, alpha, rho2)


# Latencies are counted in log-spaced bins, 1% wide, from 0.1 ms to 10 minutes: a rollout's
# evidence stays a fixed-size array (persisted between checks, summed across arms), and the
# rounding is always taken in the direction that keeps the tests valid (a quantile's upper
# bound rounds up to its bin's upper edge; "slower than T" counts only bins wholly above T).
LATENCY_EDGES_MS = np.exp(np.arange(math.log(0.1), math.log(600_000.0) + 0.01, math.log(1.01)))


def latency_counts(latencies_ms: Any) -> np.ndarray:
    """Counts per bin of ``LATENCY_EDGES_MS`` (the first bin takes everything below 0.1 ms,
    the last everything above 10 minutes)."""
    values = np.asarray(latencies_ms, dtype=float)
    index = np.searchsorted(LATENCY_EDGES_MS, values, side="left")
    return np.bincount(index, minlength=len(LATENCY_EDGES_MS) + 1).astype(np.int64)


def _upper_edges() -> np.ndarray:
    return np.append(LATENCY_EDGES_MS, np.inf)


def _lower_edges() -> np.ndarray:
    return np.insert(LATENCY_EDGES_MS, 0, 0.0)


def quantile_upper_bound(counts: Any, q: float, alpha: float, rho2: float | None) -> Any:
    """An always-valid upper bound of the ``q`` quantile from binned latencies (the last axis
    is the bins): the upper edge of the bin where the share of requests at or below reaches
    ``q + r``, ``r`` the radius of a rate at ``q``; +inf until there are enough requests.

    If the true quantile were above that edge, the share of requests below the quantile would
    exceed its true value (``q``) by ``r`` at that look, which the sequence allows with
    probability at most ``alpha`` over all looks."""
    counts = np.asarray(counts)
    n = counts.sum(axis=-1)
    level = q + radius(q * (1 - q), n, alpha, rho2)
    cumulative = np.cumsum(counts, axis=-1)
    needed = np.ceil(np.asarray(level) * n)
    index = (cumulative < needed[..., None]).sum(axis=-1)
    edges = _upper_edges()
    bound = np.where((np.asarray(level) < 1) & (n > 0), edges[np.minimum(index, len(edges) - 1)], np.inf)
    return bound if bound.ndim else float(bound)


def slower_than(counts: Any, threshold_ms: Any) -> Any:
    """Requests in bins wholly above ``threshold_ms`` (an undercount: what straddles the
    threshold is left out, so a breach is never claimed from rounding)."""
    counts = np.asarray(counts)
    threshold = np.asarray(threshold_ms, dtype=float)
    above = _lower_edges() >= threshold[..., None]
    return (counts * above).sum(axis=-1)


def quantile_increase_above(
    control: Any, treatment: Any, q: float, increase_ms: float, alpha: float, rho2: float | None
) -> tuple[Any, Any]:
    """Whether the treatment's ``q`` quantile is shown to exceed the control's by more than
    ``increase_ms`` (binned latencies, last axis the bins), and the threshold it was judged at.

    Alpha is split in two: half bounds the control's quantile from above, for good (the bound
    ``u``); half tests that more than ``1 - q`` of the treatment's requests took longer than
    ``u + increase_ms``. Wherever the control's bound holds, a treatment whose quantile is
    within ``increase_ms`` of the control's has at most ``1 - q`` of its requests above that
    threshold, however the bound moves, so the test keeps its level."""
    bound = quantile_upper_bound(control, q, alpha / 2, rho2)
    threshold = np.asarray(bound) + increase_ms
    treatment = np.asarray(treatment)
    finite = np.isfinite(threshold)
    slower = slower_than(treatment, np.where(finite, threshold, 0.0))
    breached = finite & np.asarray(quantile_above(slower, treatment.sum(axis=-1), q, alpha / 2, rho2))
    return _scalar(breached), (threshold if threshold.ndim else float(threshold))


def _scalar(value: np.ndarray) -> Any:
    return value if value.ndim else bool(value)


def _tuple(*values: np.ndarray) -> tuple[Any, Any, Any]:
    return tuple(v if np.ndim(v) else float(v) for v in values)  # type: ignore[return-value]
