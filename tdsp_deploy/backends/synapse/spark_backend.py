"""The synapse target in Spark mode: a batch-scoring job in ADLS Gen2, run through Livy.

How the backend contract maps onto a batch target:

- a slot is a deployed model version: its package and the job script, uploaded under
  content-addressed names, and a slot record (``endpoints/<name>/slots/<slot>.json``) written
  after them; ``wait_healthy`` checks that every blob the record names is there, whole;
- traffic is the split of ROWS between slots (``traffic.json``): a job run on the endpoint
  sends each row to the slot whose share holds the hash of its ``key_column``;
- a call (the smoke test, ``invoke``) is a job on the request's rows: they are written to the
  storage as parquet, scored by a Spark batch pinned to the slot, and read back;
- a job reports through the storage: it writes ``result.json`` beside its run (rows, rows per
  variant, output; or the driver's error), since Synapse's batch ``log`` holds only launcher
  lines; ``logs`` is what the slot's last job said there, where its driver log is, and the
  launcher's last lines;
- ``render`` writes the job script, its spec, the Livy request and the upload plan, offline.

Storage (storage.py) and Livy (livy.py) are the two doors to the platform; a test hands in
its own (a folder store, a Livy client pointed at a loopback server). This module holds the
contract (slots, traffic, status, render); running jobs is in spark_jobs.py, calls and their
frames in spark_frames.py.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import (
    Backend,
    Capabilities,
    EndpointStatus,
    SlotStatus,
    no_progress,
)
from tdsp_deploy.backends.synapse import job as jobs
from tdsp_deploy.backends.synapse.spark_frames import (
    MAX_SMOKE_JOBS,
    SparkCalls,
    parquet_bytes,
    read_scored,
    request_frame,
)
from tdsp_deploy.backends.synapse.spark_jobs import SparkJobs
from tdsp_deploy.backends.synapse.target import DataLocation, SynapseTarget
from tdsp_deploy.errors import DeploymentFailed, EndpointNotFound, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.synapse.livy import LivyClient
    from tdsp_deploy.backends.synapse.storage import Store
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage

# Re-exported: tests and tools read frames through this module.
__all__ = ["SparkBackend", "parquet_bytes", "read_scored", "request_frame"]


class SparkBackend(SparkJobs, SparkCalls, Backend):
    """Batch scoring on a Synapse Spark pool (and on a local Spark for ``run --local``)."""

    kind = "synapse"
    target_model = SynapseTarget
    extra = "synapse"
    # rows split by key hash; run_job scores a data set
    capabilities = Capabilities(weighted_traffic=True, batch_jobs=True)

    def __init__(
        self,
        manifest: ManifestBase,
        *,
        progress: Progress = no_progress,
        store: Store | None = None,
        livy: LivyClient | None = None,
        credential: Any = None,
    ):
        super().__init__(manifest, progress=progress)
        self.target: SynapseTarget
        self._store = store
        self._livy = livy
        self._credential = credential
        self._replaced: dict[str, dict[str, Any] | None] = {}
        self._salt = ""

    # -- the doors ---------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            from tdsp_deploy.backends.synapse.storage import BlobStore

            assert self.target.storage is not None
            self._store = BlobStore.connect(self.target.storage, credential=self._credential)
        return self._store

    @property
    def livy(self) -> LivyClient:
        if self._livy is None:
            from tdsp_deploy.backends.synapse.livy import LivyClient, azure_token_provider

            assert self.target.spark_pool is not None
            self._livy = LivyClient(
                self.target.livy_endpoint(), self.target.spark_pool, azure_token_provider(self._credential)
            )
        return self._livy

    def _endpoint_dir(self) -> str:
        return f"endpoints/{self.manifest.name}"

    def _slot_name(self, slot: str) -> str:
        return f"{self._endpoint_dir()}/slots/{slot}.json"

    # -- reading -----------------------------------------------------------------------------------
    def status(self) -> EndpointStatus:
        """The slot records and the split of rows, as kept in the storage."""
        from tdsp_deploy.backends.synapse.storage import get_json

        records = self._records()
        name = self.manifest.name
        if not records:
            return EndpointStatus(name=name, kind=self.kind, exists=False)
        traffic = get_json(self.store, f"{self._endpoint_dir()}/traffic.json") or {}
        slots = [
            SlotStatus(
                name=slot,
                state=record.get("state", "starting"),
                traffic=int(traffic.get(slot, 0)),
                model_version=record.get("model_version"),
                package_id=record.get("package_id"),
                config_id=record.get("config_id"),
                details={"package": record.get("package"), "job": record.get("job")},
            )
            for slot, record in sorted(records.items())
        ]
        return EndpointStatus(
            name=name,
            kind=self.kind,
            exists=True,
            scoring_uri=self.store.uri(self._endpoint_dir()),
            slots=slots,
            details={"workspace": self.target.workspace, "spark_pool": self.target.spark_pool},
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """The slot's last job as kept beside its record: its messages and error (from its
        result.json), the driver log's URL, the launcher's last lines."""
        data = self.store.get_bytes(f"{self._endpoint_dir()}/slots/{slot}.log")
        if data is None:
            raise UsageError(f"slot '{slot}' has run no job yet", hint="tdsp-deploy test, or run, starts one")
        lines = data.decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-tail:] if tail else lines)

    def credentials(self) -> dict[str, str]:
        """None: jobs are submitted with the caller's Microsoft Entra identity."""
        raise UsageError(
            "the synapse target has no endpoint keys: jobs run with your Microsoft Entra identity",
            hint="grant the Synapse Compute Operator role to whoever runs the jobs",
        )

    def preflight(self) -> list[str]:
        """Refuse a smoke test that would start hundreds of Spark jobs, or that asks for a
        per-request latency objective, which a batch target cannot honestly measure."""
        smoke = self.manifest.smoke_test
        if smoke is not None:
            if smoke.latency.p95_ms is not None:
                # The sample is scored by one job; the latency run's repeats of it are answered
                # from that job, so their clock would measure nothing: no objective to check.
                raise UsageError(
                    "smoke_test.latency.p95_ms cannot be checked on the synapse target: one Spark job "
                    "scores the sample, and its time is the answer's elapsed_ms, not a request latency",
                    hint="remove p95_ms; target.job_timeout bounds how long a job may run",
                )
            jobs_asked = smoke.latency.requests + smoke.latency.warmup
            if jobs_asked > MAX_SMOKE_JOBS:
                raise UsageError(
                    f"smoke_test.latency asks for {jobs_asked} requests; on the synapse target each one "
                    "is a Spark batch job",
                    hint="set smoke_test.latency: {requests: 1, warmup: 0, concurrency: 1}",
                )
        return []

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        """A lock blob in the storage root (blob_lease.py): held while a command changes the
        endpoint, whichever machine it runs on."""
        from tdsp_deploy.backends.synapse.blob_lease import BlobLease

        def told(message: str) -> None:
            self.tell("lock", message)

        return BlobLease(
            self.store, f"{self._endpoint_dir()}/lock.json", self.manifest.name, timeout=timeout, on_wait=told
        )

    # -- deploying ---------------------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Upload the package and the job (skipped when the same content is there), then write
        the slot record that points at them: the record is the commit."""
        from tdsp_deploy.backends.synapse.storage import get_json, put_json

        plan = self.upload_plan(package, root=self.store.root)
        for upload in plan:
            started = time.monotonic()
            uploaded = self.store.put_file(upload["name"], Path(upload["source"]), upload["sha256"])
            self.tell(
                "deploy",
                f"{'uploaded' if uploaded else 'unchanged, not uploaded:'} {upload['uri']} "
                f"({upload['size']} bytes)",
                elapsed=time.monotonic() - started,
            )
        self._replaced[slot] = get_json(self.store, self._slot_name(slot))
        record = {
            "slot": slot,
            "state": "starting",
            "package": plan[0]["uri"],
            "package_id": package.package_id,
            "job": plan[1]["uri"],
            "model_version": package.lock.model_version,
            "model_path": package.lock.model.path,
            "script": package.lock.script,
            "flavor": self.manifest.model.flavor,
            "config_id": self.config_id(package),
        }
        put_json(self.store, self._slot_name(slot), record)
        return SlotStatus(
            name=slot,
            state="starting",
            model_version=record["model_version"],
            package_id=package.package_id,
            config_id=record["config_id"],
        )

    def upload_plan(self, package: BuiltPackage, *, root: str | None = None) -> list[dict[str, Any]]:
        """What deploy_slot uploads: the package, then the job script (content-addressed), under
        ``root`` (default: target.storage)."""
        from tdsp_deploy.backends.synapse.storage import file_sha256

        job_file = jobs.job_script_path()
        job_sha = jobs.job_script_sha256()
        items = [
            (f"packages/{package.package_id}.tar", package.path, file_sha256(package.path)),
            (f"jobs/{job_sha}/{jobs.JOB_FILE}", job_file, job_sha),
        ]
        return [
            {
                "name": name,
                "uri": f"{(root or self.target.storage or '').rstrip('/')}/{name}",
                "source": str(source),
                "sha256": sha,
                "size": Path(source).stat().st_size,
            }
            for name, source, sha in items
        ]

    def _root_uri(self, name: str) -> str:
        assert self.target.storage is not None
        return f"{self.target.storage}/{name}"

    def config_id(self, package: BuiltPackage) -> str:
        """The package, the job script and the target settings that shape a run."""
        import hashlib

        settings = {
            "package": package.package_id,
            "job": jobs.job_script_sha256(),
            "flavor": self.manifest.model.flavor,
            "target": self.target.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def wait_healthy(self, slot: str) -> SlotStatus:
        """Every blob the slot record names is there (a job started now would find it)."""
        from tdsp_deploy.backends.synapse.storage import get_json, put_json

        record = get_json(self.store, self._slot_name(slot))
        if record is None:
            raise DeploymentFailed(f"slot '{slot}' has no record in {self.store.uri(self._endpoint_dir())}")
        for key in ("package", "job"):
            name = record[key].removeprefix(self.store.root + "/")
            if name not in self.store.list(name):
                raise DeploymentFailed(f"slot '{slot}': {record[key]} is missing from the storage")
        record["state"] = "healthy"
        put_json(self.store, self._slot_name(slot), record)
        found = self.status().slot(slot)
        assert found is not None
        return found

    def finalize_slot(self, slot: str) -> None:
        """The previous record is no longer needed for undo."""
        self._replaced.pop(slot, None)

    def discard_slot(self, slot: str) -> None:
        """Put back the slot's previous record, or remove the slot (packages stay: they are
        content-addressed and may serve other slots)."""
        from tdsp_deploy.backends.synapse.storage import put_json

        previous = self._replaced.pop(slot, None)
        if previous is not None:
            put_json(self.store, self._slot_name(slot), previous)
        else:
            self.store.delete(self._slot_name(slot))

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """The split of rows between slots; more than one slot needs ``key_column``."""
        from tdsp_deploy.backends.synapse.storage import put_json

        if any((mirror or {}).values()):
            raise UsageError("the synapse target cannot mirror: every row is scored once")
        live = {slot: share for slot, share in traffic.items() if share}
        if len(live) > 1 and not self.target.key_column:
            raise UsageError(
                "splitting rows between model versions needs target.key_column",
                hint="name the column whose hash assigns a row (e.g. a customer id)",
            )
        records = self._records()
        unknown = [slot for slot in live if slot not in records]
        if unknown:
            raise UsageError(f"no slot {', '.join(unknown)} in endpoint '{self.manifest.name}'")
        put_json(self.store, f"{self._endpoint_dir()}/traffic.json", live)

    def set_experiment(self, experiment_id: str) -> None:
        """Row hashes are salted with the experiment's id, so each experiment splits anew; kept
        in the storage, so that every later job of the endpoint uses it."""
        from tdsp_deploy.backends.synapse.storage import put_json

        self._salt = experiment_id
        put_json(self.store, f"{self._endpoint_dir()}/experiment.json", {"id": experiment_id})

    def delete(self, slot: str | None = None) -> None:
        """Remove a slot's record (and its traffic), or every record of the endpoint."""
        records = self._records()
        if not records:
            raise EndpointNotFound(f"endpoint '{self.manifest.name}' has no slot in {self.store.root}")
        names = [slot] if slot else list(records)
        for name in names:
            if name not in records:
                raise UsageError(f"endpoint '{self.manifest.name}' has no slot '{name}'")
            self.store.delete(self._slot_name(name))
            self.store.delete(f"{self._endpoint_dir()}/slots/{name}.log")
        if slot is None:
            self.store.delete(f"{self._endpoint_dir()}/traffic.json")

    # -- reviewing ---------------------------------------------------------------------------------
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        """The job script, its spec and Livy request for the target's input/output (as a push
        would deploy it to slot 'blue'), and the upload plan."""
        out_dir.mkdir(parents=True, exist_ok=True)
        plan = self.upload_plan(package)
        variant = jobs.Variant.of("blue", package.lock, plan[0]["uri"], 100, self.manifest.model.flavor)
        # without target.input / output: the paths of a smoke-test run (RUN_ID stands for its id)
        run_dir = f"{self._endpoint_dir()}/runs/RUN_ID"
        source = self.target.input or DataLocation(path=self._root_uri(f"{run_dir}/input.parquet"))
        sink = self.target.output or DataLocation(path=self._root_uri(f"{run_dir}/output"))
        spec = self._spec([variant], source, sink, result=self._root_uri(f"{run_dir}/{jobs.RESULT_FILE}"))
        request = self.livy_request(spec, plan[1]["uri"], slot="blue")
        assert self.target.spark_pool is not None
        livy_url = (
            f"{self.target.livy_endpoint()}/livyApi/versions/2019-11-01-preview/sparkPools/"
            f"{self.target.spark_pool}/batches?detailed=true"
        )
        files = {
            jobs.JOB_FILE: jobs.job_script(),
            "job-spec.json": json.dumps(spec, indent=2, sort_keys=True) + "\n",
            "livy-request.json": json.dumps({"method": "POST", "url": livy_url, "body": request}, indent=2)
            + "\n",
            "upload-plan.json": json.dumps(
                [
                    {k: v for k, v in item.items() if k != "source"} | {"source": Path(item["source"]).name}
                    for item in plan
                ],
                indent=2,
            )
            + "\n",
        }
        written = []
        for name, text in files.items():
            path = out_dir / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
        return written

    # -- internals ---------------------------------------------------------------------------------
    def _records(self) -> dict[str, dict[str, Any]]:
        from tdsp_deploy.backends.synapse.storage import get_json

        prefix = f"{self._endpoint_dir()}/slots/"
        records = {}
        for name in self.store.list(prefix):
            if name.endswith(".json"):
                record = get_json(self.store, name)
                if isinstance(record, dict):
                    records[name[len(prefix) : -len(".json")]] = record
        return records
