"""The deployment manifest: load it, validate it, check what can be checked without running it.

The names below are imported when first asked for: the models import pydantic, which the quick
check of ``validate`` (quick.py) does without, and it imports modules of this package."""

from typing import Any

__all__ = [
    "LoadedManifest",
    "ManifestBase",
    "check_manifest",
    "load_manifest",
    "manifest_class",
]

_WHERE = {
    "LoadedManifest": "tdsp_deploy.manifest.loaded",
    "ManifestBase": "tdsp_deploy.manifest.model",
    "check_manifest": "tdsp_deploy.manifest.checks",
    "load_manifest": "tdsp_deploy.manifest.loader",
    "manifest_class": "tdsp_deploy.manifest.model",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
