"""The manifest reference in Markdown, generated from the JSON Schema so that it cannot drift.

Every key, type, default, limit and description comes from the pydantic models (through their
JSON Schema); nothing here is written by hand. The repository publishes three generated files,
which a test compares with what the schema generates:

    schema/manifest.schema.json     for editors (yaml-language-server) and other tools
    docs/manifest-reference.md      for people
    tdsp_deploy/manifest/quick_spec.py   the local manifest's models as data (quick_spec_build.py)

Regenerate them after changing the schema or adding a target (built-in targets only, so a
plugin installed on the developer's machine never ends up in them)::

    python -m tdsp_deploy.manifest.reference
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path("schema/manifest.schema.json")
REFERENCE_PATH = Path("docs/manifest-reference.md")
REGENERATE = "python -m tdsp_deploy.manifest.reference"
BUILTIN_MODULE = "tdsp_deploy."


def builtin_target_models() -> tuple[Any, ...]:
    """The target schemas of the targets tdsp-deploy itself registers, in kind order."""
    from tdsp_deploy.errors import PluginError
    from tdsp_deploy.manifest.installed import target_models

    models, failures = target_models(lambda ref: ref.value.startswith(BUILTIN_MODULE))
    if failures:
        raise PluginError("; ".join(failures))
    return models


def published_files(targets: tuple[Any, ...] | None = None) -> dict[Path, str]:
    """What the repository publishes, path (relative to its root) -> exact text."""
    from tdsp_deploy.manifest.model import target_kind
    from tdsp_deploy.manifest.quick_spec_build import QUICK_SPEC_PATH, quick_spec_text
    from tdsp_deploy.manifest.schema import manifest_json_schema

    targets = targets if targets is not None else builtin_target_models()
    schema = manifest_json_schema(targets)
    files = {
        SCHEMA_PATH: json.dumps(schema, indent=2, sort_keys=True) + "\n",
        REFERENCE_PATH: markdown_reference(schema),
    }
    # validate's quick check of a local manifest (manifest/quick.py) reads the local target's
    # models as data: regenerated with the rest, so that it cannot drift from them either.
    local = [model for model in targets if target_kind(model) == "local"]
    if local:
        files[QUICK_SPEC_PATH] = quick_spec_text(local[0])
    return files


# -- rendering --------------------------------------------------------------------------------
def markdown_reference(schema: dict[str, Any]) -> str:
    """The reference for ``schema`` (a manifest JSON Schema): one table per section."""
    renderer = _Renderer(schema.get("$defs", {}))
    lines = [
        "# Manifest reference",
        "",
        "<!-- Generated from the manifest schema; do not edit. Regenerate with:",
        f"     {REGENERATE}  -->",
        "",
        "Every key the manifest accepts, section by section. Unknown keys are errors. Any value",
        "may use `${VAR}` or `${VAR:-default}`; relative paths are read from the manifest's folder.",
        "The same schema, as JSON Schema for editors, is in",
        f"[`{SCHEMA_PATH.as_posix()}`](../{SCHEMA_PATH.as_posix()}) (`tdsp-deploy schema` prints it",
        "for the targets installed).",
        "",
    ]
    lines += renderer.section("Top level", "", schema)
    lines += renderer.sections_below("", schema)
    return "\n".join(lines).rstrip() + "\n"


class _Renderer:
    def __init__(self, defs: dict[str, Any]):
        self.defs = defs

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref:
            return self.resolve(self.defs[ref.rsplit("/", 1)[-1]])
        return node

    def section(
        self, title: str, path: str, node: dict[str, Any], *, level: int = 2, scope: str = ""
    ) -> list[str]:
        node = self.resolve(node)
        out = [f"{'#' * level} {title}", ""]
        if node.get("description") and path:
            out += [_one_line(node["description"]), ""]
        required = set(node.get("required", []))
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, prop in node.get("properties", {}).items():
            link = self.link_for(path, key, prop, scope)
            name = f"[`{key}`](#{_anchor(link)})" if link else f"`{key}`"
            default = "**required**" if key in required else _default(prop)
            description = _description(prop, self.resolve(_non_null(prop)))
            variants = self.variants(prop)
            if variants:
                field, choices = variants
                kinds = ", ".join(f"`{value}`" for value, _ in choices)
                description = f"{description} One of the sections below, by `{field}`: {kinds}.".strip()
            out.append(f"| {name} | {self.type_of(prop)} | {default} | {_cell(description)} |")
        return [*out, ""]

    def sections_below(self, path: str, node: dict[str, Any], scope: str = "") -> Iterator[str]:
        """Sections for each property that is itself a mapping (or a list or union of them).
        ``scope`` names the variant they belong to (a target kind), so that two targets'
        ``target.inputs`` get headings (and links) of their own."""
        node = self.resolve(node)
        for key, prop in node.get("properties", {}).items():
            child = f"{path}.{key}" if path else key
            level = min(2 + child.count("."), 4)
            variants = self.variants(prop)
            if variants:
                field, choices = variants
                for value, variant in choices:
                    title = _variant_title(child, field, value, scope)
                    yield from self.section(title, child, variant, level=level, scope=scope or value)
                    yield from self.sections_below(child, variant, scope or value)
                continue
            inner = self.object_of(prop)
            if inner is not None:
                dotted = f"{child}[]" if self.is_array(prop) else child
                title = f"{dotted} ({scope})" if scope else dotted
                yield from self.section(title, dotted, inner, level=level, scope=scope)
                yield from self.sections_below(dotted, inner, scope)

    def link_for(self, path: str, key: str, prop: dict[str, Any], scope: str = "") -> str | None:
        child = f"{path}.{key}" if path else key
        variants = self.variants(prop)
        if variants:
            field, choices = variants
            return _variant_title(child, field, choices[0][0], scope)
        if self.object_of(prop) is not None:
            dotted = f"{child}[]" if self.is_array(prop) else child
            return f"{dotted} ({scope})" if scope else dotted
        return None

    def variants(self, prop: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]] | None:
        """A union told apart by one key (``target.kind``, ``auth.method``): (key, [(value, schema)])."""
        prop = _non_null(prop)  # an optional union: the union
        options = prop.get("oneOf") or []
        discriminator = prop.get("discriminator", {}).get("propertyName")
        if not discriminator or len(options) < 2:
            return None
        found = []
        for option in options:
            resolved = self.resolve(option)
            tag = resolved.get("properties", {}).get(discriminator, {}).get("const")
            found.append((str(tag), resolved))
        # the kind that may be left out (the default) first
        found.sort(key=lambda choice: (discriminator in choice[1].get("required", []), choice[0]))
        return discriminator, found

    def object_of(self, prop: dict[str, Any]) -> dict[str, Any] | None:
        node = self.resolve(_non_null(prop))
        if node.get("type") == "array":
            node = self.resolve(node.get("items", {}))
        if "anyOf" in node:  # a mapping that may also be written as text (synapse input/output)
            mappings = [self.resolve(o) for o in node["anyOf"] if self.resolve(o).get("properties")]
            node = mappings[0] if len(mappings) == 1 else node
        return node if node.get("properties") else None

    def is_array(self, prop: dict[str, Any]) -> bool:
        return self.resolve(_non_null(prop)).get("type") == "array"

    def type_of(self, prop: dict[str, Any]) -> str:
        options = prop.get("oneOf") or prop.get("anyOf")
        if options:
            kinds = [self.type_of(o) for o in options if o.get("type") != "null"]
            return " or ".join(dict.fromkeys(kinds))
        node = self.resolve(prop)
        if node.get("anyOf"):
            kinds = [self.type_of(o) for o in node["anyOf"] if o.get("type") != "null"]
            return " or ".join(dict.fromkeys(kinds))
        if "const" in node:
            return f"`{json.dumps(node['const'])}`"
        if "enum" in node:
            return " \\| ".join(f"`{value}`" for value in node["enum"])
        kind = node.get("type")
        if node.get("oneOf"):
            return "mapping"
        if kind == "array":
            return f"list of {self.type_of(node.get('items', {}))}"
        if kind == "object" or node.get("properties"):
            values = node.get("additionalProperties")
            if isinstance(values, dict):
                return f"mapping of text to {self.type_of(values)}"
            return "mapping"
        if node.get("format") == "path":
            return "path"
        if isinstance(kind, list) and "string" in kind:
            return "text"  # text that the loader also takes as a number or true/false
        return {"string": "text", "integer": "integer", "number": "number", "boolean": "true/false"}.get(
            str(kind), "any"
        )


def _variant_title(path: str, field: str, value: str, scope: str) -> str:
    return f"{path} ({field}: {value}{', ' + scope if scope else ''})"


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
    return options[0] if len(options) == 1 else prop


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop or prop["default"] is None:
        return "-"
    value = prop["default"]
    if value in ({}, []):
        return "-"
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _description(prop: dict[str, Any], resolved: dict[str, Any]) -> str:
    text = _one_line(prop.get("description") or "")
    limits = _limits(_non_null(prop))
    if limits:
        text = f"{text} ({limits})" if text else limits.capitalize()
    return text


def _limits(node: dict[str, Any]) -> str:
    words = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            words.append(f"{sign} {_number(node[key])}")
    if "maxLength" in node:
        words.append(f"{node.get('minLength', 0)}-{node['maxLength']} characters")
    elif "minLength" in node:
        words.append(f"at least {node['minLength']} character" + ("s" if node["minLength"] != 1 else ""))
    if "minItems" in node:
        words.append(f"at least {node['minItems']}")
    if "pattern" in node:
        words.append(f"pattern `{node['pattern']}`")
    return ", ".join(words)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    # A pipe would end the table cell; a backtick-quoted one too, in most renderers.
    return text.replace("|", "\\|") or "-"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces as '-'."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


# -- regenerating -----------------------------------------------------------------------------
def stale_files(root: Path, files: dict[Path, str] | None = None) -> list[Path]:
    """The published files under ``root`` that differ from what the schema generates."""
    files = files if files is not None else published_files()
    stale = []
    for relative, text in files.items():
        path = root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=REGENERATE, description="Write the manifest's JSON Schema and Markdown reference."
    )
    parser.add_argument("root", nargs="?", default=".", type=Path, help="the repository's root")
    parser.add_argument("--check", action="store_true", help="only say whether they are up to date")
    args = parser.parse_args(argv)
    files = published_files()
    stale = stale_files(args.root, files)
    if args.check:
        for relative in stale:
            print(f"out of date: {relative}", file=sys.stderr)
        return 1 if stale else 0
    for relative in stale:
        path = args.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[relative], encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    if not stale:
        print("up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
