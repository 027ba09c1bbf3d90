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
its own (a folder store, a Livy client pointed at a loopback server).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import (
    REPLAYED_ANSWER_HEADER,
    Backend,
    Caller,
    EndpointStatus,
    InvokeResult,
    ProgressEvent,
    SlotStatus,
    no_progress,
)
from tdsp_deploy.backends.synapse import job as jobs
from tdsp_deploy.backends.synapse.target import NODE_SIZES, DataLocation, SynapseTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, EndpointNotFound, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.synapse.livy import LivyClient
    from tdsp_deploy.backends.synapse.storage import Store
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage

#: A push's smoke test runs one Spark job per distinct request: more than this is refused.
MAX_SMOKE_JOBS = 3
ROW_INDEX = "_tdsp_row"
#: On an answer given again from the job that answered the same request before: that job's id.
REPLAY_HEADER = REPLAYED_ANSWER_HEADER
#: Beside a run's request log, written once the run succeeded: when it started.
RUN_RECORD = "run.json"


class SparkBackend(Backend):
    """Batch scoring on a Synapse Spark pool (and on a local Spark for ``run --local``)."""

    kind = "synapse"
    target_model = SynapseTarget
    extra = "synapse"
    supports_weighted_traffic = True  # rows split by key hash
    supports_mirror = False

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
        """A lock blob in the storage root (endpoint_lock.py): held while a command changes the
        endpoint, whichever machine it runs on."""
        from tdsp_deploy.backends.synapse.endpoint_lock import EndpointLock

        def told(message: str) -> None:
            self._tell("lock", message)

        return EndpointLock(
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
            self._tell(
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

    # -- running jobs ------------------------------------------------------------------------------
    def run_job(
        self,
        source: DataLocation | None = None,
        sink: DataLocation | None = None,
        *,
        local: bool = False,
        slot: str | None = None,
        master: str = "local[*]",
        work_dir: Path | None = None,
        run_dir: str | None = None,
    ) -> dict[str, Any]:
        """Score ``source`` into ``sink`` (default: the target's input / output).

        ``local``: the manifest's model on a local Spark, local paths. Otherwise the deployed
        slots on the Spark pool, split by the endpoint's traffic (or only ``slot``); the job
        writes its summary, or its error, to ``<run_dir>/result.json`` in the storage
        (default run_dir: a new ``endpoints/<name>/runs/<id>``), and that is what is reported."""
        source = source or self.target.input
        sink = sink or self.target.output
        if source is None or sink is None:
            raise UsageError(
                "nothing to read or nowhere to write",
                hint="give --input and --output, or target.input and target.output in the manifest",
            )
        if local:
            return self._run_local(source, sink, master=master, work_dir=work_dir)
        variants = self._variants(slot)
        if not self._salt:
            from tdsp_deploy.backends.synapse.storage import get_json

            self._salt = str(
                (get_json(self.store, f"{self._endpoint_dir()}/experiment.json") or {}).get("id", "")
            )
        run_id = _run_id()
        run_dir = run_dir or f"{self._endpoint_dir()}/runs/{run_id}"
        result_name = f"{run_dir}/{jobs.RESULT_FILE}"
        # a run split between versions logs which version scored which key, for `ab`
        log_dir = f"{self._endpoint_dir()}/requests/{run_id}" if len(variants) > 1 else None
        started = time.time()
        spec = self._spec(
            variants,
            source,
            sink,
            request_log=self.store.uri(log_dir) if log_dir else None,
            result=self.store.uri(result_name),
        )
        result = self._submit(spec, self._job_uri(variants), slot=slot, result_name=result_name)
        if log_dir and result.get("request_log"):
            from tdsp_deploy.backends.synapse.storage import put_json

            # written last: a log without it (a run that died half-way) is never read
            put_json(
                self.store, f"{log_dir}/{RUN_RECORD}", {"t": started, "batch_id": result.get("batch_id")}
            )
        return result

    def _run_local(
        self, source: DataLocation, sink: DataLocation, *, master: str, work_dir: Path | None
    ) -> dict[str, Any]:
        import tempfile

        from tdsp_deploy import paths
        from tdsp_deploy.backends.synapse.local_spark import run_local
        from tdsp_deploy.packaging import build_package

        for place in (source, sink):
            if place.path is not None and place.path.startswith("abfss://"):
                raise UsageError(
                    f"run --local reads and writes local paths; {place.path} is in Azure",
                    hint="give --input and --output as local paths",
                )
        if source.path is not None and not Path(source.path).exists():
            raise UsageError(f"the input {source.path} does not exist")
        package = build_package(self.manifest, paths.package_store(), progress=self.progress)
        variant = jobs.Variant.of("local", package.lock, str(package.path), 100, self.manifest.model.flavor)
        spec = self._spec([variant], source, sink)
        work = work_dir or Path(tempfile.mkdtemp(prefix=f"tdsp-run-{self.manifest.name}-"))
        return run_local(
            spec,
            work,
            conf=self.target.conf,
            master=master,
            timeout=self.target.job_timeout,
            progress=self.progress,
        )

    def _spec(
        self,
        variants: list[jobs.Variant],
        source: DataLocation,
        sink: DataLocation,
        *,
        request_log: str | None = None,
        result: str | None = None,
    ) -> dict[str, Any]:
        try:
            return jobs.job_spec(
                self.target,
                self.manifest,
                variants,
                source,
                sink,
                salt=self._salt,
                request_log=request_log,
                result=result,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _variants(self, slot: str | None) -> list[jobs.Variant]:
        from tdsp_deploy.backends.synapse.storage import get_json

        records = self._records()
        if not records:
            raise EndpointNotFound(
                f"endpoint '{self.manifest.name}' is not deployed", hint="tdsp-deploy push first"
            )
        if slot is not None:
            if slot not in records:
                raise UsageError(f"endpoint '{self.manifest.name}' has no slot '{slot}'")
            shares = {slot: 100}
        else:
            shares = get_json(self.store, f"{self._endpoint_dir()}/traffic.json") or {}
            if not shares:
                raise UsageError(
                    f"no slot of '{self.manifest.name}' takes rows yet",
                    hint="tdsp-deploy traffic, or push with traffic 100",
                )
        return [
            jobs.Variant(
                name=name,
                model_version=str(records[name]["model_version"]),
                package=records[name]["package"],
                share=int(share),
                flavor=records[name].get("flavor"),
                model_path=records[name]["model_path"],
                script=records[name]["script"],
            )
            for name, share in sorted(shares.items())
            if share
        ]

    def _job_uri(self, variants: list[jobs.Variant]) -> str:
        records = self._records()
        return str(records[variants[0].name]["job"])

    def livy_request(self, spec: dict[str, Any], job_uri: str, *, slot: str | None = None) -> dict[str, Any]:
        """The body of the Livy batch request (Synapse "Create Spark Batch Job")."""
        driver_cores, driver_memory = NODE_SIZES[self.target.driver.size]
        executor_cores, executor_memory = NODE_SIZES[self.target.executor.size]
        return {
            "name": f"tdsp-{self.manifest.name}-{slot or 'run'}",
            "file": job_uri,
            "args": [jobs.spec_text(spec)],
            "driverMemory": driver_memory,
            "driverCores": driver_cores,
            "executorMemory": executor_memory,
            "executorCores": executor_cores,
            "numExecutors": self.target.executor.count,
            "conf": dict(sorted(self.target.conf.items())),
            "tags": {"tdsp-endpoint": self.manifest.name, **({"tdsp-slot": slot} if slot else {})},
        }

    def _submit(
        self, spec: dict[str, Any], job_uri: str, *, slot: str | None, result_name: str
    ) -> dict[str, Any]:
        """Submit, wait, and read what the job wrote to ``result_name``. Synapse's batch ``log``
        holds only the last lines of the spark-submit launcher (the driver's output stays in
        the pool, behind appInfo.driverLogUrl), so the job's own result.json is what says how
        many rows it scored, or why it failed."""
        body = self.livy_request(spec, job_uri, slot=slot)
        batch = self.livy.submit(body)
        batch_id = batch.get("id")
        if batch_id is None:
            raise BackendError("Synapse accepted the batch but gave no id")
        self._tell("run", f"submitted Spark batch {batch_id} to pool {self.target.spark_pool}")
        result_uri = self.store.uri(result_name)
        try:
            final = self.livy.wait(int(batch_id), timeout=self.target.job_timeout, progress=self.progress)
        except DeploymentFailed as failed:
            result = jobs.read_result(self.store.get_bytes(result_name))
            error = jobs.failure_text(result)
            failed.details.update({"error": error, "result": result_uri})
            self._keep_log(slot, jobs.job_log(batch_id, failed.details, result, result_uri))
            if error:
                # the driver's own error, from where the job saved it, before the launcher's noise
                failed.message = failed.message.split(":\n", 1)[0] + f":\n{error}"
            raise
        result = jobs.read_result(self.store.get_bytes(result_name))
        self._keep_log(slot, jobs.job_log(batch_id, final, result, result_uri))
        if result is None or result.get("state") != "success":
            raise DeploymentFailed(
                f"Spark batch {batch_id} ended {final.get('state')} but its job wrote no summary to "
                f"{result_uri}",
                hint=jobs.driver_log_hint(final),
                details={"batch_id": batch_id, "state": final.get("state"), "result": result_uri},
            )
        output = spec["output"].get("path") or spec["output"].get("table")
        return {
            **{k: v for k, v in result.items() if k != "messages"},
            "batch_id": batch_id,
            "state": final.get("state"),
            "output": output,  # as it was asked for (the job may see the storage by another path)
            "result": result_uri,
            **({"driver_log": url} if (url := jobs.driver_log_url(final)) else {}),
        }

    def _keep_log(self, slot: str | None, text: str) -> None:
        if slot and text:
            self.store.put_bytes(f"{self._endpoint_dir()}/slots/{slot}.log", text.encode())

    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        """One record per row scored by a run split between versions (``run`` on the endpoint,
        not pinned) since ``since``: ``id`` is the row's key_column value, the id that `ab analyze
        --outcomes` joins on. A batch has no per-request latency, so the records carry none."""
        import pyarrow.parquet

        from tdsp_deploy.backends.synapse.storage import get_json

        prefix = f"{self._endpoint_dir()}/requests/"
        names = self.store.list(prefix)
        runs = sorted(
            (record["t"], name.removesuffix(RUN_RECORD))
            for name in names
            if name.endswith("/" + RUN_RECORD)
            and isinstance(record := get_json(self.store, name), dict)
            and isinstance(record.get("t"), int | float)
            and record["t"] >= since
        )
        for t, folder in runs:
            for part in (n for n in names if n.startswith(folder) and n.endswith(".parquet")):
                data = self.store.get_bytes(part)
                if not data:
                    continue
                table = pyarrow.parquet.read_table(
                    io.BytesIO(data), columns=["id", "variant", "model_version"]
                )
                for row_id, variant, version in zip(
                    *(table.column(i).to_pylist() for i in range(3)), strict=True
                ):
                    yield {
                        "kind": "live",
                        "t": t,
                        "id": row_id,
                        "deployment": variant,
                        "version": version,
                        "status": 200,
                        "latency_ms": None,
                        "pinned": False,
                    }

    # -- calling -----------------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """Callers that score a JSON table (``{"columns": [...], "data": [[...]]}``) with a Spark
        job on the pool; the answer is the table of scored rows (model version and slot in the
        headers).

        One job per distinct request in a context: a push's smoke test sends the sample for its
        answer and again as its latency sample, and both are answered by the one job (the repeat
        is marked with REPLAY_HEADER and carries the job's own elapsed time)."""
        answered: dict[str, InvokeResult] = {}
        guard = threading.Lock()  # a repeat waits for the job of its first sending

        def call(body: bytes) -> InvokeResult:
            key = hashlib.sha256(body).hexdigest()
            with guard:
                first = answered.get(key)
                if first is None:
                    # Each new request is a Spark job: a latency run of hundreds of distinct
                    # requests gets a refusal per request past the budget, not hundreds of jobs.
                    if len(answered) >= MAX_SMOKE_JOBS:
                        return _answer(
                            429,
                            {
                                "error": f"more than {MAX_SMOKE_JOBS} distinct requests in one run: each "
                                "one is a Spark batch job; send the same sample, or set "
                                "smoke_test.latency: {requests: 1, warmup: 0, concurrency: 1}"
                            },
                            time.perf_counter(),
                        )
                    result = self._call(body, slot)
                    if result.status == 200:
                        answered[key] = result
                    return result
            batch = first.headers.get("x-spark-batch-id", "")
            return InvokeResult(
                status=first.status,
                body=first.body,
                headers={**first.headers, REPLAY_HEADER: batch},
                elapsed_ms=first.elapsed_ms,
            )

        @contextlib.contextmanager
        def made() -> Iterator[Iterator[Caller]]:
            def callers_forever() -> Iterator[Caller]:
                while True:
                    yield call

            yield callers_forever()

        return made()

    def _call(self, body: bytes, slot: str | None) -> InvokeResult:
        started = time.perf_counter()
        try:
            frame = request_frame(body)
        except ValueError as exc:
            return _answer(400, {"error": str(exc)}, started)
        run_dir = f"{self._endpoint_dir()}/runs/{_run_id()}"
        self.store.put_bytes(f"{run_dir}/input.parquet", parquet_bytes(frame))
        source = DataLocation(path=self.store.uri(f"{run_dir}/input.parquet"), format="parquet")
        sink = DataLocation(path=self.store.uri(f"{run_dir}/output"), format="parquet")
        try:
            result = self.run_job(source, sink, slot=slot, run_dir=run_dir)
        except DeploymentFailed as exc:
            return _answer(500, {"error": exc.message}, started)
        table, versions, variants = read_scored(self.store, f"{run_dir}/output")
        headers = {"content-type": "application/json"}
        if variants or slot:
            headers["azureml-model-deployment"] = ",".join(variants) if variants else str(slot)
        if versions:
            headers["x-model-version"] = ",".join(versions)
        headers["x-spark-batch-id"] = str(result.get("batch_id"))
        return InvokeResult(
            status=200,
            body=json.dumps(table).encode(),
            headers=headers,
            elapsed_ms=(time.perf_counter() - started) * 1e3,
        )

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

    def _tell(self, step: str, message: str, **numbers: Any) -> None:
        self.progress(ProgressEvent(step=step, message=message, **numbers))


# -- the request and the answer -------------------------------------------------------------------
def request_frame(body: bytes) -> Any:
    """A JSON table request as a DataFrame, with a row index so the answer keeps the order."""
    import pandas

    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the request is not JSON: {exc}") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("columns"), list)
        or not isinstance(doc.get("data"), list)
    ):
        raise ValueError('the request must be {"columns": [...], "data": [[...], ...]}')
    columns = [str(c) for c in doc["columns"]]
    for number, row in enumerate(doc["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ValueError(f"data[{number}] must be a list of {len(columns)} values")
    frame = pandas.DataFrame(doc["data"], columns=columns)
    frame[ROW_INDEX] = range(len(frame))
    return frame


def parquet_bytes(frame: Any) -> bytes:
    import pyarrow
    import pyarrow.parquet

    buffer = io.BytesIO()
    pyarrow.parquet.write_table(pyarrow.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


def read_scored(store: Store, prefix: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """The job's parquet output under ``prefix`` as a JSON table in request order, and the model
    versions and variants that scored it (which leave the table for the headers)."""
    import pandas
    import pyarrow.parquet

    parts = [n for n in store.list(prefix + "/") if n.endswith(".parquet")]
    frames = []
    for name in parts:
        data = store.get_bytes(name)
        if data:
            frames.append(pyarrow.parquet.read_table(io.BytesIO(data)).to_pandas())
    if not frames:
        raise DeploymentFailed(f"the job wrote no rows under {store.uri(prefix)}")
    frame = pandas.concat(frames, ignore_index=True).sort_values(ROW_INDEX).drop(columns=[ROW_INDEX])
    versions = sorted(frame.pop("model_version").astype(str).unique()) if "model_version" in frame else []
    variants = sorted(frame.pop("variant").astype(str).unique()) if "variant" in frame else []
    data = json.loads(frame.to_json(orient="split", index=False, double_precision=15))
    return {"columns": data["columns"], "data": data["data"]}, versions, variants


def _run_id() -> str:
    """Sorts by time, unique across machines."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def _answer(status: int, doc: Any, started: float) -> InvokeResult:
    return InvokeResult(
        status=status,
        body=json.dumps(doc).encode(),
        headers={"content-type": "application/json"},
        elapsed_ms=(time.perf_counter() - started) * 1e3,
    )
