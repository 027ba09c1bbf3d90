"""A manifest for the local target checked without pydantic, for ``validate``'s common case.

``quick_load`` reads the file as the loader does (the same reading, interpolation and secret
handling: yaml_lines.py, interpolation.py) and then checks the mapping against quick_spec.py,
the pydantic models written out as data. It only ever accepts or declines: it accepts when
every value is of a plain kind whose checks it repeats exactly (a whole number where one is
expected, text matching the same pattern, an existing path resolved by the same functions as
the models', rules.py), and declines (None) at anything else: a problem, an unknown key, a
value pydantic would coerce or refuse, another target kind, an MLflow model, a staged rollout,
a validator it does not know by name and source. A declined manifest goes to the loader, so
every error message and exit code is pydantic's, as before; an accepted one yields the same
values the models would (defaults included), as plain attribute records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tdsp_deploy.manifest import rules
from tdsp_deploy.manifest.loaded import LoadedManifest, read_manifest
from tdsp_deploy.manifest.quick_spec import MANIFEST, MODELS


class Declined(Exception):
    """The quick check does not vouch for this manifest: the loader must validate it."""


# The functions the models run on a field, by name and source digest (quick_spec.py); each
# gets the value and the manifest's folder.
_FIELD_FUNCTIONS: dict[str, Callable[[Any, Path], Any]] = {
    "tdsp_deploy.manifest.rules:as_text#62f2af3d0023": lambda value, base: rules.as_text(value),
    "tdsp_deploy.manifest.fields:resolve_path#3ebc3de9cc79": rules.resolve_under,
    "tdsp_deploy.manifest.fields:_resolve_keeping_name#94952bc9baea": rules.keep_name,
    "tdsp_deploy.manifest.rules:variable_name#0002664cf187": lambda value, base: rules.variable_name(value),
}


def _scoring_unless_mlflow(value: Any, data: dict[str, Any], base: Path) -> Any:
    if value is None:  # required unless the model is MLflow's, which the quick check declines
        raise Declined
    return value


def _resolve_script(value: Path, data: dict[str, Any], base: Path) -> Path:
    return rules.script_path(value, data["code"], base)


# Field validators: (model, name, source digest) -> function(value, fields so far, folder).
_FIELD_VALIDATORS: dict[tuple[str, str, str], Callable[[Any, dict[str, Any], Path], Any]] = {
    ("Manifest", "_scoring_unless_mlflow", "6e02293b7da7"): _scoring_unless_mlflow,
    ("ScoringSection", "_code_is_folder", "da66cf27a926"): lambda value, data, base: rules.code_folder(value),
    ("ScoringSection", "_resolve_script", "893e6d6cac60"): _resolve_script,
}


def _default_code(data: dict[str, Any]) -> None:
    if data["code"] is None:
        data["code"] = data["script"].parent


def _one_spec(data: dict[str, Any]) -> None:
    if data["requirements"] and data["conda_file"]:
        raise Declined


def _mirror_takes_no_live_traffic(data: dict[str, Any]) -> None:
    if data["mirror"] > 0 and data["traffic"] > 0:
        raise Declined


def _not_staged(data: dict[str, Any]) -> None:
    # A staged rollout (and its rules, and the rollout package's warnings) is the loader's.
    if any(data[key] is not None for key in ("steps", "strategy", "step", "bake", "guardrails")):
        raise Declined


def _rate_is_a_rate(data: dict[str, Any]) -> None:
    baseline = data["baseline"]
    if data["primary_metric"].type == "binary" and baseline is not None and not baseline < 1:
        raise Declined


# Model validators ("after"): (model, name, source digest) -> function(the model's fields).
_MODEL_VALIDATORS: dict[tuple[str, str, str], Callable[[dict[str, Any]], None]] = {
    ("ScoringSection", "_default_code", "484c9641cfb1"): _default_code,
    ("EnvironmentSection", "_one_spec", "047a29c274a9"): _one_spec,
    ("RolloutSection", "_mirror_takes_no_live_traffic", "e926eaad0f71"): _mirror_takes_no_live_traffic,
    ("RolloutSection", "_staged_rollout_is_whole", "574bb45b8ebb"): _not_staged,
    ("ABSection", "_rate_is_a_rate", "26131e2561b9"): _rate_is_a_rate,
}

_LARGEST_EXACT_FLOAT = 2**53
_patterns: dict[str, re.Pattern[str]] = {}


def quick_load(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedManifest | None:
    """The manifest at ``path`` for the local target, when the quick check vouches for it (it
    then equals what ``load_manifest`` returns for it, field for field); None otherwise. Raises
    nothing but ManifestError for a file that cannot be read, as the loader does."""
    read = read_manifest(path, environ)
    if read.tree.problems:
        return None
    raw = read.raw
    target = raw.get("target", {"kind": "local"})
    if not isinstance(target, dict) or target.get("kind") != "local":
        return None  # another kind, or one the loader must explain
    model = raw.get("model")
    if isinstance(model, dict) and model.get("flavor") == "mlflow":
        return None  # the loader reads the MLflow model's signature into the manifest
    try:
        manifest = _model(MANIFEST, raw, read.file.parent)
    except (Declined, ValueError, OSError, KeyError):
        return None
    manifest.secret_values = read.secrets
    return LoadedManifest(
        manifest,  # type: ignore[arg-type]
        read.file,
        read.file.parent,
        raw,
        read.tree.lines,
        read.shown,
        read.secrets,
    )


def _model(name: str, value: Any, base: Path) -> SimpleNamespace:
    spec = MODELS[name]
    if type(value) is not dict or spec.get("unsupported") or spec["extra"] != "forbid":
        raise Declined
    fields = spec["fields"]
    if any(key not in fields for key in value):
        raise Declined  # an unknown key: pydantic's message names it
    validators = {
        field: [(key, v["source"]) for key, v in spec["field_validators"].items() if field in v["fields"]]
        for field in fields
    }
    data: dict[str, Any] = {}
    for field, field_spec in fields.items():
        if field in value:
            checked = _value(field_spec, value[field], base)
        elif field_spec["required"]:
            raise Declined
        else:
            checked = _default(field_spec, base)
            if not field_spec.get("validate_default"):
                data[field] = checked
                continue
        for key, source in validators[field]:
            function = _FIELD_VALIDATORS.get((name, key, source))
            if function is None or spec["field_validators"][key]["mode"] != "after":
                raise Declined
            checked = function(checked, data, base)
        data[field] = checked
    for key, validator in spec["model_validators"].items():
        model_function = _MODEL_VALIDATORS.get((name, key, validator["source"]))
        if model_function is None or validator["mode"] != "after":
            raise Declined
        model_function(data)
    return SimpleNamespace(**data)


def _default(spec: dict[str, Any], base: Path) -> Any:
    factory = spec.get("factory")
    if factory is None:
        if "default" not in spec:
            raise Declined
        return spec["default"]
    if factory == "dict":
        return {}
    if factory in MODELS:
        return _model(factory, {}, base)  # what the model's constructor with no arguments makes
    raise Declined


def _value(spec: dict[str, Any], value: Any, base: Path) -> Any:
    if value is None:
        if spec.get("nullable"):
            return None
        raise Declined
    for function in spec.get("before", ()):
        value = _function(function)(value, base)
    kind = spec["type"]
    if kind == "str":
        if type(value) is not str:
            raise Declined
        _text_limits(value, spec.get("constraints", {}))
    elif kind in ("int", "float"):
        value = _number(value, kind, spec.get("constraints", {}))
    elif kind == "path":
        if type(value) is not str or not value or "\x00" in value or spec.get("constraints"):
            raise Declined
        value = Path(value)
    elif kind == "literal":
        if type(value) is not str or value not in spec["choices"]:
            raise Declined
    elif kind == "model":
        value = _model(spec["model"], value, base)
    elif kind == "dict" and type(value) is dict and not spec.get("constraints"):
        value = {
            _value(spec["key"], key, base): _value(spec["value"], item, base) for key, item in value.items()
        }
    else:
        raise Declined  # lists (staged rollout steps) and anything unsupported
    for function in spec.get("after", ()):
        value = _function(function)(value, base)
    return value


def _function(name: str) -> Callable[[Any, Path], Any]:
    function = _FIELD_FUNCTIONS.get(name)
    if function is None:
        raise Declined
    return function


def _text_limits(value: str, constraints: dict[str, Any]) -> None:
    if set(constraints) - {"pattern", "min_length", "max_length"}:
        raise Declined
    if not constraints.get("min_length", 0) <= len(value) <= constraints.get("max_length", len(value)):
        raise Declined
    pattern = constraints.get("pattern")
    if pattern is not None:
        # pydantic matches with Rust's regex, where `$` is the end of the text only; on ASCII
        # text without a line break Python's `re` answers the same for these patterns.
        if not value.isascii() or "\n" in value:
            raise Declined
        compiled = _patterns.get(pattern) or _patterns.setdefault(pattern, re.compile(pattern))
        if compiled.search(value) is None:
            raise Declined


def _number(value: Any, kind: str, constraints: dict[str, Any]) -> int | float:
    if set(constraints) - {"ge", "gt", "le", "lt"}:
        raise Declined
    if kind == "int":
        if type(value) is not int:
            raise Declined  # a bool, or a float pydantic may or may not take as whole
    elif type(value) is int and abs(value) <= _LARGEST_EXACT_FLOAT:
        value = float(value)
    elif type(value) is not float or not math.isfinite(value):
        raise Declined
    bounds = constraints
    if (
        ("ge" in bounds and not value >= bounds["ge"])
        or ("gt" in bounds and not value > bounds["gt"])
        or ("le" in bounds and not value <= bounds["le"])
        or ("lt" in bounds and not value < bounds["lt"])
    ):
        raise Declined
    return value  # type: ignore[no-any-return]
