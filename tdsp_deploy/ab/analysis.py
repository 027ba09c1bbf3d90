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

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from tdsp_deploy.ab import decision, stats
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
    judged: dict[str, Any] | None = None


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
        f"{_pct(guardrail['control'])} (always-valid lower bound of the rise:"
        f" {_pct(guardrail.get('always_valid_lower_bound', 0.0))})"
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

    judged = c.judged or {}
    smallest = min(c.collected.values())
    progress = f"{smallest} of {c.required} per variant" if c.required else f"{smallest} per variant"
    p = f"p = {primary['p_value']:.3g} at alpha {primary['alpha']:.3g}"
    low, high = judged.get("always_valid_ci", [None, None])
    bound = f"always-valid interval [{_effect_value(primary, low)}, {_effect_value(primary, high)}]"
    if judged.get("by") == "always-valid":
        worse = judged["decision"] == "keep control"
        if worse:
            return "keep control", f"{c.treatment} is significantly worse on {c.metric} ({bound})."
        return "promote", f"{c.treatment} improves {c.metric} ({bound}), with {progress} collected."
    if judged.get("by") == "planned sample":
        better = (primary["effect"] > 0) == (c.direction == HIGHER)
        if judged["decision"] == "promote":
            return "promote", (
                f"{c.treatment} improves {c.metric} by {_effect(primary)} ({p}) at the planned sample."
            )
        if primary["significant"] and not better:
            return "keep control", (
                f"{c.treatment} is significantly worse on {c.metric}: {_effect(primary)} ({p})."
            )
        return "keep control", (
            f"no effect of at least the minimum detectable effect ({c.mde:g}) on {c.metric} "
            f"at {c.power:.0%} power: {_effect(primary)}, {p} at the planned sample."
        )
    if c.duration_passed:
        return "keep control", (
            f"the maximum duration of {c.max_hours:g} h passed with {progress} collected and no "
            f"decision on {c.metric} ({_effect(primary)}, {bound})."
        )
    if c.required is None:
        return "inconclusive", (
            "the sample size cannot be planned: set ab.baseline (the control's rate or standard "
            "deviation), or ab.max_duration_hours to end the experiment after a fixed time."
        )
    early = (
        f"{c.treatment} looks better on {c.metric} ({_effect(primary)}, {p}), but not yet by the "
        "always-valid interval, and stopping at the first significant look inflates false positives"
        if primary["significant"]
        else f"no significant effect on {c.metric} yet ({_effect(primary)}, {p})"
    )
    return "inconclusive", f"{progress} collected; {early} — keep the experiment running."


def _effect_value(metric: dict[str, Any], value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:+.2f} pp" if metric["type"] == "binary" else f"{value:+.4g}"


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
