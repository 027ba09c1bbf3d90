"""tdsp_deploy.ab.stats against references (statsmodels, scipy) and against simulation:
an A/A experiment must be a false positive at rate alpha, and an effect of the minimum size
at the planned sample size must be seen with the planned power."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from tdsp_deploy.ab import stats
from tdsp_deploy.errors import UsageError

TOL = 1e-6
SIMULATIONS = 1000
ALPHA, POWER = 0.05, 0.8


# -- against the references ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes_a", "n_a", "successes_b", "n_b"),
    [(120, 1000, 150, 1010), (5, 40, 1, 35), (980, 1000, 990, 1000), (3841, 38410, 4610, 38410)],
)
def test_two_proportion_ztest_matches_statsmodels(
    successes_a: int, n_a: int, successes_b: int, n_b: int
) -> None:
    result = stats.two_proportion_ztest(successes_a, n_a, successes_b, n_b, alpha=0.05)
    _, p_value = proportions_ztest([successes_b, successes_a], [n_b, n_a])  # pooled, b - a
    low, high = confint_proportions_2indep(successes_b, n_b, successes_a, n_a, method="wald", compare="diff")
    assert result.p_value == pytest.approx(p_value, abs=TOL)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=TOL), pytest.approx(high, abs=TOL))
    assert result.effect == pytest.approx(successes_b / n_b - successes_a / n_a)
    assert result.relative_effect == pytest.approx(result.effect / (successes_a / n_a))
    assert (result.n_control, result.n_treatment) == (n_a, n_b)
    assert result.test == "two-proportion z-test"


def test_two_proportion_ztest_without_variation_is_no_evidence() -> None:
    result = stats.two_proportion_ztest(0, 500, 0, 800)
    assert result.p_value == 1.0
    assert result.effect == 0
    # not an interval of width 0: Newcombe's, from the Wilson intervals of 0/500 and 0/800
    wilson_a, wilson_b = stats.proportion_ci(0, 500)[1], stats.proportion_ci(0, 800)[1]
    assert (result.ci_low, result.ci_high) == (pytest.approx(-wilson_a), pytest.approx(wilson_b))
    assert result.ci_low < 0 < result.ci_high
    assert result.relative_effect is None  # relative to a control of 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_ttest_matches_scipy_and_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(10, 2, size=40 * seed)
    b = rng.normal(11, 5, size=25 + 10 * seed)
    result = stats.welch_ttest(a, b, alpha=0.05)
    reference = scipy.stats.ttest_ind(b, a, equal_var=False)
    low, high = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(alpha=0.05, usevar="unequal")
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=TOL), pytest.approx(high, abs=TOL))
    assert result.effect == pytest.approx(b.mean() - a.mean())
    assert result.test == "Welch t-test"


def test_welch_ttest_alpha_sets_the_interval() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 100), rng.normal(0.5, 1, 100)
    wide, narrow = stats.welch_ttest(a, b, alpha=0.01), stats.welch_ttest(a, b, alpha=0.2)
    low, high = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(alpha=0.01, usevar="unequal")
    assert (wide.ci_low, wide.ci_high) == (pytest.approx(low, abs=TOL), pytest.approx(high, abs=TOL))
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high


def test_welch_ttest_without_variance() -> None:
    assert stats.welch_ttest([3, 3, 3], [3, 3]).p_value == 1.0
    certain = stats.welch_ttest([3, 3, 3], [4, 4])
    assert certain.p_value == 0.0 and certain.ci_low == certain.ci_high == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        stats.welch_ttest([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    "p_values",
    [
        [0.01, 0.04, 0.03, 0.005, 0.2],
        [0.5, 0.5, 0.01, 0.9],  # ties
        [0.3, 0.6, 0.8],  # all capped at 1 once multiplied
        [0.001],
    ],
)
def test_holm_matches_statsmodels(p_values: list[float]) -> None:
    _, reference, _, _ = multipletests(p_values, method="holm")
    assert stats.holm(p_values) == pytest.approx(list(reference), abs=TOL)


def test_holm_is_monotone_and_capped() -> None:
    raw = list(np.random.default_rng(0).uniform(0, 0.3, size=30))
    adjusted = stats.holm(raw)
    by_raw = [a for _, a in sorted(zip(raw, adjusted, strict=True))]
    assert by_raw == sorted(by_raw)
    assert all(r <= a <= 1 for r, a in zip(raw, adjusted, strict=True))
    assert stats.holm([]) == []


def _table(correct_a: np.ndarray, correct_b: np.ndarray) -> list[list[int]]:
    return [
        [int(np.sum(correct_a & correct_b)), int(np.sum(correct_a & ~correct_b))],
        [int(np.sum(~correct_a & correct_b)), int(np.sum(~correct_a & ~correct_b))],
    ]


def test_mcnemar_chi_square_matches_statsmodels() -> None:
    rng = np.random.default_rng(4)
    correct_a = rng.random(600) < 0.70
    correct_b = np.where(rng.random(600) < 0.8, correct_a, rng.random(600) < 0.8)
    result = stats.mcnemar(correct_a, correct_b)
    table = _table(correct_a, correct_b)
    assert table[0][1] + table[1][0] >= stats.MCNEMAR_EXACT_BELOW
    assert result.test == "McNemar chi-square"
    assert result.p_value == pytest.approx(sm_mcnemar(table, exact=False, correction=True).pvalue, abs=TOL)
    assert result.effect == pytest.approx(correct_b.mean() - correct_a.mean())
    assert (result.control, result.treatment) == (
        pytest.approx(correct_a.mean()),
        pytest.approx(correct_b.mean()),
    )
    assert result.ci_low < result.effect < result.ci_high


def test_mcnemar_exact_for_few_discordant_rows() -> None:
    correct_a = np.array([True] * 50 + [True] * 2 + [False] * 9 + [False] * 5)
    correct_b = np.array([True] * 50 + [False] * 2 + [True] * 9 + [False] * 5)
    result = stats.mcnemar(correct_a, correct_b)
    assert result.test == "McNemar exact"
    assert result.p_value == pytest.approx(
        sm_mcnemar(_table(correct_a, correct_b), exact=True).pvalue, abs=TOL
    )
    assert result.effect == pytest.approx(7 / 66)
    assert stats.mcnemar([True, False], [True, False]).p_value == 1.0  # no discordant rows


def test_paired_ttest_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    err_a = np.abs(rng.normal(0, 1.0, 300))
    err_b = np.abs(err_a + rng.normal(-0.1, 0.3, 300))
    result = stats.paired_ttest(err_a, err_b)
    reference = scipy.stats.ttest_rel(err_b, err_a)
    interval = reference.confidence_interval(0.95)
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert (result.ci_low, result.ci_high) == (
        pytest.approx(interval.low, abs=TOL),
        pytest.approx(interval.high, abs=TOL),
    )
    assert result.effect == pytest.approx(np.mean(err_b - err_a))
    assert result.effect < 0  # negative: the treatment errs less


def test_wilcoxon_matches_scipy() -> None:
    rng = np.random.default_rng(6)
    err_a = np.abs(rng.standard_t(3, 200))
    err_b = np.abs(err_a * 0.8 + rng.normal(0, 0.2, 200))
    result = stats.wilcoxon(err_a, err_b)
    assert result.p_value == pytest.approx(scipy.stats.wilcoxon(err_b - err_a).pvalue, abs=TOL)
    assert result.effect == pytest.approx(np.median(err_b - err_a))
    assert result.ci_low <= result.effect <= result.ci_high < 0
    assert result.test == "Wilcoxon signed-rank"
    assert stats.wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).p_value == 1.0


def test_paired_samples_must_pair() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="differ in length"):
        stats.mcnemar([True], [True, False])


def test_results_are_frozen() -> None:
    result = stats.two_proportion_ztest(1, 10, 2, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.p_value = 0.0  # type: ignore[misc]


# -- planning --------------------------------------------------------------------------------


def test_sample_size_proportions_matches_the_textbook() -> None:
    # R: power.prop.test(p1 = 0.10, p2 = 0.12, power = 0.8) -> n = 3840.65 per group
    assert stats.sample_size_proportions(0.10, 0.02, 0.05, 0.8) == 3841
    one_sided = stats.sample_size_proportions(0.10, 0.02, 0.05, 0.8, two_sided=False)
    assert one_sided < 3841
    assert stats.sample_size_proportions(0.10, 0.01, 0.05, 0.8) > 4 * 3841 * 0.9  # ~1/mde^2


def test_sample_size_means_matches_statsmodels() -> None:
    for sd, mde in [(1.0, 0.2), (12.5, 1.0), (3.0, 2.5)]:
        reference = NormalIndPower().solve_power(effect_size=mde / sd, alpha=0.05, power=0.8, ratio=1.0)
        assert stats.sample_size_means(sd, mde, 0.05, 0.8) == int(np.ceil(reference))
        one_sided = NormalIndPower().solve_power(
            effect_size=mde / sd, alpha=0.05, power=0.8, alternative="larger"
        )
        assert stats.sample_size_means(sd, mde, 0.05, 0.8, two_sided=False) == int(np.ceil(one_sided))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.sample_size_proportions(0.99, 0.02, 0.05, 0.8), "not a rate below 1"),
        (lambda: stats.sample_size_proportions(1.5, 0.02, 0.05, 0.8), "between 0 and 1"),
        (lambda: stats.sample_size_proportions(0.1, 0.0, 0.05, 0.8), "must be > 0"),
        (lambda: stats.sample_size_means(0.0, 1.0, 0.05, 0.8), "standard deviation"),
        (lambda: stats.sample_size_means(1.0, 1.0, 1.5, 0.8), "alpha"),
    ],
)
def test_sample_size_refuses_impossible_plans(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message) as caught:
        call()
    assert caught.value.exit_code == 2


# -- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_with_a_seed() -> None:
    values = np.random.default_rng(7).exponential(20, 500)
    first = stats.bootstrap_ci(values, "mean", seed=3)
    assert stats.bootstrap_ci(values, "mean", seed=3) == first
    assert stats.bootstrap_ci(values, "mean", seed=4) != first
    estimate, low, high = first
    assert estimate == pytest.approx(values.mean())
    assert low < estimate < high


def test_bootstrap_mean_agrees_with_scipy() -> None:
    values = np.random.default_rng(8).lognormal(3, 0.7, 400)
    ours = stats.bootstrap_ci(values, "mean", resamples=20_000)
    reference = scipy.stats.bootstrap(
        (values,), np.mean, method="percentile", n_resamples=20_000, rng=np.random.default_rng(0)
    ).confidence_interval
    assert ours.low == pytest.approx(reference.low, rel=0.01)
    assert ours.high == pytest.approx(reference.high, rel=0.01)


@pytest.mark.parametrize("q", [0.5, 0.95])
def test_exact_quantile_bootstrap_agrees_with_resampling(q: float) -> None:
    values = np.random.default_rng(9).exponential(20, 300)
    exact = stats.bootstrap_ci(values, f"p{int(q * 100)}")
    resampled = stats.bootstrap_ci(values, lambda x, axis: np.quantile(x, q, axis=axis), resamples=40_000)
    assert exact.estimate == pytest.approx(np.quantile(values, q))
    spread = resampled.high - resampled.low
    assert exact.low == pytest.approx(resampled.low, abs=0.05 * spread)
    assert exact.high == pytest.approx(resampled.high, abs=0.05 * spread)


def test_quantile_intervals_cover_the_true_percentile() -> None:
    # exponential(20): p50 = 20 ln 2, p95 = 20 ln 20. The percentile bootstrap of a high
    # quantile of a skewed distribution covers a little less than asked (~93% at n = 500,
    # ~94% at 2000, by 3,000-sample runs): the band allows that, and not much more.
    truth = {0.5: 20 * np.log(2), 0.95: 20 * np.log(20)}
    samples = np.random.default_rng(10).exponential(20, size=(1000, 1000))
    intervals = [stats.bootstrap_quantiles(s, [0.5, 0.95], confidence=0.95) for s in samples]
    for index, q in enumerate((0.5, 0.95)):
        coverage = np.mean([i[index].low <= truth[q] <= i[index].high for i in intervals])
        assert 0.92 <= coverage <= 0.975, (q, coverage)


def test_bootstrap_edge_cases() -> None:
    assert stats.bootstrap_ci([5.0], "p95") == (5.0, 5.0, 5.0)
    assert stats.bootstrap_ci([5.0], "mean") == (5.0, 5.0, 5.0)
    with pytest.raises(ValueError, match="statistic"):
        stats.bootstrap_ci([1.0, 2.0], "p950")
    with pytest.raises(ValueError, match="at least 1"):
        stats.bootstrap_ci([], "mean")


def test_proportion_ci_is_wilson() -> None:
    from statsmodels.stats.proportion import proportion_confint

    for k, n in [(0, 50), (3, 200), (50, 100), (200, 200)]:
        low, high = stats.proportion_ci(k, n, 0.95)
        ref_low, ref_high = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (low, high) == (pytest.approx(ref_low, abs=TOL), pytest.approx(ref_high, abs=TOL))


# -- simulation: false positives at alpha, power at the planned sample size ------------------


def _rejections_proportions(rate_a: float, rate_b: float, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    successes_a = rng.binomial(n, rate_a, SIMULATIONS)
    successes_b = rng.binomial(n, rate_b, SIMULATIONS)
    return float(
        np.mean(
            [
                stats.two_proportion_ztest(int(a), n, int(b), n, ALPHA).p_value < ALPHA
                for a, b in zip(successes_a, successes_b, strict=True)
            ]
        )
    )


def _rejections_means(shift: float, sd: float, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    a = rng.normal(50.0, sd, size=(SIMULATIONS, n))
    b = rng.normal(50.0 + shift, sd, size=(SIMULATIONS, n))
    return float(np.mean([stats.welch_ttest(x, y, ALPHA).p_value < ALPHA for x, y in zip(a, b, strict=True)]))


def test_aa_two_proportion_false_positive_rate_is_alpha() -> None:
    n = stats.sample_size_proportions(0.10, 0.02, ALPHA, POWER)
    rate = _rejections_proportions(0.10, 0.10, n, seed=11)
    assert abs(rate - ALPHA) <= 0.015, rate


def test_aa_welch_false_positive_rate_is_alpha() -> None:
    n = stats.sample_size_means(8.0, 2.0, ALPHA, POWER)
    rate = _rejections_means(0.0, 8.0, n, seed=12)
    assert abs(rate - ALPHA) <= 0.015, rate


def test_two_proportion_power_at_the_planned_sample_size() -> None:
    n = stats.sample_size_proportions(0.10, 0.02, ALPHA, POWER)
    rate = _rejections_proportions(0.10, 0.12, n, seed=13)
    assert abs(rate - POWER) <= 0.05, rate


def test_welch_power_at_the_planned_sample_size() -> None:
    n = stats.sample_size_means(8.0, 2.0, ALPHA, POWER)
    rate = _rejections_means(2.0, 8.0, n, seed=14)
    assert abs(rate - POWER) <= 0.05, rate
