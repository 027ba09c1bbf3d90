"""Packaging: the model, its scoring code and environment as one deterministic archive.

An uncompressed tar (hashing a multi-GB model must run at disk speed, and a lock at the end
must be found by seeking over headers), laid out as Azure ML lays out a deployment::

    model/<basename of model.path>   what AZUREML_MODEL_DIR points into
    code/...                         the scoring folder
    environment/requirements.txt     or environment/conda.yaml, when given
    package.json                     the lock: every file's sha256, written last

Same content gives byte-identical archives and the same ``package_id``. Backends call
``build_package`` (through the pipeline), ``read_lock`` and ``extract_package``.
"""

from tdsp_deploy.packaging.build import BuiltPackage, archive_name, build_package
from tdsp_deploy.packaging.errors import PackagingError
from tdsp_deploy.packaging.extract import extract_once, extract_package, read_lock
from tdsp_deploy.packaging.lock import LockedFile, LockedModel, PackageLock, package_id

__all__ = [
    "BuiltPackage",
    "LockedFile",
    "LockedModel",
    "PackageLock",
    "PackagingError",
    "archive_name",
    "build_package",
    "extract_once",
    "extract_package",
    "package_id",
    "read_lock",
]
