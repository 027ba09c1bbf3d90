"""Percentile-bootstrap intervals of a sample's statistics: exact for quantiles (their
bootstrap distribution is known in closed form), resampled and seeded for anything else."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as _st

# Bootstrap resamples are drawn in chunks of at most this many values, so memory stays
# bounded (~32 MB of indices) however many requests there are.
_BOOTSTRAP_CHUNK_VALUES = 1 << 22


class Interval(NamedTuple):
    """A point estimate with its confidence interval (unpacks as ``estimate, low, high``)."""

    estimate: float
    low: float
    high: float


def finite_floats(values: Sequence[float] | np.ndarray, name: str, minimum: int) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size < minimum:
        raise ValueError(f"{name}: needs at least {minimum} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: values must be finite numbers")
    return array


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
    data = finite_floats(values, "values", 1)
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
    data = finite_floats(values, "values", 1)
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
