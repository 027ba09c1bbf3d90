"""Read a manifest file into a validated model, with every problem located at file:line: field.

The file is read with the line of every field (yaml_lines.py), ``${VAR}`` references are
substituted (interpolation.py), and the result is validated with the manifest class for the
installed targets, pydantic's errors becoming located problems (problems.py). Problems found
before validation do not stop it, so that one report lists everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tdsp_deploy.errors import ManifestError, ManifestProblem, PluginError
from tdsp_deploy.manifest.loaded import LoadedManifest, read_manifest
from tdsp_deploy.manifest.model import manifest_class
from tdsp_deploy.manifest.problems import validation_problems
from tdsp_deploy.manifest.yaml_lines import FieldPath
from tdsp_deploy.secrets import NO_SECRETS, SecretValues

__all__ = ["FieldPath", "LoadedManifest", "load_manifest"]

_SCHEMA_HINT = "`tdsp-deploy schema` prints every key the manifest accepts"
_MISSING_FILE = "' does not exist (looked for "  # model.py's message for a path that is not there


TargetSchemas = tuple[type[BaseModel], ...]
TargetModels = TargetSchemas | Callable[[str | None], TargetSchemas]


def load_manifest(
    path: str | Path,
    *,
    targets: TargetModels | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedManifest:
    """Load, interpolate and validate the manifest at ``path``; raise ``ManifestError`` if unusable.

    ``targets`` are the target schemas to validate against, or a function that returns them
    for the target kind the manifest names (None when it does not say plainly), so that a
    caller loads only the schema it needs, from the file as read once. Without them (or when
    none could be loaded) the manifest is validated as a local one. The schema of kind
    ``local`` among them is the default target."""
    read = read_manifest(path, environ)
    shown, file, tree, raw, secrets = read.shown, read.file, read.tree, read.raw, read.secrets
    _columns_from_mlflow_signature(raw, file.parent)
    if callable(targets):
        targets = targets(_target_kind(raw))
    targets = targets or _local_target()
    cls = manifest_class(targets)
    problems = tree.problems
    try:
        manifest = cls.model_validate(raw, context={"base_dir": file.parent})
    except ValidationError as exc:
        problems += validation_problems(exc, cls, raw, tree.lines, shown, read.substituted, tree.failed)
        raise _error(problems, hint=_hint_for(problems, file.parent), secrets=secrets) from None
    except Exception as exc:  # a target schema from a plugin may raise anything: keep the contract
        problems.append(ManifestProblem(shown, None, None, f"could not be validated: {exc!r}"))
        hint = "this is a bug in a target's schema; report it"
        raise _error(problems, hint=hint, secrets=secrets) from exc
    if problems:
        raise _error(problems, secrets=secrets)
    manifest.secret_values = secrets  # for the backends, which get the manifest alone
    return LoadedManifest(manifest, file, file.parent, raw, tree.lines, shown, secrets)


def _hint_for(problems: list[ManifestProblem], base_dir: Path) -> str:
    """Files that are not there need a path fixed, not a list of keys."""
    if problems and all(_MISSING_FILE in p.message for p in problems):
        return (
            f"relative paths are read from the manifest's folder ({base_dir}): fix the path or add the file"
        )
    return _SCHEMA_HINT


def _error(
    problems: list[ManifestProblem], hint: str | None = None, secrets: SecretValues = NO_SECRETS
) -> ManifestError:
    # A message may repeat a value (a path that does not exist, an exception's text) that a
    # variable supplied: it is shown with the marker in its place.
    problems = [ManifestProblem(p.file, p.line, p.field, secrets.text(p.message)) for p in problems]
    unique = {(p.line, p.field, p.message): p for p in problems}
    ordered = sorted(unique.values(), key=lambda p: (p.line or 0, p.field or "", p.message))
    return ManifestError(ordered, hint=hint)


def _local_target() -> TargetSchemas:
    """The installed local target's schema, for a caller that hands none in: such a manifest
    is validated as a local one, as it always was."""
    from tdsp_deploy.manifest.installed import target_models

    models, failures = target_models(lambda ref: ref.name == "local")
    if not models:
        raise PluginError("no target schema could be loaded: " + "; ".join(failures))
    return models


def _target_kind(raw: dict[str, Any]) -> str | None:
    target = raw.get("target", {"kind": "local"})
    kind = target.get("kind") if isinstance(target, dict) else None
    return kind if isinstance(kind, str) else None


def _columns_from_mlflow_signature(raw: dict[str, Any], base_dir: Path) -> None:
    # An MLflow model's signature gives the typed columns tabular targets need (mlflow_model).
    if isinstance(raw.get("model"), dict) and raw["model"].get("flavor") == "mlflow":
        from tdsp_deploy.mlflow_model import fill_columns

        fill_columns(raw, base_dir)
