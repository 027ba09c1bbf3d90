"""``${VAR}`` and ``${VAR:-default}`` in a manifest's string values, taken from the environment
(``$${`` is a literal ``${``), and the values that must never be shown because they came from it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tdsp_deploy.manifest.yaml_lines import FieldPath, LinedTree, line_of
from tdsp_deploy.secrets import SECRET_SOURCE_KEYS

# `$${` first, so that an escaped reference is never read as one.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def interpolate_tree(
    raw: dict[str, Any], environ: Mapping[str, str], tree: LinedTree, taken: set[str]
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
                    tree.problem(here, line_of(here, tree.lines), message)
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


def secret_sources(raw: Any, environ: Mapping[str, str]) -> set[str]:
    """The values of the environment variables that fields such as ``password_env`` name."""
    found: set[str] = set()
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key in SECRET_SOURCE_KEYS and isinstance(value, str) and environ.get(value):
                found.add(environ[value])
            else:
                found |= secret_sources(value, environ)
    elif isinstance(raw, list):
        for item in raw:
            found |= secret_sources(item, environ)
    return found
