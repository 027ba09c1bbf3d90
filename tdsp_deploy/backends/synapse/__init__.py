"""The synapse target: Azure Synapse Analytics, in Spark or dedicated-SQL-pool mode.

One manifest kind, two platforms behind it. The registry finds ``plugin``; its factory returns
the backend of the manifest's ``target.mode`` itself:

- ``spark``: ``spark_backend.SparkBackend`` (a batch-scoring job in ADLS Gen2, run through Livy);
- ``sql``: ``sql_pool.SqlPoolBackend`` (PREDICT with ONNX in a dedicated SQL pool).

The mode's module is imported when the backend is made, never at registry time, and neither
imports its platform SDK before it acts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import Backend, TargetPlugin, check_requirements, no_progress
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.manifest.model import ManifestBase


def mode_backend_class(mode: str) -> type[Backend]:
    """The backend class that carries out ``mode`` (imported now)."""
    if mode == "spark":
        from tdsp_deploy.backends.synapse.spark_backend import SparkBackend

        return SparkBackend
    if mode == "sql":
        try:
            from tdsp_deploy.backends.synapse.sql_pool import SqlPoolBackend
        except ImportError as exc:
            raise UsageError(
                f"the synapse target's sql mode is not available in this installation ({exc})",
                hint="use mode: spark, or upgrade tdsp-deploy",
            ) from None
        return SqlPoolBackend
    raise UsageError(f"unknown synapse mode '{mode}'", hint="mode: spark | sql")


def make_backend(manifest: ManifestBase, progress: Progress = no_progress, **seams: Any) -> Backend:
    """The backend of the manifest's mode, with the seams (store, livy, connection, ...) given."""
    mode_class = mode_backend_class(manifest.target.mode)  # type: ignore[attr-defined]
    check_requirements(mode_class)  # the SDKs of this mode only: `run --local` needs no Azure
    return mode_class.make_backend(manifest, progress, **seams)


# each mode checks its own SDKs when it is made, so the kind itself requires nothing
plugin = TargetPlugin(kind="synapse", target_model=SynapseTarget, make_backend=make_backend, extra="synapse")
