"""The manifest schema (v1), as pydantic v2 models.

Paths are resolved while validating: relative paths against the manifest's folder (given in
the validation context as ``base_dir``), and may not escape it; absolute paths are taken as
they are. After validation every path field holds an absolute ``Path`` that exists.

Target schemas are a discriminated union on ``target.kind``. The built-in local target is
defined here; other kinds come from their backends (see ``manifest_class``).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tdsp_deploy.secrets import NO_SECRETS, SecretValues

ENDPOINT_NAME = r"^[a-z](?:[a-z0-9-]{1,30}[a-z0-9])$"  # Azure: 3-32, letter first, no hyphen last
DEPLOYMENT_NAME = r"^[a-z](?:[a-z0-9-]{1,30}[a-z0-9])$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    """Every manifest section refuses unknown keys: a typo must not pass silently."""

    # defer_build: each section's schema is built once, inside the manifest's, when first used
    model_config = ConfigDict(extra="forbid", defer_build=True)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = _base_dir(info).resolve()
    if value.is_absolute():
        resolved = value.resolve()
    else:
        resolved = (base / value).resolve()
        if not resolved.is_relative_to(base):
            raise ValueError(
                f"path '{value}' leaves the manifest's folder {base}; "
                "keep files beside the manifest or give an absolute path"
            )
    _must_exist(value, resolved)
    return resolved


def _resolve_keeping_name(value: Path, info: ValidationInfo) -> Path:
    """Like _resolve, but a symlink keeps the name it is given: Azure ML places a model under
    the name the user wrote (model: path: model -> $AZUREML_MODEL_DIR/model), whatever it
    links to. The checks still apply to where the link leads."""
    _resolve(value, info)
    return Path(os.path.normpath(value if value.is_absolute() else _base_dir(info).resolve() / value))


def _must_exist(value: Path, resolved: Path) -> None:
    # Path.exists() raises OSError for a name too long or a folder we may not enter; pydantic
    # turns only ValueError into a located validation error, so translate here.
    try:
        exists = resolved.exists()
    except OSError as exc:
        raise ValueError(f"'{value}' cannot be read: {exc.strerror or exc}") from None
    if not exists:
        raise ValueError(f"'{value}' does not exist (looked for {resolved})")


def _as_text(value: Any) -> Any:
    # YAML turns `version: 3` into an int; versions and variables are text.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return value


ManifestPath = Annotated[Path, AfterValidator(_resolve)]
ModelPath = Annotated[Path, AfterValidator(_resolve_keeping_name)]
# The published schema takes what the loader takes: a number or true/false where text is expected.
Text = Annotated[
    str,
    BeforeValidator(_as_text),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


class ModelSection(Strict):
    path: ModelPath = Field(description="Model file or folder, relative to the manifest.")
    name: str | None = Field(
        default=None, pattern=MODEL_NAME, description="Registered model name (default: the endpoint name)."
    )
    version: Text | None = Field(
        default=None, min_length=1, max_length=64, description="Default: derived from the content hash."
    )
    flavor: Literal["sklearn", "onnx", "mlflow"] | None = Field(
        default=None,
        description="How tabular targets (SQL Server, Synapse) load the model; mlflow: every target "
        "serves it without a scoring script.",
    )


class ScoringSection(Strict):
    code: ManifestPath | None = Field(
        default=None, description="Folder shipped with the script (default: the script's folder)."
    )
    script: Path = Field(
        description="Entry script with init() and run(raw_data); relative to `code` when given."
    )

    # Field validators rather than one model validator, so that each error is located at the
    # field it concerns (scoring.code or scoring.script) and the manifest line can be shown.
    @field_validator("code")
    @classmethod
    def _code_is_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"must be a folder, got file {value}")
        return value

    @field_validator("script")
    @classmethod
    def _resolve_script(cls, value: Path, info: ValidationInfo) -> Path:
        if "code" not in info.data:
            return value  # scoring.code is wrong and says so; a second error here would be noise
        code: Path | None = info.data["code"]
        if code is None:
            script = _resolve(value, info)
        else:
            script = (code / value).resolve()
            if not script.is_relative_to(code):
                raise ValueError(f"'{value}' leaves the code folder {code}")
            _must_exist(value, script)
        if not script.is_file():
            what = "a folder" if script.is_dir() else "not a regular file"
            raise ValueError(f"must be a file; {script} is {what}")
        return script

    @model_validator(mode="after")
    def _default_code(self) -> ScoringSection:
        if self.code is None:
            self.code = self.script.parent
        return self

    @property
    def script_name(self) -> str:
        """The script's path inside the code folder, as the inference server is given it."""
        assert self.code is not None
        return self.script.relative_to(self.code).as_posix()


def _check_variable_name(key: str) -> str:
    # Checked per key, so that an error points at the line of the bad name.
    if not ENV_VAR_NAME.fullmatch(key):
        raise ValueError(
            "not a valid environment variable name: use letters, digits and '_', not a digit first"
        )
    return key


VariableName = Annotated[str, AfterValidator(_check_variable_name)]


class EnvironmentSection(Strict):
    requirements: ManifestPath | None = Field(default=None, description="pip requirements file.")
    conda_file: ManifestPath | None = Field(default=None, description="conda environment file.")
    image: str | None = Field(default=None, description="Base image (azureml only).")
    variables: dict[VariableName, Text] = Field(
        default_factory=dict, description="Environment variables for the scoring process."
    )
    isolation: Literal["isolated", "shared"] = Field(
        default="isolated",
        description="local target: `isolated` runs each deployment in an environment built from the "
        "requirements or conda file alone (as on Azure ML); `shared` runs it in the CLI's own environment.",
    )
    python: str | None = Field(
        default=None,
        pattern=r"^3\.[0-9]{1,2}(\.[0-9]{1,2})?$",
        description="local target: the Python version of the deployment's environment (default: the conda "
        "file's python pin, else the CLI's own version).",
    )

    @model_validator(mode="after")
    def _one_spec(self) -> EnvironmentSection:
        if self.requirements and self.conda_file:
            raise ValueError("give either requirements or conda_file, not both")
        return self


