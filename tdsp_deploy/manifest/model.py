"""The manifest schema (v1), as pydantic v2 models.

Target schemas are a discriminated union on ``target.kind``; every kind, the local one too,
comes from its backend and is handed in (see ``manifest_class``). After validation
every path field holds an absolute ``Path`` that exists (fields.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

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
    _base_dir,
)
from tdsp_deploy.manifest.rules import code_folder, script_path, variable_name
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
        return code_folder(value)

    @field_validator("script")
    @classmethod
    def _resolve_script(cls, value: Path, info: ValidationInfo) -> Path:
        if "code" not in info.data:
            return value  # scoring.code is wrong and says so; a second error here would be noise
        return script_path(value, info.data["code"], _base_dir(info))

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


VariableName = Annotated[str, AfterValidator(variable_name)]


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
    """The manifest model whose ``target`` is a union of the given target schemas.

    A manifest without ``target:`` deploys locally: the default is the given schema of kind
    ``local``; without one among ``targets`` the section is required."""
    if len(targets) == 1:
        target_type: Any = targets[0]
    else:
        target_type = Annotated[Union[targets], Field(discriminator="kind")]  # noqa: UP007
    local = next((model for model in targets if _kinds_of(model) == ("local",)), None)
    default = Field() if local is None else Field(default_factory=local)
    return create_model("Manifest", __base__=ManifestBase, target=(target_type, default))


def _kinds_of(target_model: type[BaseModel]) -> tuple[Any, ...]:
    # A plugin's schema may lack a Literal `kind`; such a model is simply not the local one.
    field = target_model.model_fields.get("kind")
    return get_args(field.annotation) if field is not None else ()


def target_kind(target_model: type[BaseModel]) -> str:
    annotation = target_model.model_fields["kind"].annotation
    return annotation.__args__[0]  # type: ignore[union-attr]
