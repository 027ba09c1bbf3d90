"""A manifest file read into plain dicts and lists, with the line of every key and list item.

PyYAML composes the node tree; we walk it ourselves so that each field's line is recorded,
duplicate keys are refused (PyYAML would silently merge them), and a value that cannot be
read becomes a located problem instead of stopping the load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tdsp_deploy.errors import ManifestError, ManifestProblem

FieldPath = tuple[str | int, ...]

MAX_BYTES = 5 * 1024 * 1024  # a manifest is a page of YAML; anything this big was the wrong file
MAX_VALUES = 100_000  # aliases can expand exponentially ("billion laughs"); stop well before that

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NULL_TAG = "tag:yaml.org,2002:null"

_FAST_LOADER = getattr(yaml, "CSafeLoader", None)

INIT_HINT = "check the path, or run `tdsp-deploy init` to write a manifest"


def fail(shown: str, message: str, line: int | None = None, hint: str | None = None) -> ManifestError:
    return ManifestError([ManifestProblem(shown, line, None, message)], hint=hint)


def read_text(file: Path, shown: str) -> str:
    try:
        if file.is_dir():
            beside = file / "deploy.yaml"
            hint = f"did you mean {Path(shown) / 'deploy.yaml'}?" if beside.is_file() else INIT_HINT
            raise fail(shown, "is a folder, not a manifest file", hint=hint)
        if file.stat().st_size > MAX_BYTES:
            raise fail(shown, f"is larger than {MAX_BYTES // 2**20} MiB; is this the manifest?")
        data = file.read_bytes()
    except FileNotFoundError:
        raise fail(shown, "no such file", hint=INIT_HINT) from None
    except PermissionError:
        raise fail(shown, "cannot be read: permission denied") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise fail(shown, f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return data.decode("utf-8-sig")  # tolerate the byte-order mark some Windows editors write
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        message = f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the manifest as UTF-8"
        raise fail(shown, message, line=line) from None


class _TooBig(Exception):
    pass


class LinedTree:
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
            raise fail(self.shown, "is empty", line=1, hint=INIT_HINT)
        if not isinstance(root, MappingNode) or root.tag != _MAP_TAG:
            what = "a list" if isinstance(root, SequenceNode) else "a single value"
            raise fail(
                self.shown,
                f"the top level must be a mapping of keys (name, model, scoring, ...), not {what}",
                line=_line(root),
            )
        self.lines[()] = _line(root)
        try:
            raw = self._mapping(root, ())
        except _TooBig:
            raise fail(self.shown, f"expands to more than {MAX_VALUES} values through aliases") from None
        except RecursionError:
            raise fail(self.shown, "is nested too deeply") from None
        # Keys overridden after a merge (`<<`) may have left lines for paths that do not exist.
        self.lines = {path: line for path, line in self.lines.items() if exists(raw, path)}
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
            raise fail(self.shown, message, line) from None
        except yaml.YAMLError as exc:
            raise fail(self.shown, f"invalid YAML: {exc}") from None
        except RecursionError:
            raise fail(self.shown, "invalid YAML: nested too deeply") from None

    def problem(self, path: FieldPath, line: int | None, message: str, *, failed: bool = True) -> None:
        self.problems.append(ManifestProblem(self.shown, line, dotted(path), message))
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
    return fail(shown, message, line=mark.line + 1 if mark else None, hint=hint)


ABSENT = object()


def child(node: Any, element: str | int) -> Any:
    """``node[element]`` for the dicts and lists a manifest is made of, or ``ABSENT``."""
    if isinstance(node, dict):
        return node.get(element, ABSENT)
    if isinstance(node, list) and isinstance(element, int) and 0 <= element < len(node):
        return node[element]
    return ABSENT


def exists(raw: Any, path: FieldPath) -> bool:
    node = raw
    for element in path:
        node = child(node, element)
        if node is ABSENT:
            return False
    return True


def line_of(path: FieldPath, lines: Mapping[FieldPath, int]) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def dotted(path: FieldPath) -> str | None:
    text = ""
    for element in path:
        text += f"[{element}]" if isinstance(element, int) else (f".{element}" if text else str(element))
    return text or None
