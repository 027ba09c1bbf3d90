"""The manifest's rules that need no pydantic: name patterns, how a path field is resolved and
checked, how a number becomes text. The pydantic models (fields.py, model.py) and the quick
check of ``validate`` (quick.py) both call these, so the two cannot disagree on them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

ENDPOINT_NAME = r"^[a-z](?:[a-z0-9-]{1,30}[a-z0-9])$"  # Azure: 3-32, letter first, no hyphen last
DEPLOYMENT_NAME = r"^[a-z](?:[a-z0-9-]{1,30}[a-z0-9])$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_under(value: Path, base_dir: Path) -> Path:
    """``value`` resolved against the manifest's folder (which it may not leave), or as it is
    when absolute; ValueError when it leaves the folder or does not exist."""
    base = base_dir.resolve()
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


def keep_name(value: Path, base_dir: Path) -> Path:
    """Like resolve_under, but a symlink keeps the name it is given: Azure ML places a model under
    the name the user wrote (model: path: model -> $AZUREML_MODEL_DIR/model), whatever it
    links to. The checks still apply to where the link leads."""
    resolve_under(value, base_dir)
    return Path(os.path.normpath(value if value.is_absolute() else base_dir.resolve() / value))


def must_exist(value: Path, resolved: Path) -> None:
    # Path.exists() raises OSError for a name too long or a folder we may not enter; pydantic
    # turns only ValueError into a located validation error, so translate here.
    try:
        exists = resolved.exists()
    except OSError as exc:
        raise ValueError(f"'{value}' cannot be read: {exc.strerror or exc}") from None
    if not exists:
        raise ValueError(f"'{value}' does not exist (looked for {resolved})")


def code_folder(value: Path | None) -> Path | None:
    """``scoring.code``, which must be a folder."""
    if value is not None and not value.is_dir():
        raise ValueError(f"must be a folder, got file {value}")
    return value


def script_path(value: Path, code: Path | None, base_dir: Path) -> Path:
    """``scoring.script``: relative to ``code`` when given (and inside it), else to the
    manifest's folder; it must be a file."""
    if code is None:
        script = resolve_under(value, base_dir)
    else:
        script = (code / value).resolve()
        if not script.is_relative_to(code):
            raise ValueError(f"'{value}' leaves the code folder {code}")
        must_exist(value, script)
    if not script.is_file():
        what = "a folder" if script.is_dir() else "not a regular file"
        raise ValueError(f"must be a file; {script} is {what}")
    return script


def variable_name(key: str) -> str:
    # Checked per key, so that an error points at the line of the bad name.
    if not ENV_VAR_NAME.fullmatch(key):
        raise ValueError(
            "not a valid environment variable name: use letters, digits and '_', not a digit first"
        )
    return key


def as_text(value: Any) -> Any:
    # YAML turns `version: 3` into an int; versions and variables are text.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return value
