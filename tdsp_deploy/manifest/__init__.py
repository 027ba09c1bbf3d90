"""The deployment manifest: load it, validate it, check what can be checked without running it."""

from tdsp_deploy.manifest.checks import check_manifest
from tdsp_deploy.manifest.loader import LoadedManifest, load_manifest
from tdsp_deploy.manifest.model import ManifestBase, manifest_class

__all__ = [
    "LoadedManifest",
    "ManifestBase",
    "check_manifest",
    "load_manifest",
    "manifest_class",
]
