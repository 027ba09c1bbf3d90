"""`tdsp-deploy init`: a starter project from templates/, ready for `validate` and `push`."""

from __future__ import annotations

import re
from pathlib import Path

from tdsp_deploy.errors import UsageError

PLACEHOLDER = "{{ name }}"
ENDPOINT_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{1,30}[a-z0-9])$")


def endpoint_name_for(directory: Path) -> str:
    """A valid endpoint name from a folder name: lower case, [a-z0-9-], letter first, 3-32 chars."""
    name = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:32].rstrip("-")
    return name if len(name) >= 3 else "my-model"


def write_starter(
    templates: Path, directory: Path, *, name: str | None, force: bool
) -> tuple[list[Path], str]:
    endpoint = name or endpoint_name_for(directory)
    if not ENDPOINT_NAME.match(endpoint):
        raise UsageError(
            f"'{endpoint}' is not a valid endpoint name",
            hint="use 3-32 characters: lower-case letters, digits and '-', starting with a letter (--name)",
        )
    sources = sorted(p for p in templates.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    targets = [(source, directory / source.relative_to(templates)) for source in sources]
    existing = [str(target) for _, target in targets if target.exists()]
    if existing and not force:
        raise UsageError(
            f"these files exist already: {', '.join(existing)}", hint="pass --force to overwrite them"
        )
    created = []
    for source, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8").replace(PLACEHOLDER, endpoint)
        target.write_text(text, encoding="utf-8")
        created.append(target)
    return created, endpoint
