"""Read a manifest file into a validated model, with every problem located at file:line: field.

The steps, each of which may only raise ``ManifestError``:

1. read the file (UTF-8) and compose its YAML node tree with PyYAML's SafeLoader;
2. walk the node tree ourselves, building plain dicts and lists while recording the line of
   every key and list item (and refusing duplicate keys, which PyYAML would silently merge);
3. substitute ``${VAR}`` / ``${VAR:-default}`` in string values (``$${`` is a literal ``${``);
4. validate with the manifest class for the installed targets and translate pydantic's errors
   into short, located, lower-case messages that say how to fix them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tdsp_deploy.errors import ManifestError, ManifestProblem
from tdsp_deploy.manifest.model import (
    DEPLOYMENT_NAME,
    ENDPOINT_NAME,
    MODEL_NAME,
    LocalTarget,
    ManifestBase,
    manifest_class,
    target_kind,
)
from tdsp_deploy.secrets import NO_SECRETS, SECRET_SOURCE_KEYS, SecretValues

FieldPath = tuple[str | int, ...]

MAX_BYTES = 5 * 1024 * 1024  # a manifest is a page of YAML; anything this big was the wrong file
MAX_VALUES = 100_000  # aliases can expand exponentially ("billion laughs"); stop well before that

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NULL_TAG = "tag:yaml.org,2002:null"

_FAST_LOADER = getattr(yaml, "CSafeLoader", None)

_INIT_HINT = "check the path, or run `tdsp-deploy init` to write a manifest"
_SCHEMA_HINT = "`tdsp-deploy schema` prints every key the manifest accepts"
_MISSING_FILE = "' does not exist (looked for "  # model.py's message for a path that is not there


@dataclasses.dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest and what is needed to point back into its file."""

    manifest: ManifestBase
    file: Path  # absolute
    base_dir: Path  # relative paths in the manifest are resolved against this folder
    raw: dict[str, Any]  # the mapping that was validated: after interpolation and defaults
    lines: dict[FieldPath, int]  # field path -> 1-based line; () is the top-level mapping
    shown_as: str = ""  # the path as the user gave it, for messages
    # Values taken from the environment (``${VAR}``, ``password_env``): never to be shown.
    secrets: SecretValues = NO_SECRETS

    def line_of(self, path: FieldPath) -> int | None:
        """The line of ``path`` in the file, or of its nearest parent that is written there."""
        return _line_of(path, self.lines)

    def problem(self, path: FieldPath, message: str) -> ManifestProblem:
        """A problem located at the manifest field ``path`` (e.g. ``("scoring", "script")``)."""
        return ManifestProblem(self.shown_as or str(self.file), self.line_of(path), _dotted(path), message)


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
    caller loads only the schema it needs, from the file as read once."""
    shown = str(path)
    file = Path(path).absolute()
    text = _read_text(file, shown)
    tree = _Tree(shown)
    raw = tree.parse(text)
    # Problems found so far do not stop us: validation still runs, so that one report lists
    # everything (values that could not be read are left out of it, see `tree.failed`).
    environ = os.environ if environ is None else environ
    taken: set[str] = set()
    substituted = _interpolate_tree(raw, environ, tree, taken)
    secrets = SecretValues(taken | _secret_sources(raw, environ))
    _default_target_kind(raw)
    _columns_from_mlflow_signature(raw, file.parent)
    if callable(targets):
        targets = targets(_target_kind(raw))
    targets = targets or (LocalTarget,)
    cls = manifest_class(targets)
    problems = tree.problems
    try:
        manifest = cls.model_validate(raw, context={"base_dir": file.parent})
    except ValidationError as exc:
        problems += _validation_problems(exc, cls, raw, tree.lines, shown, substituted, tree.failed)
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
        return f"relative paths are read from the manifest's folder ({base_dir}): fix the path or add the file"
    return _SCHEMA_HINT


def _secret_sources(raw: Any, environ: Mapping[str, str]) -> set[str]:
    """The values of the environment variables that fields such as ``password_env`` name."""
    found: set[str] = set()
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key in SECRET_SOURCE_KEYS and isinstance(value, str) and environ.get(value):
                found.add(environ[value])
            else:
                found |= _secret_sources(value, environ)
    elif isinstance(raw, list):
        for item in raw:
            found |= _secret_sources(item, environ)
    return found


def _error(
    problems: list[ManifestProblem], hint: str | None = None, secrets: SecretValues = NO_SECRETS
) -> ManifestError:
    # A message may repeat a value (a path that does not exist, an exception's text) that a
    # variable supplied: it is shown with the marker in its place.
    problems = [ManifestProblem(p.file, p.line, p.field, secrets.text(p.message)) for p in problems]
    unique = {(p.line, p.field, p.message): p for p in problems}
    ordered = sorted(unique.values(), key=lambda p: (p.line or 0, p.field or "", p.message))
    return ManifestError(ordered, hint=hint)


# --- reading -------------------------------------------------------------------------------


def _fail(shown: str, message: str, line: int | None = None, hint: str | None = None) -> ManifestError:
    return ManifestError([ManifestProblem(shown, line, None, message)], hint=hint)


def _read_text(file: Path, shown: str) -> str:
    try:
        if file.is_dir():
            beside = file / "deploy.yaml"
            hint = f"did you mean {Path(shown) / 'deploy.yaml'}?" if beside.is_file() else _INIT_HINT
            raise _fail(shown, "is a folder, not a manifest file", hint=hint)
        if file.stat().st_size > MAX_BYTES:
            raise _fail(shown, f"is larger than {MAX_BYTES // 2**20} MiB; is this the manifest?")
        data = file.read_bytes()
    except FileNotFoundError:
        raise _fail(shown, "no such file", hint=_INIT_HINT) from None
    except PermissionError:
        raise _fail(shown, "cannot be read: permission denied") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise _fail(shown, f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return data.decode("utf-8-sig")  # tolerate the byte-order mark some Windows editors write
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        message = f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the manifest as UTF-8"
        raise _fail(shown, message, line=line) from None


# --- YAML with lines -----------------------------------------------------------------------


class _TooBig(Exception):
    pass


class _Tree:
    """Builds plain Python values from a YAML node tree and records where each field stands."""

    def __init__(self, shown: str):
        self.shown = shown
        self.lines: dict[FieldPath, int] = {}
        self.problems: list[ManifestProblem] = []
        self.failed: set[FieldPath] = set()  # values that could not be read; validating them is noise
        self._constructor = yaml.constructor.SafeConstructor()
        self._budget = MAX_VALUES
        self._open: set[int] = set()  # nodes being walked: an alias back into one is a cycle

    def parse(self, text: str) -> dict[str, Any]:
        root = self._compose(text)
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):  # "", "---", "~"
            raise _fail(self.shown, "is empty", line=1, hint=_INIT_HINT)
        if not isinstance(root, MappingNode) or root.tag != _MAP_TAG:
            what = "a list" if isinstance(root, SequenceNode) else "a single value"
            raise _fail(
                self.shown,
                f"the top level must be a mapping of keys (name, model, scoring, ...), not {what}",
                line=_line(root),
            )
        self.lines[()] = _line(root)
        try:
            raw = self._mapping(root, ())
        except _TooBig:
            raise _fail(self.shown, f"expands to more than {MAX_VALUES} values through aliases") from None
        except RecursionError:
            raise _fail(self.shown, "is nested too deeply") from None
        # Keys overridden after a merge (`<<`) may have left lines for paths that do not exist.
        self.lines = {path: line for path, line in self.lines.items() if _exists(raw, path)}
        return raw

    def _compose(self, text: str) -> Node | None:
        # libyaml (when PyYAML has it) composes the same tree many times faster; whatever it
        # refuses is composed again in Python, whose error messages are the ones we show. It
        # accepts a tab where Python refuses one (`key:<tab>value`), so a text with a tab
        # goes to Python alone (test_fuzz_manifest checks that both agree on the rest).
        if _FAST_LOADER is not None and "\t" not in text:
            with contextlib.suppress(Exception):
                return yaml.compose(text, Loader=_FAST_LOADER)
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(exc, self.shown) from None
        except yaml.reader.ReaderError as exc:
            line = text[: exc.position].count("\n") + 1
            message = f"invalid YAML: {exc.reason} (character #x{exc.character:04x})"
            raise _fail(self.shown, message, line) from None
        except yaml.YAMLError as exc:
            raise _fail(self.shown, f"invalid YAML: {exc}") from None
        except RecursionError:
            raise _fail(self.shown, "invalid YAML: nested too deeply") from None

    def problem(self, path: FieldPath, line: int | None, message: str, *, failed: bool = True) -> None:
        self.problems.append(ManifestProblem(self.shown, line, _dotted(path), message))
        if failed:
            self.failed.add(path)

    def _value(self, node: Node, path: FieldPath) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise _TooBig
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            # The line of the key that holds the alias, not of the anchored value it points back to.
            self.problem(
                path, self.lines.get(path, _line(node)), "an alias refers to a value that contains it"
            )
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            return self._sequence(node, path)
        finally:
            self._open.discard(id(node))

    def _scalar(self, node: ScalarNode, path: FieldPath) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            return node.value  # no manifest field is a date: `version: 2024-05-01` means the text
        try:
            return self._constructor.construct_object(node, deep=True)
        # PyYAML's scalar constructors raise bare ValueError/KeyError for `!!int abc`, `!!bool x`.
        except (yaml.YAMLError, ValueError, KeyError, TypeError, OverflowError) as exc:
            detail = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else f"not a valid {node.tag}"
            self.problem(path, _line(node), f"invalid value: {detail}")
            return None

    def _mapping(self, node: MappingNode, path: FieldPath) -> dict[str, Any] | None:
        if node.tag != _MAP_TAG:
            self.problem(path, _line(node), f"YAML tag {node.tag} is not supported here; use a plain mapping")
            return None
        result: dict[str, Any] = {}
        merges = [value for key, value in node.value if key.tag == _MERGE_TAG]
        # `<<: [*a, *b]`: keys of earlier sources win, and keys written here win over all.
        for source in reversed(merges):
            self._merge(result, source, path)
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            line = _line(key_node)
            if key in first_line:
                message = f"given twice, on lines {first_line[key]} and {line}; keep one"
                self.problem(path + (key,), line, message, failed=False)  # the first one is validated
                continue
            first_line[key] = line
            self.lines[path + (key,)] = line
            result[key] = self._value(value_node, path + (key,))
        return result

    def _merge(self, result: dict[str, Any], source: Node, path: FieldPath) -> None:
        sources = source.value if isinstance(source, SequenceNode) else [source]
        for item in reversed(sources):
            merged = self._value(item, path) if isinstance(item, MappingNode) else None
            if not isinstance(merged, dict):
                self.problem(path, _line(item), "'<<' takes a mapping or a list of mappings")
                continue
            result.update(merged)

    def _key(self, node: Node, path: FieldPath) -> str | None:
        if not isinstance(node, ScalarNode):
            # The entry is left out; the rest of the mapping is still worth validating.
            self.problem(path, _line(node), "keys must be plain names, not lists or mappings", failed=False)
            return None
        return node.value  # keys are names: `1:` or `yes:` mean the text the user wrote

    def _sequence(self, node: SequenceNode, path: FieldPath) -> list[Any] | None:
        if node.tag != _SEQ_TAG:
            self.problem(path, _line(node), f"YAML tag {node.tag} is not supported here; use a plain list")
            return None
        items = []
        for index, item in enumerate(node.value):
            self.lines[path + (index,)] = _line(item)
            items.append(self._value(item, path + (index,)))
        return items


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _yaml_error(exc: yaml.MarkedYAMLError, shown: str) -> ManifestError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "not YAML"
    where = f" at column {mark.column + 1}" if mark else ""
    message = f"invalid YAML{where}: {problem}"
    if exc.context and exc.context_mark and exc.problem:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    if "\\t" in problem or "\t" in problem:
        message += "; indent with spaces, not tabs"
    hint = "check indentation and quoting: quote a value that holds ': ' or starts with '{', '[', '*' or '&'"
    return _fail(shown, message, line=mark.line + 1 if mark else None, hint=hint)


_ABSENT = object()


def _child(node: Any, element: str | int) -> Any:
    """``node[element]`` for the dicts and lists a manifest is made of, or ``_ABSENT``."""
    if isinstance(node, dict):
        return node.get(element, _ABSENT)
    if isinstance(node, list) and isinstance(element, int) and 0 <= element < len(node):
        return node[element]
    return _ABSENT


def _exists(raw: Any, path: FieldPath) -> bool:
    node = raw
    for element in path:
        node = _child(node, element)
        if node is _ABSENT:
            return False
    return True


def _line_of(path: FieldPath, lines: Mapping[FieldPath, int]) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _dotted(path: FieldPath) -> str | None:
    text = ""
    for element in path:
        text += f"[{element}]" if isinstance(element, int) else (f".{element}" if text else str(element))
    return text or None


# --- ${VAR} interpolation ------------------------------------------------------------------

# `$${` first, so that an escaped reference is never read as one.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def _interpolate_tree(
    raw: dict[str, Any], environ: Mapping[str, str], tree: _Tree, taken: set[str]
) -> set[FieldPath]:
    """Substitute references in place, report bad ones to ``tree``; return the paths that took
    a variable's value (such values may be secrets: messages must not repeat them), and add
    the values taken to ``taken``."""
    substituted: set[FieldPath] = set()

    def visit(container: dict[str, Any] | list[Any], path: FieldPath) -> None:
        keys: Sequence[Any] = list(container) if isinstance(container, dict) else range(len(container))
        for key in keys:
            value, here = container[key], path + (key,)  # type: ignore[index]
            if isinstance(value, (dict, list)):
                visit(value, here)
            elif isinstance(value, str) and "${" in value:
                new, errors, took = _interpolate(value, environ, taken)
                for message in errors:
                    tree.problem(here, _line_of(here, tree.lines), message)
                if not errors:
                    container[key] = new  # type: ignore[index]
                if took:
                    substituted.add(here)

    visit(raw, ())
    return substituted


def _interpolate(text: str, environ: Mapping[str, str], taken: set[str]) -> tuple[str, list[str], bool]:
    """(text with references replaced, problems, whether any variable was substituted); the
    variables' values are added to ``taken``."""
    errors: list[str] = []
    took = False

    def replace(match: re.Match[str]) -> str:
        nonlocal took
        if match.group(0) == "$${":
            return "${"
        body = match.group("body")
        if body is None:
            errors.append("unclosed '${'; write ${NAME}, or $${ for a literal '${'")
            return match.group(0)
        reference = _BODY.fullmatch(body)
        if reference is None:
            errors.append(f"bad reference '${{{body}}}'; write ${{NAME}} or ${{NAME:-default}}")
            return match.group(0)
        name, default = reference.group("name"), reference.group("default")
        value = environ.get(name)
        if default is not None and not value:  # `:-` as in the shell: unset or empty
            return default
        if value is None:
            errors.append(f"undefined variable '{name}'; set it, or give a default: ${{{name}:-value}}")
            return match.group(0)
        took = True
        taken.add(value)
        return value

    return _REFERENCE.sub(replace, text), errors, took


