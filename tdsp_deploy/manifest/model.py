"""The manifest schema (v1), as pydantic v2 models.

Target schemas are a discriminated union on ``target.kind``. The built-in local target is
defined here; other kinds come from their backends (see ``manifest_class``). After validation
every path field holds an absolute ``Path`` that exists (fields.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tdsp_deploy.manifest.fields import (
    DEPLOYMENT_NAME,
    ENDPOINT_NAME,
    ENV_VAR_NAME,
    MODEL_NAME,
    ManifestPath,
    ModelPath,
    Strict,
    Text,
    must_exist,
    resolve_path,
)
from tdsp_deploy.manifest.traffic_sections import (
    ABSection,
    Guardrails,
    PrimaryMetric,
    RolloutGuardrails,
    RolloutSection,
    RolloutStep,
)
from tdsp_deploy.secrets import NO_SECRETS, SecretValues

__all__ = [
    "DEPLOYMENT_NAME",
    "ENDPOINT_NAME",
    "ENV_VAR_NAME",
    "MODEL_NAME",
    "ABSection",
    "EnvironmentSection",
    "Guardrails",
    "LatencyObjective",
    "LivenessProbe",
    "LocalTarget",
    "ManifestBase",
    "ModelSection",
    "PrimaryMetric",
    "RolloutGuardrails",
    "RolloutSection",
    "RolloutStep",
    "ScoringSection",
    "SmokeTestSection",
    "Strict",
    "Text",
    "manifest_class",
    "target_kind",
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
            script = resolve_path(value, info)
        else:
            script = (code / value).resolve()
            if not script.is_relative_to(code):
                raise ValueError(f"'{value}' leaves the code folder {code}")
            must_exist(value, script)
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
