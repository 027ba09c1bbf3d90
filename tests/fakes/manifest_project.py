"""A project folder written from a manifest's text, for the manifest and rollout tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

MINIMAL = """\
name: iris
model:
  path: model/
scoring:
  script: score.py
"""


GOOD_SCRIPT = """\
def init():
    pass


def run(raw_data):
    return raw_data
"""


def project(root: Path, manifest: str = MINIMAL, files: dict[str, str | bytes] | None = None) -> Path:
    """A folder with a model, a scoring script, a sample request and ``deploy.yaml``."""
    root.mkdir(parents=True, exist_ok=True)
    defaults: dict[str, str | bytes] = {
        "model/model.pkl": b"weights",
        "score.py": GOOD_SCRIPT,
        "sample-request.json": '{"data": [1, 2]}',
        "deploy.yaml": textwrap.dedent(manifest),
    }
    for name, content in {**defaults, **(files or {})}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root / "deploy.yaml"
