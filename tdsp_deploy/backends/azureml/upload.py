"""What a deployment's code upload holds: the scoring folder without the files that are the
push's own, not the container's.

The package keeps the scoring folder whole (the local target serves from it, and its hash is
the package's identity), and that folder is often the project's root: the manifest and the
smoke test's request and expected answer sit beside ``score.py``. Azure ML would upload them
into the deployment's code and mount them in every container, so the code folder handed to
azure-ai-ml is a copy without them.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase

#: the copy's folder name beside the package's own code/ folder
UPLOAD_FOLDER = "azureml-code"


def left_out(manifest: ManifestBase, code_dir: Path) -> set[str]:
    """Paths (relative to ``code_dir``, '/'-separated) that are not shipped: the smoke test's
    files, and the deployment manifest(s) of this endpoint."""
    names: set[str] = set()
    source = manifest.scoring.code if manifest.scoring is not None else None
    smoke = manifest.smoke_test
    if source is not None and smoke is not None:
        for path in (smoke.request, smoke.expect):
            if path is None:
                continue
            with contextlib.suppress(ValueError):  # outside the code folder: not in its copy either
                names.add(Path(path).resolve().relative_to(Path(source).resolve()).as_posix())
    for candidate in list(code_dir.glob("*.yaml")) + list(code_dir.glob("*.yml")):
        if _is_manifest_of(candidate, manifest.name):
            names.add(candidate.name)
    return names


def code_for_upload(manifest: ManifestBase, package_dir: Path) -> Path:
    """The package's code folder without ``left_out`` files, made once per package."""
    code_dir = package_dir / "code"
    target = package_dir / UPLOAD_FOLDER
    if target.is_dir():
        return target
    skip = left_out(manifest, code_dir)
    partial = package_dir / (UPLOAD_FOLDER + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(
        code_dir,
        partial,
        ignore=lambda folder, entries: {
            e for e in entries if (Path(folder) / e).relative_to(code_dir).as_posix() in skip
        },
    )
    partial.rename(target)
    return target


def _is_manifest_of(path: Path, endpoint: str) -> bool:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return (
        isinstance(doc, dict)
        and doc.get("name") == endpoint
        and isinstance(doc.get("target"), dict)
        and isinstance(doc.get("model"), dict)
    )
