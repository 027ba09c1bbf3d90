"""A validated manifest and what is needed to point back into its file (no pydantic here: the
quick check of ``validate`` makes one as well as the loader)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.errors import ManifestProblem
from tdsp_deploy.manifest.yaml_lines import FieldPath, dotted, line_of
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