class LatencyObjective(Strict):
    requests: int = Field(default=200, ge=1, le=1_000_000)
    concurrency: int = Field(default=4, ge=1, le=256)
    warmup: int = Field(default=10, ge=0, le=100_000)
    p95_ms: float | None = Field(
        default=None, gt=0, description="Fail the push when p95 latency exceeds this."
    )
    max_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    rate: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="Requests per second on a fixed schedule, latencies from each request's scheduled "
        "send time (no coordinated omission); absent: a closed loop of `concurrency` callers.",
    )


class SmokeTestSection(Strict):
    request: ManifestPath = Field(description="Sample request body (JSON).")
    expect: ManifestPath | None = Field(default=None, description="Expected response (JSON).")
    tolerance: float = Field(default=1e-6, ge=0)
    latency: LatencyObjective = Field(default_factory=LatencyObjective)


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


class LivenessProbe(Strict):
    """How the local target's supervisor checks that a slot still answers (``GET /``): Azure ML's
    ``liveness_probe`` settings and defaults. After ``failure_threshold`` failed probes in a row
    the slot process is killed and restarted. A slot's worker answers one request at a time, so
    a probe waits behind a long request: keep period x failure_threshold above the longest one."""

    initial_delay: int = Field(
        default=10, ge=1, le=3600, description="Seconds after a slot starts before the first probe."
    )
    period: int = Field(default=10, ge=1, le=3600, description="Seconds between probes.")
    timeout: int = Field(default=2, ge=1, le=3600, description="Seconds a probe waits for its answer.")
    failure_threshold: int = Field(
        default=30, ge=1, le=10_000, description="Failed probes in a row before the slot is restarted."
    )
    success_threshold: int = Field(
        default=1,
        ge=1,
        le=1,
        description="Fixed at 1 for a liveness probe, as on Azure ML: one answer clears the failures.",
    )


class LocalTarget(Strict):
    """The embedded target: inference-server processes behind a router on loopback."""

    kind: Literal["local"] = "local"
    host: str = Field(
        default="127.0.0.1", description="Address the router binds; loopback unless you mean it."
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Router port (default: a free port, kept)."
    )
    workers: int = Field(default=1, ge=1, le=64, description="Inference-server workers per slot.")
    http_server: Literal["granian", "gunicorn"] = Field(
        default="granian",
        description=(
            "HTTP server of each slot's inference-server app: granian (faster) or gunicorn "
            "(the server Azure ML's containers run, for exact parity)."
        ),
    )
    startup_timeout: float = Field(
        default=120, gt=0, le=3600, description="Seconds to wait for a slot to be healthy."
    )
    request_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    max_request_mb: float = Field(default=100, gt=0, le=2048, description="Bodies above this get 413.")
    liveness_probe: LivenessProbe = Field(
        default_factory=LivenessProbe, description="When a slot that stopped answering is restarted."
    )


class ManifestBase(Strict):
    name: str = Field(
        pattern=ENDPOINT_NAME, description="Endpoint name: 3-32 chars, letter first, [a-z0-9-]."
    )
    model: ModelSection
    scoring: ScoringSection | None = Field(
        default=None,
        validate_default=True,
        description="The entry script; required unless model.flavor is mlflow (then one is generated).",
    )
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection)
    smoke_test: SmokeTestSection | None = None
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    ab: ABSection | None = Field(default=None, description="A/B experiment settings (tdsp-deploy ab ...).")
    # Set by the loader: the values taken from the environment, which renders and messages
    # replace by a marker (tdsp_deploy.secrets). Not a field: never validated nor dumped.
    _secret_values: SecretValues = PrivateAttr(default=NO_SECRETS)

    @field_validator("scoring")
    @classmethod
    def _scoring_unless_mlflow(
        cls, value: ScoringSection | None, info: ValidationInfo
    ) -> ScoringSection | None:
        # An MLflow model says how to load and call it (its MLmodel file): no script needed.
        # Reported as pydantic's own "missing", so that it is located at `scoring` like any
        # other required section (when the model section is wrong, its flavor is unknown).
        model = info.data.get("model")
        if value is None and (model is None or model.flavor != "mlflow"):
            raise PydanticCustomError("missing", "required")
        return value

    @property
    def model_name(self) -> str:
        return self.model.name or self.name

    @property
    def secret_values(self) -> SecretValues:
        return self._secret_values

    @secret_values.setter
    def secret_values(self, secrets: SecretValues) -> None:
        self._secret_values = secrets


@functools.lru_cache(maxsize=8)
def manifest_class(targets: tuple[type[BaseModel], ...]) -> type[ManifestBase]:
    """The manifest model whose ``target`` is a union of the given target schemas."""
    if len(targets) == 1:
        target_type: Any = targets[0]
    else:
        target_type = Annotated[Union[targets], Field(discriminator="kind")]  # noqa: UP007
    return create_model(
        "Manifest",
        __base__=ManifestBase,
        target=(target_type, Field(default_factory=LocalTarget)),
    )


def target_kind(target_model: type[BaseModel]) -> str:
    annotation = target_model.model_fields["kind"].annotation
    return annotation.__args__[0]  # type: ignore[union-attr]
