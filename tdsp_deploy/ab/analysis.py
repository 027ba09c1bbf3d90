"""Analyze an A/B experiment from the router's request log (and the business outcomes).

``analyze(records, experiment, spec, outcomes, now=...)`` returns one JSON-serialisable
document that the CLI prints and tdsp_deploy.ab.report draws: the experiment, per-variant
numbers (requests, errors, latency percentiles with intervals), the sample-size progress,
the metrics with their tests, the guardrails, the traffic over time and a verdict.

What counts
    Records with ``started_at <= t <= ended_at`` (no upper bound while the experiment
    runs). Pinned live requests are left out: they bypass the split. In a *split* the
    control and the treatment are measured on their live requests; in a *mirror* the
    control on its live requests and the treatment on its shadow copies, whose agreement
    with the live answer is reported as the metric ``agreement`` (a rate with its Wilson
    interval in ``effect_ci``, no test). An error is a status >= 500; 4xx are the caller's
    mistakes, counted apart as ``client_errors``.

Metrics (in this order; Holm's correction across every metric that has a test)
    1. the primary metric, from the outcomes joined to the measured requests by request id:
       two-proportion z-test when binary (0/1), Welch's t-test when continuous; its type is
       the spec's, else inferred from the outcomes. Absent without outcomes, and absent in a
       mirror: the treatment's answers reached no one there, so every request's outcome
       is the control's doing and cannot compare the two.
    2. ``error_rate`` (two-proportion z-test) and 3. ``latency_ms`` (Welch's t-test on
       per-request latency), both lower-is-better.
    ``significant`` means the Holm-adjusted p-value is below alpha.

Sample size
    ``required_per_variant`` comes from the spec's baseline and minimum detectable effect
    (stats.sample_size_proportions / sample_size_means); None without a baseline or a
    metric type. ``collected`` counts requests with an outcome per variant (all measured
    requests without outcomes, or in a mirror). ``progress`` is the smaller variant's share
    of the requirement, at most 1. The experiment's *horizon* is reached when both variants
    have the required sample size or ``max_duration_hours`` has passed (by ``now``, or by
    ``ended_at`` for an ended experiment).

Verdict, first rule that applies
    1. "roll back": the treatment breached a guardrail: its error rate above
       ``max_error_rate``, its p95 latency above ``max_p95_ms``, or its error rate above the
       control's by more than ``max_error_rate_increase`` with the error-rate difference
       significant (unadjusted p < alpha: a guardrail errs on the side of safety).
    2. "inconclusive": no primary metric (no outcomes; a mirror; no outcome matched a
       request of a variant; too few to test) — the guardrails alone cannot promote.
    3. "keep control": the primary metric is significantly worse for the treatment.
    4. "promote": it is significantly better and the horizon is reached.
    5. "keep control": the horizon is reached without a significant effect — no effect of
       at least the minimum detectable effect at the planned power.
    6. "inconclusive": the horizon is not reached yet (including an early significant
       improvement: stopping at the first significant look inflates false positives).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from tdsp_deploy.ab import stats
from tdsp_deploy.ab.outcomes import outcome_type
from tdsp_deploy.errors import UsageError

__all__ = ["analyze"]

HISTOGRAM_BINS = 40
# Bucket widths for traffic_over_time: the smallest that keeps the series at most
# MAX_TRAFFIC_BUCKETS long.
_BUCKET_SECONDS = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_TRAFFIC_BUCKETS = 240

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


def analyze(
    records: Iterable[dict[str, Any]],
    experiment: dict[str, Any],
    spec: dict[str, Any],
    outcomes: dict[str, float] | None = None,
    *,
    now: float,
) -> dict[str, Any]:
    """The analysis document of ``experiment`` (see the module docstring for the rules).

    ``records`` are the router's request-log lines, ``spec`` the manifest's ``ab`` section as
    a dict, ``outcomes`` request id -> outcome (tdsp_deploy.ab.outcomes.read_outcomes), ``now``
    the current Unix time (for ``max_duration_hours``).
    """
    alpha = float(spec.get("alpha") or 0.05)
    power = float(spec.get("power") or 0.8)
    confidence = 1 - alpha
    mode = experiment.get("mode") or "split"
    control, treatment = _select(records, experiment)
    variants = (control, treatment)

    edges = _histogram_edges(control.latencies + treatment.latencies)
    variant_docs = {v.name: _variant_doc(v, edges, confidence) for v in variants}

    metric_spec = dict(spec.get("primary_metric") or {})
    metric_name = metric_spec.get("name") or "outcome"
    direction = metric_spec.get("direction") or HIGHER
    metric_type = metric_spec.get("type")
    if outcomes and metric_type is None:
        metric_type = outcome_type(outcomes.values())
    if outcomes and metric_type == "binary" and outcome_type(outcomes.values()) != "binary":
        raise UsageError(
            f"the primary metric '{metric_name}' is binary but the outcomes are not all 0/1 (true/false)",
            hint="set ab.primary_metric.type: continuous, or give 0/1 outcomes",
        )

    metrics: list[dict[str, Any]] = []
    primary: dict[str, Any] | None = None
    collected = {v.name: v.n for v in variants}
    joined: dict[str, list[float]] = {}
    if outcomes is not None and mode != "mirror":
        joined = {v.name: [outcomes[i] for i in v.ids if i in outcomes] for v in variants}
        collected = {name: len(values) for name, values in joined.items()}
        if all(joined.values()):
            primary = _primary_metric(
                metric_name, metric_type, direction, joined[control.name], joined[treatment.name], alpha
            )
            metrics.append(primary)
    error_test = None
    if control.n and treatment.n:
        error_test = stats.two_proportion_ztest(
            control.errors, control.n, treatment.errors, treatment.n, alpha
        )
        metrics.append(_metric("error_rate", "binary", LOWER, error_test))
    if len(control.latencies) >= 2 and len(treatment.latencies) >= 2:
        metrics.append(
            _metric(
                "latency_ms",
                "continuous",
                LOWER,
                stats.welch_ttest(control.latencies, treatment.latencies, alpha),
            )
        )
    _adjust(metrics, alpha)
    if mode == "mirror" and treatment.agreed:
        metrics.append(_agreement(treatment.agreed, confidence))

    required = _required(spec, metric_type, alpha, power)
    smallest = min(collected.values())
    sample_size = {
        "required_per_variant": required,
        "collected": collected,
        "progress": min(smallest / required, 1.0) if required else None,
    }
    guardrails = _guardrails(
        spec.get("guardrails") or {}, control, treatment, variant_docs, error_test, alpha
    )

    elapsed_hours = ((experiment.get("ended_at") or now) - float(experiment["started_at"])) / 3600
    max_hours = spec.get("max_duration_hours")
    context = _Context(
        control=control.name,
        treatment=treatment.name,
        mode=mode,
        metric=metric_name,
        direction=direction,
        alpha=alpha,
        power=power,
        mde=spec.get("minimum_detectable_effect"),
        required=required,
        collected=collected,
        sample_reached=bool(required) and smallest >= required,
        duration_passed=max_hours is not None and elapsed_hours >= float(max_hours),
        max_hours=max_hours,
        has_outcomes=outcomes is not None,
        joined=joined,
    )
    decision, reason = _verdict(context, primary, guardrails)

    document = {
        "experiment": {
            key: experiment.get(key)
            for key in ("id", "endpoint", "control", "treatment", "mode", "started_at", "ended_at")
        },
        "spec": spec,
        "variants": variant_docs,
        "sample_size": sample_size,
        "metrics": metrics,
        "guardrails": guardrails,
        "verdict": {"decision": decision, "reason": reason},
        "traffic_over_time": _traffic_over_time(variants, float(experiment["started_at"])),
    }
    return _json_safe(document)


# -- which requests count ---------------------------------------------------------------------


def _select(records: Iterable[dict[str, Any]], experiment: dict[str, Any]) -> tuple[_Requests, _Requests]:
    started = float(experiment["started_at"])
    ended = experiment.get("ended_at")
    control = _Requests(experiment["control"], "control")
    treatment = _Requests(experiment["treatment"], "treatment")
    treatment_kind = "shadow" if experiment.get("mode") == "mirror" else "live"
    for record in records:
        t = record.get("t")
        if not isinstance(t, int | float) or t < started or (ended is not None and t > ended):
            continue
        kind, name = record.get("kind"), record.get("deployment")
        if kind == "live" and record.get("pinned"):
            continue  # pinned by header: chosen by the caller, not by the split
        if name == control.name and kind == "live":
            control.add(record)
        elif name == treatment.name and kind == treatment_kind:
            treatment.add(record)
    return control, treatment


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
    name: str, metric_type: str, direction: str, control: list[float], treatment: list[float], alpha: float
) -> dict[str, Any]:
    if metric_type == "binary":
        result = stats.two_proportion_ztest(
            int(round(sum(control))), len(control), int(round(sum(treatment))), len(treatment), alpha
        )
        return _metric(name, metric_type, direction, result)
    if len(control) >= 2 and len(treatment) >= 2:
        return _metric(name, metric_type, direction, stats.welch_ttest(control, treatment, alpha))
    metric = _metric(name, metric_type, direction, None, test="Welch t-test")
    metric.update(control=float(np.mean(control)), treatment=float(np.mean(treatment)))
    return metric


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


def _required(spec: dict[str, Any], metric_type: str | None, alpha: float, power: float) -> int | None:
    baseline, mde = spec.get("baseline"), spec.get("minimum_detectable_effect")
    if baseline is None or not mde or metric_type is None:
        return None
    if metric_type == "binary":
        return stats.sample_size_proportions(baseline, mde, alpha, power)
    return stats.sample_size_means(baseline, mde, alpha, power)


# -- guardrails -------------------------------------------------------------------------------


def _guardrails(
    limits: dict[str, Any],
    control: _Requests,
    treatment: _Requests,
    docs: dict[str, Any],
    error_test: stats.TestResult | None,
    alpha: float,
) -> list[dict[str, Any]]:
    rate_c, rate_t = docs[control.name]["error_rate"], docs[treatment.name]["error_rate"]
    guardrails = []
    if limits.get("max_error_rate") is not None:
        limit = limits["max_error_rate"]
        guardrails.append(
            {
                "name": "error_rate",
                "limit": limit,
                "control": rate_c,
                "treatment": rate_t,
                "breached": rate_t is not None and rate_t > limit,
            }
        )
    if limits.get("max_p95_ms") is not None:
        limit = limits["max_p95_ms"]
        p95_c, p95_t = docs[control.name]["latency_ms"]["p95"], docs[treatment.name]["latency_ms"]["p95"]
        guardrails.append(
            {
                "name": "p95_ms",
                "limit": limit,
                "control": p95_c,
                "treatment": p95_t,
                "breached": p95_t is not None and p95_t > limit,
            }
        )
    if limits.get("max_error_rate_increase") is not None:
        limit = limits["max_error_rate_increase"]
        breached = error_test is not None and error_test.effect > limit and error_test.p_value < alpha
        guardrails.append(
            {
                "name": "error_rate_increase",
                "limit": limit,
                "control": rate_c,
                "treatment": rate_t,
                "breached": breached,
            }
        )
    return guardrails


# -- verdict ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
    control: str
    treatment: str
    mode: str
    metric: str
    direction: str
    alpha: float
    power: float
    mde: float | None
    required: int | None
    collected: dict[str, int]
    sample_reached: bool
    duration_passed: bool
    max_hours: float | None
    has_outcomes: bool
    joined: dict[str, list[float]]


def _pct(value: float) -> str:
    return f"{value:.2%}".replace(".00%", "%")


def _effect(metric: dict[str, Any]) -> str:
    effect = metric["effect"]
    if metric["type"] == "binary":
        return f"{effect * 100:+.2f} pp"
    return f"{effect:+.4g}"


def _breach(guardrail: dict[str, Any]) -> str:
    name, limit, value = guardrail["name"], guardrail["limit"], guardrail["treatment"]
    if name == "error_rate":
        return f"error rate {_pct(value)} > {_pct(limit)}"
    if name == "p95_ms":
        return f"p95 {value:.4g} ms > {limit:.4g} ms"
    return (
        f"error rate {_pct(value)} is more than {_pct(limit)} above the control's "
        f"{_pct(guardrail['control'])} (significant)"
    )


def _verdict(
    c: _Context, primary: dict[str, Any] | None, guardrails: list[dict[str, Any]]
) -> tuple[str, str]:
    breached = [g for g in guardrails if g["breached"]]
    if breached:
        plural = "guardrail" if len(breached) == 1 else f"{len(breached)} guardrails"
        return "roll back", f"{c.treatment} breached {plural}: {', '.join(_breach(g) for g in breached)}."

    if c.mode == "mirror":
        return "inconclusive", (
            f"in a mirror {c.treatment}'s answers reach no one, so outcomes cannot compare the variants; "
            f"the guardrails hold — run a split experiment to measure {c.metric}."
        )
    if not c.has_outcomes:
        return "inconclusive", "no outcomes given; pass --outcomes"
    if primary is None:
        unmatched = [name for name, values in c.joined.items() if not values]
        return "inconclusive", (
            f"no outcome matched a request of {' or '.join(unmatched)}; check that the outcomes' "
            "request_id values are the request ids in the request log."
        )
    if primary["p_value"] is None:
        return "inconclusive", (
            f"too few requests with outcomes to test {c.metric} "
            f"({c.collected[c.control]} and {c.collected[c.treatment]})."
        )

    better = (primary["effect"] > 0) == (c.direction == HIGHER)
    p = f"p = {primary['p_adjusted']:.3g} after Holm's correction"
    if primary["significant"] and not better:
        return (
            "keep control",
            f"{c.treatment} is significantly worse on {c.metric}: {_effect(primary)} ({p}).",
        )

    horizon = c.sample_reached or c.duration_passed
    smallest = min(c.collected.values())
    progress = f"{smallest} of {c.required} per variant" if c.required else f"{smallest} per variant"
    if primary["significant"] and horizon:
        return "promote", (
            f"{c.treatment} improves {c.metric} by {_effect(primary)} ({p}) with {progress} collected."
        )
    if c.sample_reached:
        return "keep control", (
            f"no effect of at least the minimum detectable effect ({c.mde:g}) on {c.metric} "
            f"at {c.power:.0%} power: {_effect(primary)}, {p}."
        )
    if c.duration_passed:
        return "keep control", (
            f"the maximum duration of {c.max_hours:g} h passed with {progress} collected and no "
            f"significant effect on {c.metric} ({_effect(primary)}, {p})."
        )
    if c.required is None:
        return "inconclusive", (
            "the sample size cannot be planned: set ab.baseline (the control's rate or standard "
            "deviation), or ab.max_duration_hours to end the experiment after a fixed time."
        )
    early = (
        f"{c.treatment} looks better on {c.metric} ({_effect(primary)}, {p}), but stopping before "
        "the planned sample size inflates false positives"
        if primary["significant"]
        else f"no significant effect on {c.metric} yet ({_effect(primary)}, {p})"
    )
    return "inconclusive", f"{progress} collected; {early} — keep the experiment running."


# -- traffic over time ------------------------------------------------------------------------


def _traffic_over_time(variants: tuple[_Requests, _Requests], started_at: float) -> list[dict[str, Any]]:
    times = [t for v in variants for t in v.times]
    if not times:
        return []
    span = max(times) - started_at
    width = next((w for w in _BUCKET_SECONDS if span / w < MAX_TRAFFIC_BUCKETS), None)
    if width is None:  # beyond 240 days: whole days, merged further by the report
        width = 86400 * math.ceil(span / 86400 / MAX_TRAFFIC_BUCKETS)
    first = math.floor(started_at / width) * width
    count = math.floor((max(times) - first) / width) + 1
    buckets = [{"t": first + i * width, **{v.name: 0 for v in variants}} for i in range(count)]
    for v in variants:
        for t in v.times:
            buckets[int((t - first) // width)][v.name] += 1
    return buckets


# -- JSON -------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Plain Python numbers, no NaN or infinity (JSON has none): those become null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value
