"""What every manifest section is built from: strict models, name patterns, and paths resolved
while validating (relative to the manifest's folder, given in the validation context as
``base_dir``, which they may not leave; absolute paths are taken as they are)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo, WithJsonSchema

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


def resolve_path(value: Path, info: ValidationInfo) -> Path:
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
    must_exist(value, resolved)
    return resolved


def _resolve_keeping_name(value: Path, info: ValidationInfo) -> Path:
    """Like resolve_path, but a symlink keeps the name it is given: Azure ML places a model under
    the name the user wrote (model: path: model -> $AZUREML_MODEL_DIR/model), whatever it
    links to. The checks still apply to where the link leads."""
    resolve_path(value, info)
    return Path(os.path.normpath(value if value.is_absolute() else _base_dir(info).resolve() / value))


def must_exist(value: Path, resolved: Path) -> None:
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


ManifestPath = Annotated[Path, AfterValidator(resolve_path)]
ModelPath = Annotated[Path, AfterValidator(_resolve_keeping_name)]
# The published schema takes what the loader takes: a number or true/false where text is expected.
Text = Annotated[
    str,
    BeforeValidator(_as_text),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]
