"""tdsp_deploy.ab.sequential: the closed forms, the binned latencies' rounding, and by seeded
simulation the property the rollout relies on — checked at every look, the always-valid
tests roll back an A/A canary at most alpha of the time, where the same statistic against a
fixed-sample critical value does it far more often, and real regressions are still caught."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from tdsp_deploy.ab import sequential

ALPHA = 0.05


def _mc(rate: float, runs: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / runs)


def test_radius_is_the_normal_mixture_boundary() -> None:
    rho2 = sequential.tuned_rho2(1000, ALPHA)
    n, s2 = 400.0, 0.25
    x = rho2 * n
    expected = math.sqrt(s2 * (1 + x) / (n * x) * (math.log(1 + x) + 2 * math.log(1 / ALPHA)))
    assert sequential.radius(s2, n, ALPHA, rho2) == pytest.approx(expected, rel=1e-12)
    # wider than the fixed-sample interval at every n, and shrinking as n grows
    assert sequential.radius(s2, n, ALPHA, None) == pytest.approx(
        scipy.stats.norm.ppf(1 - ALPHA / 2) * math.sqrt(s2 / n), rel=1e-12
    )
    widths = sequential.radius(s2, np.array([10, 100, 1000, 10_000]), ALPHA, rho2)
    assert (widths > sequential.radius(s2, np.array([10, 100, 1000, 10_000]), ALPHA, None)).all()
    assert (np.diff(widths) < 0).all()
    assert sequential.radius(s2, 0, ALPHA, rho2) == math.inf


def test_tuning_puts_the_narrowest_point_at_the_planned_n() -> None:
    planned = 2000
    n = 2000.0
    tuned = sequential.tuned_rho2(planned, ALPHA)
    others = [tuned * f for f in (0.25, 0.5, 2, 4)]
    assert all(sequential.radius(1.0, n, ALPHA, tuned) < sequential.radius(1.0, n, ALPHA, r) for r in others)


def test_zero_errors_in_few_requests_is_not_certainty() -> None:
    # a limit of 1% is not shown to hold, nor to be breached, by 50 requests without an error
    assert not sequential.rate_above(0, 50, 0.01, ALPHA, sequential.tuned_rho2(500, ALPHA))
    _, low, high = sequential.difference_of_rates(0, 950, 0, 50, ALPHA, sequential.tuned_rho2(500, ALPHA))
    assert low < 0 < high and high > 0.02
    # a limit of 0 is breached by the first error
    assert sequential.rate_above(1, 10_000, 0.0, ALPHA, 1.0)


def test_binned_latencies_round_in_the_safe_direction() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(math.log(40), 0.4, size=20_000)
    counts = sequential.latency_counts(values)
    assert counts.sum() == len(values)
    bound = sequential.quantile_upper_bound(counts, 0.95, ALPHA, sequential.tuned_rho2(20_000, ALPHA))
    assert bound >= np.quantile(values, 0.95)  # an upper bound, rounded up
    assert bound <= np.quantile(values, 0.96) * 1.02  # and not a loose one at this n
    threshold = 70.0
    assert sequential.slower_than(counts, threshold) <= int((values > threshold).sum())
    assert sequential.slower_than(counts, threshold) >= int((values > threshold * 1.011).sum())


def _error_looks(rng: np.random.Generator, runs: int, looks: int, canary_rate: float, rho2: float | None):
    n_a, n_b = 950, 50  # 100 requests a second, 5% to the canary, a look every 10 s
    errors_a = np.cumsum(rng.binomial(n_a, 0.01, size=(runs, looks)), axis=1)
    errors_b = np.cumsum(rng.binomial(n_b, canary_rate, size=(runs, looks)), axis=1)
    steps = np.arange(1, looks + 1)
    _, low, _ = sequential.difference_of_rates(errors_a, n_a * steps, errors_b, n_b * steps, ALPHA, rho2)
    return low > 0.0


def test_a_a_error_rates_checked_every_10_s_for_an_hour_keep_alpha() -> None:
    runs, looks = 1000, 360
    rho2 = sequential.tuned_rho2(60 * 950 * 50 / 1000, ALPHA)
    ours = _error_looks(np.random.default_rng(20), runs, looks, 0.01, rho2).any(axis=1).mean()
    naive = _error_looks(np.random.default_rng(20), runs, looks, 0.01, None).any(axis=1).mean()
    assert ours <= ALPHA + _mc(ALPHA, runs)
    assert naive > 2 * ALPHA  # the same statistic, peeked at: far above its nominal level


def test_error_rate_regressions_are_caught_within_the_hour() -> None:
    rho2 = sequential.tuned_rho2(60 * 950 * 50 / 1000, ALPHA)
    for canary_rate in (0.03, 0.04):
        breached = _error_looks(np.random.default_rng(7), 300, 360, canary_rate, rho2)
        assert breached.any(axis=1).all()
        median_look = np.median(breached.argmax(axis=1) + 1)
        assert median_look * 10 < 600  # caught, at the median, within 10 minutes


def _latency_first_breach(
    rng: np.random.Generator, runs: int, looks: int, shift_ms: float, rho2: float | None
):
    bins = len(sequential.LATENCY_EDGES_MS) + 1
    control = np.zeros((runs, bins), dtype=np.int64)
    canary = np.zeros((runs, bins), dtype=np.int64)
    offsets = (np.arange(runs) * bins)[:, None]
    first = np.zeros(runs, dtype=int)
    for look in range(1, looks + 1):
        for counts, size, shift in ((control, 950, 0.0), (canary, 50, shift_ms)):
            values = rng.lognormal(math.log(40), 0.35, size=(runs, size)) + shift
            index = np.searchsorted(sequential.LATENCY_EDGES_MS, values) + offsets
            counts += np.bincount(index.ravel(), minlength=runs * bins).reshape(runs, bins)
        breached, _ = sequential.quantile_increase_above(control, canary, 0.95, 10.0, ALPHA, rho2)
        first[(first == 0) & breached] = look
    return first


def test_latency_at_the_guardrail_limit_is_not_rolled_back_and_20_ms_slower_is() -> None:
    rho2 = sequential.tuned_rho2(60 * 50, ALPHA / 2)
    at_limit = _latency_first_breach(np.random.default_rng(5), 60, 120, 10.0, rho2)
    assert (at_limit > 0).mean() <= ALPHA + _mc(ALPHA, 60)
    slower = _latency_first_breach(np.random.default_rng(6), 60, 60, 20.0, rho2)
    assert (slower > 0).all()  # all caught within 10 minutes of 2.5 canary requests a second
