"""The synapse target: Azure Synapse Analytics, in Spark or dedicated-SQL-pool mode.

One manifest kind, two platforms behind it. ``SynapseBackend`` is what the registry finds; it
hands every contract method to the backend of the manifest's ``target.mode``:

- ``spark``: ``spark_backend.SparkBackend`` (a batch-scoring job in ADLS Gen2, run through Livy);
- ``sql``: ``sql_pool.SqlPoolBackend`` (PREDICT with ONNX in a dedicated SQL pool).

The mode's module is imported when the backend is made, never at registry time, and neither
imports its platform SDK before it acts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import Backend, Caller, EndpointStatus, InvokeResult, SlotStatus, no_progress
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage


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


class SynapseBackend(Backend):
    """Azure Synapse Analytics; the work is done by the backend of ``target.mode``."""

    kind = "synapse"
    target_model = SynapseTarget
    extra = "synapse"
    # each mode checks its own SDKs when it acts: `run --local` needs pyspark only
    requires = ()

    def __init__(self, manifest: ManifestBase, *, progress: Progress = no_progress, **options: Any):
        super().__init__(manifest, progress=progress)
        self.target: SynapseTarget
        self.mode = self.target.mode
        #: the backend of the mode; options (a client handed in by a test, ...) go to it
        from tdsp_deploy.backends.registry import check_requirements

        mode_class = mode_backend_class(self.mode)
        check_requirements(mode_class)  # the SDKs of this mode only: `run --local` needs no Azure
        self.delegate: Backend = mode_class(manifest, progress=progress, **options)
        self.supports_weighted_traffic = self.delegate.supports_weighted_traffic  # type: ignore[misc]
        self.supports_mirror = self.delegate.supports_mirror  # type: ignore[misc]

    # -- reading -----------------------------------------------------------------------------
    def status(self) -> EndpointStatus:
        """What is deployed now, as the mode's backend sees it."""
        return self.delegate.status()

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """The slot's last job log (spark) or what the SQL pool keeps (sql)."""
        return self.delegate.logs(slot, tail=tail)

    def credentials(self) -> dict[str, str]:
        """Keys of the endpoint, where the mode has any."""
        return self.delegate.credentials()

    def repair(self) -> list[str]:
        """Whatever the mode's backend can bring back."""
        return self.delegate.repair()

    def regenerate_keys(self) -> None:
        """Only where the mode has keys."""
        self.delegate.regenerate_keys()

    def preflight(self) -> list[str]:
        """The mode's warnings about the manifest, before anything is deployed."""
        return self.delegate.preflight()

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        """The mode's lock on the endpoint."""
        return self.delegate.lock(timeout=timeout)

    def config_id(self, package: BuiltPackage) -> str:
        """What a slot would run, as the mode's backend identifies it."""
        return self.delegate.config_id(package)

    # -- deploying ---------------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Deploy ``package`` to ``slot`` with no live traffic (see the mode's backend)."""
        return self.delegate.deploy_slot(slot, package)

    def wait_healthy(self, slot: str) -> SlotStatus:
        """Wait until the slot can score."""
        return self.delegate.wait_healthy(slot)

    def finalize_slot(self, slot: str) -> None:
        """Drop what deploy_slot kept for undo."""
        self.delegate.finalize_slot(slot)

    def discard_slot(self, slot: str) -> None:
        """Undo deploy_slot."""
        self.delegate.discard_slot(slot)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """The split of rows (spark) or calls (sql) between slots."""
        self.delegate.set_traffic(traffic, mirror)

    def delete(self, slot: str | None = None) -> None:
        """Remove one slot, or the whole endpoint."""
        self.delegate.delete(slot)

    # -- calling -----------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """Callers that score a JSON table of rows (a job, or a query)."""
        return self.delegate.callers(slot)

    def invoke(self, body: bytes, *, slot: str | None = None) -> InvokeResult:
        """Score one JSON table of rows."""
        return self.delegate.invoke(body, slot=slot)

    # -- experiments -------------------------------------------------------------------------
    def set_experiment(self, experiment_id: str) -> None:
        """Salt the row hashes of the split with the experiment's id."""
        self.delegate.set_experiment(experiment_id)

    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        """The mode's request log, where it keeps one."""
        return self.delegate.request_records(since)

    # -- reviewing ---------------------------------------------------------------------------
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        """Write, offline, what a push would send (job, Livy request, uploads; or T-SQL)."""
        return self.delegate.render(package, out_dir)

    def __getattr__(self, name: str) -> Any:
        # What only one mode offers (e.g. the spark mode's run_job) is reached through here.
        if name == "delegate":
            raise AttributeError(name)
        return getattr(self.delegate, name)
