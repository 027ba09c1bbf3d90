"""What every manifest section is built from: strict models, name patterns, and paths resolved
while validating (relative to the manifest's folder, given in the validation context as
``base_dir``, which they may not leave; absolute paths are taken as they are)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo, WithJsonSchema

from tdsp_deploy.manifest.rules import (  # noqa: F401 (the patterns are named here for the models)
    DEPLOYMENT_NAME,
    ENDPOINT_NAME,
    ENV_VAR_NAME,
    MODEL_NAME,
    as_text,
    keep_name,
    resolve_under,
)


class Strict(BaseModel):
    """Every manifest section refuses unknown keys: a typo must not pass silently."""

    # defer_build: each section's schema is built once, inside the manifest's, when first used
    model_config = ConfigDict(extra="forbid", defer_build=True)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    return resolve_under(value, _base_dir(info))


def _resolve_keeping_name(value: Path, info: ValidationInfo) -> Path:
    return keep_name(value, _base_dir(info))


ManifestPath = Annotated[Path, AfterValidator(resolve_path)]
ModelPath = Annotated[Path, AfterValidator(_resolve_keeping_name)]
# The published schema takes what the loader takes: a number or true/false where text is expected.
Text = Annotated[
    str,
    BeforeValidator(as_text),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]
