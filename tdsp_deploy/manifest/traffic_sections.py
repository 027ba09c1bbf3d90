"""The manifest's ``rollout`` and ``ab`` sections: how traffic moves to a new deployment (at
once, or in steps watched by guardrails) and how an A/B experiment between two is judged."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from tdsp_deploy.manifest.fields import DEPLOYMENT_NAME, Strict

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def _seconds(value: Any) -> Any:
    """``10m``, ``1h30m``, ``45s`` or a number of seconds -> seconds (a float)."""
    if isinstance(value, bool):
        return value  # refused by the float check, with pydantic's own message
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match and any(match.groups()):
            hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            return hours * 3600 + minutes * 60 + seconds
        raise ValueError(f"'{value}' is not a duration: write e.g. 30s, 10m, 1h30m, or a number of seconds")
    return value


Duration = Annotated[
    float,
    BeforeValidator(_seconds),
    Field(gt=0, le=7 * 24 * 3600),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?h)?\s*(\d+(\.\d+)?m)?\s*(\d+(\.\d+)?s)?\s*$"},
            ]
        }
    ),
]


class RolloutStep(Strict):
    traffic: int = Field(ge=1, le=100, description="% of live traffic for the new deployment at this step.")
    bake: Duration | None = Field(
        default=None,
        description="How long the step is watched before it may pass (e.g. 10m, 30s); the last step "
        "(100%) takes none.",
    )


class RolloutGuardrails(Strict):
    """What a staged rollout watches at each step. Limits on the new deployment alone, and
    relative to the control (the deployment it replaces), judged with always-valid sequential
    statistics: checked every ``check_every``, a false rollback stays below ``alpha``."""

    max_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="The new deployment's error rate (status >= 500) limit."
    )
    max_p95_ms: float | None = Field(
        default=None, gt=0, description="The new deployment's p95 latency limit."
    )
    max_p99_ms: float | None = Field(
        default=None, gt=0, description="The new deployment's p99 latency limit."
    )
    max_error_rate_increase: float | None = Field(
        default=None, ge=0, le=1, description="Largest tolerated rise of the error rate over the control's."
    )
    max_p95_increase_ms: float | None = Field(
        default=None, ge=0, description="Largest tolerated rise of p95 latency over the control's."
    )
    max_p99_increase_ms: float | None = Field(
        default=None, ge=0, description="Largest tolerated rise of p99 latency over the control's."
    )
    max_mirror_disagreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Largest tolerated share of mirrored requests whose answer differs from the live one "
        "(steps with mirror).",
    )
    min_requests: int = Field(
        default=200,
        ge=1,
        le=100_000_000,
        description="Requests the new deployment must answer at a step before the step can pass.",
    )
    max_bake: Duration | None = Field(
        default=None,
        description="Longest a step waits for min_requests before the rollout stops (exit 8, the split "
        "left as it is); default: three times the step's bake, at least 10 minutes.",
    )
    check_every: Duration = Field(default=10.0, description="Seconds between two looks at the metrics.")
    alpha: float = Field(
        default=0.05, gt=0, lt=0.5, description="Chance of rolling back a deployment that breaches nothing."
    )


class RolloutSection(Strict):
    deployment: str | None = Field(
        default=None, pattern=DEPLOYMENT_NAME, description="Slot name; default: alternate blue/green."
    )
    traffic: int = Field(
        default=100, ge=0, le=100, description="% for the new slot once the smoke test passes."
    )
    mirror: int = Field(
        default=0,
        ge=0,
        le=50,
        description="% of live traffic copied to the new slot (which then takes no live traffic).",
    )
    sticky_header: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$",
        description="Request header whose value keeps a caller on one slot (e.g. x-user-id).",
    )

    steps: list[RolloutStep] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="A staged rollout instead of `traffic`: each step sets the new deployment's share "
        "and bakes while the guardrails are watched; the last step is 100.",
    )
    strategy: Literal["linear"] | None = Field(
        default=None, description="linear: steps of `step` % up to 100, each baking `bake`."
    )
    step: int | None = Field(default=None, ge=1, le=99, description="Step size (%) of the linear strategy.")
    bake: Duration | None = Field(default=None, description="Bake time of each step of the linear strategy.")
    guardrails: RolloutGuardrails | None = Field(
        default=None, description="What each step of a staged rollout watches (default: the defaults)."
    )

    @model_validator(mode="after")
    def _mirror_takes_no_live_traffic(self) -> RolloutSection:
        if self.mirror > 0 and self.traffic > 0:
            raise ValueError("a mirrored deployment takes no live traffic: with mirror > 0, set traffic: 0")
        return self

    @model_validator(mode="after")
    def _staged_rollout_is_whole(self) -> RolloutSection:
        if self.steps is not None and self.strategy is not None:
            raise ValueError("give either steps or strategy: linear, not both")
        if self.strategy == "linear":
            if self.step is None or self.bake is None:
                raise ValueError("strategy: linear needs `step` (%) and `bake` (e.g. step: 20, bake: 10m)")
        elif self.step is not None or self.bake is not None:
            raise ValueError(
                "`step` and `bake` belong to strategy: linear; with steps, give each step its bake"
            )
        staged = self.steps is not None or self.strategy is not None
        if not staged:
            if self.guardrails is not None:
                raise ValueError(
                    "guardrails are watched during a staged rollout: add steps (or strategy: linear)"
                )
            return self
        if "traffic" in self.model_fields_set:
            raise ValueError("give either traffic or steps: the steps set the traffic")
        if self.mirror > 0:
            raise ValueError("a staged rollout moves live traffic: it cannot run with mirror > 0")
        if self.steps is not None:
            shares = [step.traffic for step in self.steps]
            if any(later <= earlier for earlier, later in zip(shares, shares[1:], strict=False)):
                raise ValueError(f"steps must raise the traffic at each step, got {shares}")
            if shares[-1] != 100:
                raise ValueError(f"the last step must take 100% of the traffic, got {shares[-1]}")
            if self.steps[-1].bake is not None:
                raise ValueError("the last step (100%) has no control left to compare with: give it no bake")
            if any(step.bake is None for step in self.steps[:-1]):
                raise ValueError("every step before the last needs a bake (e.g. bake: 10m)")
        return self

    def staged_steps(self) -> list[RolloutStep]:
        """The steps of a staged rollout (linear expanded), or [] when traffic moves at once."""
        if self.steps is not None:
            return list(self.steps)
        if self.strategy == "linear" and self.step is not None:
            shares = list(range(self.step, 100, self.step))
            return [RolloutStep(traffic=share, bake=self.bake) for share in shares] + [
                RolloutStep(traffic=100)
            ]
        return []


class PrimaryMetric(Strict):
    name: str = Field(default="outcome", min_length=1, description="What the outcomes file measures.")
    type: Literal["binary", "continuous"] | None = Field(
        default=None, description="Default: from the outcomes."
    )
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better"


class Guardrails(Strict):
    max_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="Treatment's error rate limit."
    )
    max_p95_ms: float | None = Field(default=None, gt=0, description="Treatment's p95 latency limit.")
    max_error_rate_increase: float | None = Field(
        default=None, ge=0, le=1, description="Largest tolerated rise of the error rate over control's."
    )


class ABSection(Strict):
    """How an A/B experiment is judged: the metric, the error rates we accept, the effect we
    want to be able to see (which fixes the sample size), and the guardrails."""

    primary_metric: PrimaryMetric = Field(default_factory=PrimaryMetric)
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="False-positive rate.")
    power: float = Field(
        default=0.8, gt=0.5, lt=1, description="Chance of seeing an effect of the minimum size."
    )
    minimum_detectable_effect: float = Field(gt=0, description="Smallest effect worth seeing (absolute).")
    baseline: float | None = Field(
        default=None, gt=0, description="Control's rate (binary metric) or standard deviation (continuous)."
    )
    guardrails: Guardrails = Field(default_factory=Guardrails)
    max_duration_hours: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _rate_is_a_rate(self) -> ABSection:
        if self.primary_metric.type == "binary" and self.baseline is not None and not self.baseline < 1:
            raise ValueError("baseline of a binary metric is a rate between 0 and 1")
        return self
