"""A manifest file read (``read_manifest``: parsed with the line of every field, ``${VAR}``
substituted, the secrets it took noted) and, once validated, what points back into it
(``LoadedManifest``). No pydantic here: the loader and the quick check of ``validate`` both
start from the same reading."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.errors import ManifestProblem
from tdsp_deploy.manifest.interpolation import interpolate_tree, secret_sources
from tdsp_deploy.manifest.yaml_lines import FieldPath, LinedTree, dotted, line_of, read_text
from tdsp_deploy.secrets import NO_SECRETS, SecretValues

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase


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
        return line_of(path, self.lines)

    def problem(self, path: FieldPath, message: str) -> ManifestProblem:
        """A problem located at the manifest field ``path`` (e.g. ``("scoring", "script")``)."""
        return ManifestProblem(self.shown_as or str(self.file), self.line_of(path), dotted(path), message)


@dataclasses.dataclass(frozen=True)
class ReadManifest:
    """A manifest file as read, before validation."""

    shown: str  # the path as the user gave it
    file: Path  # absolute
    tree: LinedTree  # the lines of the fields, and the problems found while reading
    raw: dict[str, Any]  # after interpolation, with the local target's kind filled in
    substituted: set[FieldPath]  # fields that took a variable's value
    secrets: SecretValues


def read_manifest(path: str | Path, environ: Mapping[str, str] | None = None) -> ReadManifest:
    """Read the manifest at ``path``; ManifestError when it cannot be read or parsed at all.
    Problems in its values are left in ``tree.problems``: validation still runs, so that one
    report lists everything (values that could not be read are left out of it, see
    ``tree.failed``)."""
    shown = str(path)
    file = Path(path).absolute()
    text = read_text(file, shown)
    tree = LinedTree(shown)
    raw = tree.parse(text)
    environ = os.environ if environ is None else environ
    taken: set[str] = set()
    substituted = interpolate_tree(raw, environ, tree, taken)
    secrets = SecretValues(taken | secret_sources(raw, environ))
    # The local target is the default: `target: {port: 8080}` means a local target on 8080.
    target = raw.get("target")
    if isinstance(target, dict) and "kind" not in target:
        raw["target"] = {"kind": "local", **target}
    return ReadManifest(shown, file, tree, raw, substituted, secrets)