def _target_kind(raw: dict[str, Any]) -> str | None:
    target = raw.get("target", {"kind": "local"})
    kind = target.get("kind") if isinstance(target, dict) else None
    return kind if isinstance(kind, str) else None


def _default_target_kind(raw: dict[str, Any]) -> None:
    # The local target is the default: `target: {port: 8080}` means a local target on 8080.
    target = raw.get("target")
    if isinstance(target, dict) and "kind" not in target:
        raw["target"] = {"kind": "local", **target}


# --- pydantic errors -> located problems ---------------------------------------------------

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


def _columns_from_mlflow_signature(raw: dict[str, Any], base_dir: Path) -> None:
    # An MLflow model's signature gives the typed columns tabular targets need (mlflow_model).
    if isinstance(raw.get("model"), dict) and raw["model"].get("flavor") == "mlflow":
        from tdsp_deploy.mlflow_model import fill_columns

        fill_columns(raw, base_dir)


def _validation_problems(
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
        problems.append(ManifestProblem(shown, _line_of(path, lines), _dotted(path), message))
    return problems


def _user_path(loc: tuple[str | int, ...], raw: Any, *, keep_last: bool) -> FieldPath:
    """pydantic's location as the user wrote it: without union tags (('target', 'local', 'port')
    -> ('target', 'port')) and without the '[key]' marker of a bad mapping key."""
    node, path = raw, []
    for index, element in enumerate(loc):
        child = _child(node, element)
        if child is _ABSENT and not (keep_last and index == len(loc) - 1):
            continue  # a tag pydantic inserted; the user never wrote it
        # (A missing field is not in the file either, but it is what the user must add.)
        node = child
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
        return f"must be {_BOUNDS[kind]} {ctx.get(_BOUND_KEYS[kind])}"  # as DESIGN.md shows it
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
