"""The per-variant numbers and the metrics of an A/B analysis (tdsp_deploy.ab.analysis).

``_Requests`` holds the requests one variant is measured on; from them come each variant's
document (counts, latency percentiles with intervals, histogram) and the metrics with their
tests: the primary metric, error rate, p95 latency, the Holm adjustment and, in a mirror,
the agreement rate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from tdsp_deploy.ab import stats

HISTOGRAM_BINS = 40

HIGHER, LOWER = "higher_is_better", "lower_is_better"


@dataclasses.dataclass
class _Requests:
    """The requests one variant is measured on."""

    name: str
    role: str
    ids: list[str] = dataclasses.field(default_factory=list)
    times: list[float] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    agreed: list[bool] = dataclasses.field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        self.ids.append(str(record.get("id")))
        self.times.append(float(record["t"]))
        status = record.get("status")
        self.statuses.append(int(status) if isinstance(status, int | float) else 0)
        latency = record.get("latency_ms")
        if isinstance(latency, int | float) and not isinstance(latency, bool) and math.isfinite(latency):
            self.latencies.append(float(latency))
        if isinstance(record.get("agreed"), bool):
            self.agreed.append(record["agreed"])

    @property
    def n(self) -> int:
        return len(self.statuses)

    @property
    def errors(self) -> int:
        return sum(1 for s in self.statuses if s >= 500)

    @property
    def client_errors(self) -> int:
        return sum(1 for s in self.statuses if 400 <= s < 500)


# -- per variant ------------------------------------------------------------------------------


def _histogram_edges(latencies: list[float]) -> np.ndarray | None:
    """Shared bin edges, so both variants' histograms compare bin by bin; log-spaced when the
    latencies span more than two orders of magnitude (a few slow requests among fast ones)."""
    if not latencies:
        return None
    low, high = min(latencies), max(latencies)
    if low > 0 and high / low > 100:
        return np.geomspace(low, high, HISTOGRAM_BINS + 1)
    return np.histogram_bin_edges(latencies, bins=HISTOGRAM_BINS)


def _variant_doc(requests: _Requests, edges: np.ndarray | None, confidence: float) -> dict[str, Any]:
    n, errors = requests.n, requests.errors
    latency: dict[str, Any] = {
        "p50": None,
        "p50_ci": None,
        "p95": None,
        "p95_ci": None,
        "mean": None,
        "histogram": {"edges": [], "counts": []},
    }
    if requests.latencies:
        p50, p95 = stats.bootstrap_quantiles(requests.latencies, [0.5, 0.95], confidence)
        counts, _ = np.histogram(requests.latencies, bins=edges)  # type: ignore[arg-type]
        latency = {
            "p50": p50.estimate,
            "p50_ci": [p50.low, p50.high],
            "p95": p95.estimate,
            "p95_ci": [p95.low, p95.high],
            "mean": float(np.mean(requests.latencies)),
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},  # type: ignore[union-attr]
        }
    return {
        "role": requests.role,
        "n": n,
        "errors": errors,
        "client_errors": requests.client_errors,
        "error_rate": errors / n if n else None,
        "error_rate_ci": list(stats.proportion_ci(errors, n, confidence)) if n else None,
        "latency_ms": latency,
    }


# -- metrics ----------------------------------------------------------------------------------


def _metric(
    name: str, metric_type: str, direction: str, result: stats.TestResult | None, test: str | None = None
) -> dict[str, Any]:
    if result is None:
        return {
            "name": name,
            "type": metric_type,
            "test": test,
            "control": None,
            "treatment": None,
            "effect": None,
            "effect_ci": None,
            "relative_effect": None,
            "p_value": None,
            "p_adjusted": None,
            "significant": False,
            "direction": direction,
        }
    return {
        "name": name,
        "type": metric_type,
        "test": result.test,
        "control": result.control,
        "treatment": result.treatment,
        "effect": result.effect,
        "effect_ci": [result.ci_low, result.ci_high],
        "relative_effect": result.relative_effect,
        "p_value": result.p_value,
        "p_adjusted": None,
        "significant": False,
        "direction": direction,
    }


def _primary_metric(
    name: str,
    metric_type: str,
    direction: str,
    control: list[float],
    treatment: list[float],
    judged: dict[str, Any],
) -> dict[str, Any]:
    """The primary metric as the report shows it: the fixed-horizon test (of the planned sample
    once it is reached, of everything before), at the fixed part of alpha, so that its interval
    and ``significant`` agree; the always-valid interval beside it. Never Holm-adjusted with
    the guardrail metrics: it is the one question the experiment was planned for."""
    fixed_alpha = judged["alpha_fixed"]
    result = judged["fixed"] or judged["current"]
    if result is None:
        metric = _metric(name, metric_type, direction, None, test="Welch t-test")
        metric.update(control=float(np.mean(control)), treatment=float(np.mean(treatment)))
    else:
        metric = _metric(name, metric_type, direction, result)
        metric["p_adjusted"] = result.p_value
        metric["significant"] = result.p_value < fixed_alpha
    if judged.get("scale") == "log" and result is not None:
        # compared on logs: the effect is a log ratio, shown as the ratio of geometric means
        metric["test"] = f"{result.test} on log values"
        metric["relative_effect"] = math.expm1(result.effect)
    metric["scale"] = judged.get("scale")
    if "units" in judged:
        metric["units"] = judged["units"]
    metric["alpha"] = fixed_alpha
    metric["planned_sample"] = judged["fixed"] is not None
    metric["always_valid_ci"] = judged["always_valid_ci"]
    metric["always_valid_alpha"] = judged["alpha_sequential"]
    control_ci = _rate_ci(control, metric_type, fixed_alpha)
    treatment_ci = _rate_ci(treatment, metric_type, fixed_alpha)
    metric["control_ci"], metric["treatment_ci"] = control_ci, treatment_ci
    return metric


def _rate_ci(values: list[float], metric_type: str, alpha: float) -> list[float] | None:
    """A variant's own interval of the primary metric: Wilson's for a rate, t for a mean."""
    if not values:
        return None
    if metric_type == "binary":
        return list(stats.proportion_ci(int(round(sum(values))), len(values), 1 - alpha))
    if len(values) < 2:
        return None
    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(stats._st.t.ppf(1 - alpha / 2, len(values) - 1)) * sem
    return [mean - half, mean + half]


def _missing_outcomes(variants: tuple[_Requests, _Requests], collected: dict[str, int]) -> list[str]:
    """Requests without an outcome are left out of the primary metric; say so, since outcomes
    missing more on one side than the other bias the comparison."""
    found = []
    for variant in variants:
        missing = variant.n - collected[variant.name]
        if missing > 0:
            found.append(
                f"{missing} of {variant.n} requests to {variant.name} ({missing / variant.n:.1%}) have no"
                " outcome and are left out of the primary metric"
            )
    return found


def _adjust(metrics: list[dict[str, Any]], alpha: float) -> None:
    tested = [m for m in metrics if m["p_value"] is not None]
    for metric, adjusted in zip(tested, stats.holm([m["p_value"] for m in tested]), strict=True):
        metric["p_adjusted"] = adjusted
        metric["significant"] = adjusted < alpha


def _agreement(agreed: list[bool], confidence: float) -> dict[str, Any]:
    """The share of shadow answers equal to the live answer: a rate, not a comparison, so no
    test; the rate stands in ``treatment`` and ``effect``, its interval in ``effect_ci``."""
    rate = sum(agreed) / len(agreed)
    return {
        "name": "agreement",
        "type": "binary",
        "test": None,
        "control": None,
        "treatment": rate,
        "effect": rate,
        "effect_ci": list(stats.proportion_ci(sum(agreed), len(agreed), confidence)),
        "relative_effect": None,
        "p_value": None,
        "p_adjusted": None,
        "significant": False,
        "direction": HIGHER,
    }
