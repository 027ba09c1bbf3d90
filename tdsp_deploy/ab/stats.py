"""The statistics behind A/B experiments: sample sizes, tests, intervals, multiple testing.

Pure functions over numbers and arrays. Every comparison is *treatment minus control*
(``b - a``): a positive effect means the treatment's value is higher. Whether higher is
better depends on the metric (conversion: yes; error rate, latency, absolute error: no) and
is the caller's business, not this module's.

Imported only by the ``ab`` commands and by replay, so scipy and numpy load only there.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as _st

from tdsp_deploy.errors import UsageError

__all__ = [
    "Interval",
    "TestResult",
    "bootstrap_ci",
    "bootstrap_quantiles",
    "holm",
    "mcnemar",
    "paired_ttest",
    "proportion_ci",
    "sample_size_means",
    "sample_size_proportions",
    "two_proportion_ztest",
    "welch_ttest",
    "wilcoxon",
]

# McNemar: below this many discordant pairs the chi-square approximation is poor, so the
# exact binomial test is used (the usual rule of thumb: b + c < 25).
MCNEMAR_EXACT_BELOW = 25

# Bootstrap resamples are drawn in chunks of at most this many values, so memory stays
# bounded (~32 MB of indices) however many requests there are.
_BOOTSTRAP_CHUNK_VALUES = 1 << 22


@dataclasses.dataclass(frozen=True)
class TestResult:
    """One comparison of a control (a) with a treatment (b).

    ``effect`` is treatment minus control in the test's own terms (difference of rates,
    means, or the median of paired differences); ``ci_low``/``ci_high`` bound it at
    confidence ``1 - alpha``; ``relative_effect`` is ``effect / control`` (None when the
    control's value is 0).
    """

    __test__ = False  # not a pytest test class, despite the name

    test: str
    control: float
    treatment: float
    effect: float
    ci_low: float
    ci_high: float
    relative_effect: float | None
    p_value: float
    n_control: int
    n_treatment: int


class Interval(NamedTuple):
    """A point estimate with its confidence interval (unpacks as ``estimate, low, high``)."""

    estimate: float
    low: float
    high: float


# -- planning -----------------------------------------------------------------------------


def _z_quantiles(alpha: float, power: float, two_sided: bool) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise UsageError(f"alpha {alpha}: a false-positive rate is between 0 and 1", hint="e.g. alpha: 0.05")
    if not 0 < power < 1:
        raise UsageError(f"power {power}: a probability is between 0 and 1", hint="e.g. power: 0.8")
    z_alpha = _st.norm.ppf(1 - alpha / 2) if two_sided else _st.norm.ppf(1 - alpha)
    return float(z_alpha), float(_st.norm.ppf(power))


def sample_size_proportions(
    baseline: float, mde: float, alpha: float, power: float, two_sided: bool = True
) -> int:
    """Requests per variant to detect a rise of a rate from ``baseline`` to ``baseline + mde``.

    Normal approximation matched to the pooled two-proportion z-test used to analyse it:
    the null variance is pooled (both groups at the average rate), the alternative variance
    unpooled (each group at its own rate) — Fleiss' formula, as R's ``power.prop.test``::

        n = (z_a * sqrt(2 p (1-p)) + z_b * sqrt(p1 (1-p1) + p2 (1-p2)))^2 / mde^2,
        p = (p1 + p2) / 2

    ``mde`` is absolute (0.02 = two percentage points). Rounded up.
    """
    p1, p2 = baseline, baseline + mde
    if not 0 < p1 < 1:
        raise UsageError(
            f"baseline {baseline}: the control's rate of a binary metric is between 0 and 1",
            hint="set ab.baseline to the control's current rate, e.g. 0.1",
        )
    if not mde > 0:
        raise UsageError(f"minimum detectable effect {mde}: must be > 0", hint="e.g. 0.02 (two points)")
    if not p2 < 1:
        raise UsageError(
            f"baseline {baseline} + minimum detectable effect {mde} is not a rate below 1",
            hint="the minimum detectable effect of a binary metric is absolute: e.g. 0.02 for two points",
        )
    z_alpha, z_beta = _z_quantiles(alpha, power, two_sided)
    p_bar = (p1 + p2) / 2
    root = z_alpha * math.sqrt(2 * p_bar * (1 - p_bar)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root**2 / mde**2)


def sample_size_means(sd: float, mde: float, alpha: float, power: float, two_sided: bool = True) -> int:
    """Observations per variant to detect a shift of a mean by ``mde`` when each value has
    standard deviation ``sd`` (the same in both groups).

    Normal approximation: ``n = 2 (z_a + z_b)^2 sd^2 / mde^2``, rounded up. Against the
    t-test it is used with, it runs short by about one observation (R's ``power.t.test``
    says 394 where this says 393 for sd 1, mde 0.2); negligible at A/B sample sizes.
    """
    if not sd > 0:
        raise UsageError(
            f"baseline {sd}: the standard deviation of a continuous metric must be > 0",
            hint="set ab.baseline to the control's standard deviation",
        )
    if not mde > 0:
        raise UsageError(f"minimum detectable effect {mde}: must be > 0")
    z_alpha, z_beta = _z_quantiles(alpha, power, two_sided)
    return math.ceil(2 * (z_alpha + z_beta) ** 2 * sd**2 / mde**2)


# -- independent samples --------------------------------------------------------------------


def _relative(effect: float, control: float) -> float | None:
    return effect / control if control != 0 else None


def two_proportion_ztest(
    successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05
) -> TestResult:
    """Compare two rates: a (control) ``successes_a / n_a`` with b (treatment).

    ``effect = p_b - p_a`` with its Wald interval (unpooled standard error); the p-value is
    two-sided, from the pooled z statistic (as statsmodels' ``proportions_ztest``). When
    both groups are all successes or all failures there is no variation and no evidence of
    a difference: p = 1 (statsmodels gives nan), and the Wald interval, of width 0, would
    claim certainty; Newcombe's hybrid score interval (from the groups' Wilson intervals)
    stands in for it then.
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("two_proportion_ztest needs at least one observation per group")
    if not (0 <= successes_a <= n_a and 0 <= successes_b <= n_b):
        raise ValueError("successes must lie between 0 and the number of observations")
    p_a, p_b = successes_a / n_a, successes_b / n_b
    effect = p_b - p_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p_value = float(2 * _st.norm.sf(abs(effect) / se_null)) if se_null > 0 else 1.0
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = float(_st.norm.ppf(1 - alpha / 2)) * se
    low, high = effect - half, effect + half
    if se == 0:
        low_a, high_a = proportion_ci(successes_a, n_a, 1 - alpha)
        low_b, high_b = proportion_ci(successes_b, n_b, 1 - alpha)
        low = effect - math.hypot(p_b - low_b, high_a - p_a)
        high = effect + math.hypot(high_b - p_b, p_a - low_a)
    return TestResult(
        test="two-proportion z-test",
        control=p_a,
        treatment=p_b,
        effect=effect,
        ci_low=low,
        ci_high=high,
        relative_effect=_relative(effect, p_a),
        p_value=p_value,
        n_control=int(n_a),
        n_treatment=int(n_b),
    )


def _floats(values: Sequence[float] | np.ndarray, name: str, minimum: int) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size < minimum:
        raise ValueError(f"{name}: needs at least {minimum} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: values must be finite numbers")
    return array


def welch_ttest(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> TestResult:
    """Compare two means without assuming equal variances (Welch's t-test).

    ``effect = mean(b) - mean(a)``; the interval uses the Welch–Satterthwaite degrees of
    freedom; the p-value is two-sided, from ``scipy.stats.ttest_ind(equal_var=False)``.
    With no variance in either group the difference is certain: p = 1 when the means are
    equal, 0 otherwise.
    """
    x, y = _floats(a, "a", 2), _floats(b, "b", 2)
    mean_a, mean_b = float(x.mean()), float(y.mean())
    effect = mean_b - mean_a
    var_a, var_b = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(var_a + var_b)
    if se > 0:
        p_value = float(_st.ttest_ind(y, x, equal_var=False).pvalue)
        df = (var_a + var_b) ** 2 / (var_a**2 / (x.size - 1) + var_b**2 / (y.size - 1))
        half = float(_st.t.ppf(1 - alpha / 2, df)) * se
    else:
        p_value, half = (1.0 if effect == 0 else 0.0), 0.0
    return TestResult(
        test="Welch t-test",
        control=mean_a,
        treatment=mean_b,
        effect=effect,
        ci_low=effect - half,
        ci_high=effect + half,
        relative_effect=_relative(effect, mean_a),
        p_value=p_value,
        n_control=int(x.size),
        n_treatment=int(y.size),
    )


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate ``successes / n``: unlike the Wald interval it stays
    inside [0, 1] and keeps its coverage near 0 — where error rates live."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError("proportion_ci needs 0 <= successes <= n and n >= 1")
    z = float(_st.norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# -- multiple testing -----------------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: adjusted p-values in the input's order, monotone in the
    order of the raw p-values and capped at 1 (as statsmodels' ``multipletests(method='holm')``).

    Reject hypothesis i at family-wise error rate alpha when ``adjusted[i] < alpha``.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return [float(v) for v in adjusted]


# -- bootstrap ------------------------------------------------------------------------------

Statistic = str | Callable[..., np.ndarray]


def _resample_statistics(
    values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], resamples: int, seed: int
) -> np.ndarray:
    """``statistic`` (2-D rows -> one row of outputs per statistic) on ``resamples`` bootstrap
    resamples; shape (outputs, resamples)."""
    rng = np.random.default_rng(seed)
    n = values.size
    chunk = max(1, min(resamples, _BOOTSTRAP_CHUNK_VALUES // n))
    parts = []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        sample = values[rng.integers(0, n, size=(rows, n))]
        parts.append(np.atleast_2d(statistic(sample)))
    return np.concatenate(parts, axis=1)


def _interval_bounds(confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: must be between 0 and 1")
    tail = (1 - confidence) / 2
    return tail, 1 - tail


def _order_statistic_interval(ordered: np.ndarray, k: int, low: float, high: float) -> tuple[float, float]:
    """The percentile-bootstrap interval of the k-th smallest value (0-based), exactly.

    A resample's k-th smallest value is at most ``ordered[j]`` exactly when at least k + 1
    of its n draws fall at or below position j: a Binomial(n, (j + 1) / n) count. That is the
    bootstrap distribution itself (the limit of infinitely many resamples), in O(n).
    """
    n = ordered.size
    cdf = np.maximum.accumulate(_st.binom.sf(k, n, np.arange(1, n + 1) / n))
    lo = min(int(np.searchsorted(cdf, low)), n - 1)
    hi = min(int(np.searchsorted(cdf, high)), n - 1)
    return float(ordered[lo]), float(ordered[hi])


def bootstrap_quantiles(
    values: Sequence[float] | np.ndarray, quantiles: Sequence[float], confidence: float = 0.95
) -> list[Interval]:
    """Quantiles (0..1) of ``values`` with their percentile-bootstrap intervals.

    The estimate is numpy's default (linear) quantile, at position ``h = (n - 1) q`` between
    two order statistics. The interval is computed from the exact bootstrap distribution of
    those order statistics (see ``_order_statistic_interval``) and interpolated like the
    estimate: no Monte Carlo error and no seed, and fast on a million latencies, where
    resampling would take seconds.
    """
    data = _floats(values, "values", 1)
    ordered = np.sort(data)
    low, high = _interval_bounds(confidence)
    intervals = []
    for q in quantiles:
        if not 0 <= q <= 1:
            raise ValueError(f"quantile {q}: must be between 0 and 1")
        estimate = float(np.quantile(ordered, q))
        position = (ordered.size - 1) * q
        below = math.floor(position)
        weight = position - below
        lo, hi = _order_statistic_interval(ordered, below, low, high)
        if weight > 0:
            lo_above, hi_above = _order_statistic_interval(ordered, below + 1, low, high)
            lo, hi = lo + weight * (lo_above - lo), hi + weight * (hi_above - hi)
        intervals.append(Interval(estimate, min(lo, estimate), max(hi, estimate)))
    return intervals


_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = "mean",
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """A statistic of ``values`` with its percentile-bootstrap interval: ``(estimate, lo, hi)``.

    ``statistic`` is ``"mean"``, ``"median"``, a percentile ``"pNN"`` (``"p50"``, ``"p95"``,
    ``"p99.9"``), or a callable ``f(array, axis=...)`` reducing along ``axis`` the way numpy
    reductions do (it is called on a 2-D array of resamples). Resampling is vectorised and
    deterministic for a given ``seed``. Quantiles (median, pNN) need no resampling: their
    bootstrap distribution is known exactly (``bootstrap_quantiles``), so ``resamples`` and
    ``seed`` do not apply to them.
    """
    data = _floats(values, "values", 1)
    if isinstance(statistic, str):
        if statistic == "mean":
            function: Callable[..., np.ndarray] = np.mean
        elif statistic == "median":
            return bootstrap_quantiles(data, [0.5], confidence)[0]
        elif match := _PERCENTILE.match(statistic):
            return bootstrap_quantiles(data, [float(match.group(1)) / 100], confidence)[0]
        else:
            raise ValueError(f"statistic {statistic!r}: use 'mean', 'median', 'pNN' or a function")
    else:
        function = statistic
    estimate = float(function(data[np.newaxis, :], axis=-1)[0])
    if data.size == 1:
        return Interval(estimate, estimate, estimate)
    draws = _resample_statistics(data, lambda s: function(s, axis=-1), resamples, seed)[0]
    low, high = _interval_bounds(confidence)
    lo, hi = np.quantile(draws, [low, high])
    return Interval(estimate, float(lo), float(hi))


# -- paired samples (replay: both variants answer the same rows) ----------------------------


def _booleans(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values).ravel()
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans")
        array = array.astype(bool)
    return array


def mcnemar(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray, alpha: float = 0.05
) -> TestResult:
    """Compare two classifiers' accuracy on the same rows (McNemar's test).

    Only discordant rows count: ``b`` where only a was right, ``c`` where only b was.
    Below 25 discordant rows the p-value is the exact binomial test (``2 P(X <= min(b, c))``,
    X ~ Bin(b + c, 1/2), capped at 1); from 25 on, chi-square with continuity correction
    ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom. Both match statsmodels'
    ``mcnemar`` (exact=True / exact=False, correction=True).

    ``effect = accuracy_b - accuracy_a = (c - b) / n`` (positive: the treatment is more
    accurate) with a Wald interval for paired proportions.
    """
    a, b_ = _booleans(correct_a, "correct_a"), _booleans(correct_b, "correct_b")
    if a.size != b_.size:
        raise ValueError(f"paired samples differ in length: {a.size} and {b_.size}")
    n = a.size
    if n == 0:
        raise ValueError("mcnemar needs at least one pair")
    only_a = int(np.count_nonzero(a & ~b_))
    only_b = int(np.count_nonzero(~a & b_))
    discordant = only_a + only_b
    if discordant == 0:
        name, p_value = "McNemar exact", 1.0
    elif discordant < MCNEMAR_EXACT_BELOW:
        name = "McNemar exact"
        p_value = min(1.0, float(2 * _st.binom.cdf(min(only_a, only_b), discordant, 0.5)))
    else:
        name = "McNemar chi-square"
        statistic = max(abs(only_a - only_b) - 1, 0) ** 2 / discordant
        p_value = float(_st.chi2.sf(statistic, 1))
    accuracy_a, accuracy_b = float(a.mean()), float(b_.mean())
    effect = (only_b - only_a) / n
    se = math.sqrt(max(discordant / n - effect**2, 0.0) / n)
    half = float(_st.norm.ppf(1 - alpha / 2)) * se
    return TestResult(
        test=name,
        control=accuracy_a,
        treatment=accuracy_b,
        effect=effect,
        ci_low=effect - half,
        ci_high=effect + half,
        relative_effect=_relative(effect, accuracy_a),
        p_value=p_value,
        n_control=n,
        n_treatment=n,
    )


def _paired(
    err_a: Sequence[float] | np.ndarray, err_b: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x, y = _floats(err_a, "err_a", 2), _floats(err_b, "err_b", 2)
    if x.size != y.size:
        raise ValueError(f"paired samples differ in length: {x.size} and {y.size}")
    return x, y


def paired_ttest(
    err_a: Sequence[float] | np.ndarray, err_b: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> TestResult:
    """Compare per-row absolute errors of a (control) and b (treatment) on the same rows.

    ``effect = mean(err_b - err_a)``: **negative means the treatment errs less** (better).
    t interval on n - 1 degrees of freedom; two-sided p from ``scipy.stats.ttest_rel``.
    When every difference is the same the difference is certain: p = 1 if it is 0, else 0.
    """
    x, y = _paired(err_a, err_b)
    d = y - x
    effect = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    if se > 0:
        p_value = float(_st.ttest_rel(y, x).pvalue)
        half = float(_st.t.ppf(1 - alpha / 2, d.size - 1)) * se
    else:
        p_value, half = (1.0 if effect == 0 else 0.0), 0.0
    control, treatment = float(x.mean()), float(y.mean())
    return TestResult(
        test="paired t-test",
        control=control,
        treatment=treatment,
        effect=effect,
        ci_low=effect - half,
        ci_high=effect + half,
        relative_effect=_relative(effect, control),
        p_value=p_value,
        n_control=int(x.size),
        n_treatment=int(y.size),
    )


def wilcoxon(
    err_a: Sequence[float] | np.ndarray, err_b: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> TestResult:
    """Wilcoxon signed-rank test on per-row absolute errors (robust to a few huge errors).

    ``effect`` is the median of the paired differences ``err_b - err_a``: **negative means
    the treatment errs less**. Its interval is the percentile bootstrap of that median. ``control``
    and ``treatment`` are the median errors. The p-value is two-sided, from
    ``scipy.stats.wilcoxon`` (zero differences dropped, as its default); p = 1 when every
    difference is 0.
    """
    x, y = _paired(err_a, err_b)
    d = y - x
    p_value = 1.0 if not np.any(d) else float(_st.wilcoxon(y, x).pvalue)
    effect, low, high = bootstrap_ci(d, "median", confidence=1 - alpha)
    control = float(np.median(x))
    return TestResult(
        test="Wilcoxon signed-rank",
        control=control,
        treatment=float(np.median(y)),
        effect=effect,
        ci_low=low,
        ci_high=high,
        relative_effect=_relative(effect, control),
        p_value=p_value,
        n_control=int(x.size),
        n_treatment=int(y.size),
    )
