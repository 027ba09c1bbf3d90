"""The verdict of an A/B analysis (tdsp_deploy.ab.analysis) and the sentence that explains it,
from the primary metric, the guardrails and the sample-size progress gathered in ``_Context``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tdsp_deploy.ab.analysis_metrics import HIGHER

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
