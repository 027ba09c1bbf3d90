"""Analyze an A/B experiment from the router's request log (and the business outcomes).

``analyze(records, experiment, spec, outcomes, now=...)`` returns one JSON-serialisable
document that the CLI prints and tdsp_deploy.ab.report draws: the experiment, per-variant
numbers (requests, errors, latency percentiles with intervals), the sample-size progress,
the metrics with their tests, the guardrails, the traffic over time and a verdict.
This module selects the requests and assembles the document; the per-variant numbers and the
metric tests are in tdsp_deploy.ab.analysis_metrics, the verdict in tdsp_deploy.ab.analysis_verdict.

What counts
    Records with ``started_at <= t <= ended_at`` (no upper bound while the experiment
    runs). Pinned live requests are left out: they bypass the split. In a *split* the
    control and the treatment are measured on their live requests; in a *mirror* the
    control on its live requests and the treatment on its shadow copies, whose agreement
    with the live answer is reported as the metric ``agreement`` (a rate with its Wilson
    interval in ``effect_ci``, no test). An error is a status >= 500; 4xx are the caller's
    mistakes, counted apart as ``client_errors``.

Metrics (in this order)
    1. the primary metric, from the outcomes joined to the measured requests by request id:
       two-proportion z-test when binary (0/1), Welch's t-test when continuous; its type is
       the spec's, else inferred from the outcomes. Absent without outcomes, and absent in a
       mirror: the treatment's answers reached no one there, so every request's outcome
       is the control's doing and cannot compare the two. Judged as tdsp_deploy.ab.decision
       says: an always-valid interval at a tenth of alpha on every look, and the fixed test
       at the rest of alpha on exactly the planned sample. Never Holm-corrected with the
       others: it is the question the experiment was planned for.
    2. ``error_rate`` (two-proportion z-test) and 3. ``latency_ms`` (Welch's t-test on
       per-request latency), both lower-is-better, Holm-corrected between themselves
       (``significant``: the adjusted p-value is below alpha).

Sample size
    ``required`` per variant comes from the spec's baseline and minimum detectable effect,
    at the fixed part of alpha and with the split (decision.required_sample);
    ``required_per_variant`` is the larger of the two; None without a baseline or a metric
    type. ``collected`` counts requests with an outcome per variant (all measured requests
    without outcomes, or in a mirror), and a warning says how many requests of each variant
    have no outcome. ``progress`` is the smaller of the variants' shares of their
    requirement, at most 1.

Verdict, first rule that applies
    1. "roll back": the treatment breached a guardrail, shown by an always-valid bound (at
       alpha shared among the guardrails), never by a point estimate: its error rate above
       ``max_error_rate``, its p95 latency above ``max_p95_ms``, or its error rate above the
       control's by more than ``max_error_rate_increase``.
    2. "inconclusive": no primary metric (no outcomes; a mirror; no outcome matched a
       request of a variant; too few to test) — the guardrails alone cannot promote.
    3. "promote" / "keep control": the always-valid interval of the primary metric lies on
       one side of 0 (at any look, before or after the planned sample).
    4. at the planned sample: "promote" when the fixed test of the planned sample is
       significantly better, else "keep control" (worse, or no effect of at least the
       minimum detectable effect at the planned power). Later looks give the same answer.
    5. "keep control": ``max_duration_hours`` passed first.
    6. "inconclusive": the planned sample is not reached yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from tdsp_deploy.ab import decision, stats
from tdsp_deploy.ab.analysis_metrics import (
    HIGHER,
    LOWER,
    _adjust,
    _agreement,
    _histogram_edges,
    _metric,
    _missing_outcomes,
    _primary_metric,
    _Requests,
    _variant_doc,
)
from tdsp_deploy.ab.analysis_verdict import _Context, _verdict
from tdsp_deploy.ab.outcomes import outcome_type
from tdsp_deploy.errors import UsageError

__all__ = ["analyze"]

# Bucket widths for traffic_over_time: the smallest that keeps the series at most
# MAX_TRAFFIC_BUCKETS long.
_BUCKET_SECONDS = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_TRAFFIC_BUCKETS = 240


def analyze(
    records: Iterable[dict[str, Any]],
    experiment: dict[str, Any],
    spec: dict[str, Any],
    outcomes: dict[str, float] | None = None,
    *,
    now: float,
    units: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The analysis document of ``experiment`` (see the module docstring for the rules).

    ``records`` are the router's request-log lines, ``spec`` the manifest's ``ab`` section as
    a dict, ``outcomes`` request id -> outcome (tdsp_deploy.ab.outcomes.read_outcomes), ``now``
    the current Unix time (for ``max_duration_hours``), ``units`` request id -> unit of
    randomisation (the sticky key's value) when the split assigns units rather than requests.
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
    judged: dict[str, Any] | None = None
    warnings: list[str] = []
    collected = {v.name: v.n for v in variants}
    joined: dict[str, list[float]] = {}
    share = float(experiment.get("share") or 50) / 100 if mode == "split" else 0.5
    planned = decision.required_sample(
        metric_type, spec.get("baseline"), spec.get("minimum_detectable_effect"), alpha, power, share
    )
    if outcomes is not None and mode != "mirror":
        joined = {v.name: [outcomes[i] for i in v.ids if i in outcomes] for v in variants}
        collected = {name: len(values) for name, values in joined.items()}
        warnings += _missing_outcomes(variants, collected)
        if all(joined.values()):
            by_unit = None
            if units is not None:  # a request without a unit stands for itself
                by_unit = tuple(
                    [units.get(i, f"request:{i}") for i in v.ids if i in outcomes] for v in variants
                )
            judged = decision.primary(
                joined[control.name], joined[treatment.name], metric_type, direction, alpha, planned, by_unit
            )
            primary = _primary_metric(
                metric_name, metric_type, direction, joined[control.name], joined[treatment.name], judged
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
    _adjust([m for m in metrics if m is not primary], alpha)
    if mode == "mirror" and treatment.agreed:
        metrics.append(_agreement(treatment.agreed, confidence))

    required = max(planned.values()) if planned else None
    by_variant = {control.name: planned["control"], treatment.name: planned["treatment"]} if planned else None
    progress = min(collected[name] / n for name, n in by_variant.items()) if by_variant else None
    sample_size = {
        "required_per_variant": required,
        "required": by_variant,
        "collected": collected,
        "progress": min(progress, 1.0) if progress is not None else None,
    }
    guardrails = decision.guardrails(
        spec.get("guardrails") or {},
        {"n": control.n, "errors": control.errors, "latencies": control.latencies},
        {"n": treatment.n, "errors": treatment.errors, "latencies": treatment.latencies},
        alpha,
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
        sample_reached=progress is not None and progress >= 1.0,
        duration_passed=max_hours is not None and elapsed_hours >= float(max_hours),
        max_hours=max_hours,
        has_outcomes=outcomes is not None,
        joined=joined,
        judged=judged,
    )
    verdict, reason = _verdict(context, primary, guardrails)

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
        "verdict": {"decision": verdict, "reason": reason},
        "warnings": warnings,
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
