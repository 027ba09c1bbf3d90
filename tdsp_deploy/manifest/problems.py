"""pydantic's validation errors as short, located, lower-case problems that say how to fix them."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from tdsp_deploy.errors import ManifestProblem
from tdsp_deploy.manifest.fields import DEPLOYMENT_NAME, ENDPOINT_NAME, MODEL_NAME
from tdsp_deploy.manifest.model import ManifestBase, target_kind
from tdsp_deploy.manifest.yaml_lines import ABSENT, FieldPath, child, dotted, line_of

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
_PATTERNS = {
    ENDPOINT_NAME: "must be 3-32 characters of a-z, 0-9 and '-', starting with a letter",
    DEPLOYMENT_NAME: "must be 3-32 characters of a-z, 0-9 and '-', starting with a letter",
    MODEL_NAME: "must be 1-255 characters of letters, digits, '_', '.' and '-', not starting with '_.-'",
}
_TYPES = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text (quote it)",
    "path_type": "must be a path (text)",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
}


def validation_problems(
    exc: ValidationError,
    cls: type[ManifestBase],
    raw: dict[str, Any],
    lines: Mapping[FieldPath, int],
    shown: str,
    substituted: set[FieldPath],
    failed: set[FieldPath],
) -> list[ManifestProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        path = _user_path(error["loc"], raw, keep_last=error["type"] == "missing")
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # Reported at the union (`target`); the user's mistake is in its `kind`.
            path += (str((error.get("ctx") or {}).get("discriminator", "kind")).strip("'"),)
        if any(path[: len(bad)] == bad for bad in failed):
            continue  # the interpolation problem already covers it
        secret = any(path[: len(done)] == done for done in substituted)
        message = _message(error, cls, raw, path, show_input=not secret)
        problems.append(ManifestProblem(shown, line_of(path, lines), dotted(path), message))
    return problems


def _user_path(loc: tuple[str | int, ...], raw: Any, *, keep_last: bool) -> FieldPath:
    """pydantic's location as the user wrote it: without union tags (('target', 'local', 'port')
    -> ('target', 'port')) and without the '[key]' marker of a bad mapping key."""
    node, path = raw, []
    for index, element in enumerate(loc):
        found = child(node, element)
        if found is ABSENT and not (keep_last and index == len(loc) - 1):
            continue  # a tag pydantic inserted; the user never wrote it
        # (A missing field is not in the file either, but it is what the user must add.)
        node = found
        path.append(element)
    return tuple(path)


def _message(
    error: Mapping[str, Any], cls: type[ManifestBase], raw: Any, path: FieldPath, *, show_input: bool
) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f", got {_short(value)}" if show_input and _is_scalar(value) else ""
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return _unknown_key(cls, raw, path)
    if kind == "union_tag_invalid" or (kind == "literal_error" and path == ("target", "kind")):
        tag = ctx.get("tag", value) if kind == "union_tag_invalid" else value
        shown_tag = _short(tag) if show_input else "(from a variable)"
        return f"unknown target kind {shown_tag}; one of: {', '.join(_target_kinds(cls))}"
    if kind == "union_tag_not_found":
        return f"'kind' is required; one of: {', '.join(_target_kinds(cls))}"
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {ctx.get(_BOUND_KEYS[kind])}"  # e.g. target.port: must be >= 1
    if kind == "string_pattern_mismatch":
        return _PATTERNS.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}") + got
    if kind == "string_too_short":
        return f"must have at least {ctx.get('min_length')} character(s)"
    if kind == "string_too_long":
        return f"must have at most {ctx.get('max_length')} characters"
    if kind in _TYPES:
        return _TYPES[kind] + got
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return _reword(error["msg"]) + got


def _reword(message: str) -> str:
    message = message.removeprefix("Value error, ").replace("Input should be", "must be")
    return message[:1].lower() + message[1:]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _target_kinds(cls: type[ManifestBase]) -> list[str]:
    return [target_kind(model) for model in _models_in(cls.model_fields["target"].annotation)]


def _unknown_key(cls: type[ManifestBase], raw: Any, path: FieldPath) -> str:
    model = _model_at(cls, raw, path[:-1])
    if model is None:
        return "unknown key"
    allowed = [field.alias or name for name, field in model.model_fields.items()]
    import difflib  # only for a key that is not allowed

    close = difflib.get_close_matches(str(path[-1]), allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key; allowed: {', '.join(allowed)}"


def _model_at(cls: type[BaseModel], raw: Any, path: FieldPath) -> type[BaseModel] | None:
    """The schema class that validates the mapping at ``path`` (or None when it cannot tell)."""
    annotation: Any = cls
    node = raw
    for element in path:
        model = _pick_model(annotation, node)
        if model is not None:
            field = model.model_fields.get(str(element))
            if field is None:
                return None
            annotation = field.annotation
        elif typing.get_origin(annotation) in (list, tuple, Sequence) and isinstance(element, int):
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (dict, Mapping):
            annotation = typing.get_args(annotation)[1]
        else:
            return None
        node = node.get(element) if isinstance(node, dict) else None
    return _pick_model(annotation, node)


def _pick_model(annotation: Any, node: Any) -> type[BaseModel] | None:
    models = _models_in(annotation)
    if len(models) == 1:
        return models[0]
    # A union of targets: the one whose `kind` the user wrote.
    kind = node.get("kind") if isinstance(node, dict) else None
    for model in models:
        if "kind" in model.model_fields and target_kind(model) == kind:
            return model
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if typing.get_origin(annotation) is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [model for member in typing.get_args(annotation) for model in _models_in(member)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []
