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
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st

from tdsp_deploy.ab.bootstrap import Interval, bootstrap_ci, bootstrap_quantiles, finite_floats
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

    @classmethod
    def of(
        cls,
        test: str,
        control: float,
        treatment: float,
        effect: float,
        interval: tuple[float, float],
        p_value: float,
        sizes: tuple[int, int],
    ) -> TestResult:
        """The result, its relative effect taken against the control's value."""
        relative = effect / control if control != 0 else None
        low, high = interval
        return cls(
            test, control, treatment, effect, low, high, relative, p_value, int(sizes[0]), int(sizes[1])
        )


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
    return TestResult.of("two-proportion z-test", p_a, p_b, effect, (low, high), p_value, (n_a, n_b))


def welch_ttest(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> TestResult:
    """Compare two means without assuming equal variances (Welch's t-test).

    ``effect = mean(b) - mean(a)``; the interval uses the Welch–Satterthwaite degrees of
    freedom; the p-value is two-sided, from ``scipy.stats.ttest_ind(equal_var=False)``.
    With no variance in either group the difference is certain: p = 1 when the means are
    equal, 0 otherwise.
    """
    x, y = finite_floats(a, "a", 2), finite_floats(b, "b", 2)
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
    interval = (effect - half, effect + half)
    return TestResult.of("Welch t-test", mean_a, mean_b, effect, interval, p_value, (x.size, y.size))


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
    return TestResult.of(
        name, accuracy_a, accuracy_b, effect, (effect - half, effect + half), p_value, (n, n)
    )


def _paired(
    err_a: Sequence[float] | np.ndarray, err_b: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x, y = finite_floats(err_a, "err_a", 2), finite_floats(err_b, "err_b", 2)
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
    interval = (effect - half, effect + half)
    return TestResult.of("paired t-test", control, treatment, effect, interval, p_value, (x.size, y.size))


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
    control, treatment = float(np.median(x)), float(np.median(y))
    return TestResult.of(
        "Wilcoxon signed-rank", control, treatment, effect, (low, high), p_value, (x.size, y.size)
    )
