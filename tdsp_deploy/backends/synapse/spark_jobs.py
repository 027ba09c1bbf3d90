"""Batch jobs of the synapse target in Spark mode: ``run`` (on the pool through Livy, or on a
local Spark), the job's spec and Livy request, submission and the result the job writes, and the
request records a run split between versions leaves for ``ab``.

``SparkJobs`` is mixed into ``SparkBackend`` (spark_backend.py), whose doors (``store``,
``livy``) and slot records it uses.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.synapse import job as jobs
from tdsp_deploy.backends.synapse.target import NODE_SIZES, DataLocation, location_from_option
from tdsp_deploy.errors import BackendError, DeploymentFailed, EndpointNotFound, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.synapse.livy import LivyClient
    from tdsp_deploy.backends.synapse.storage import Store
    from tdsp_deploy.backends.synapse.target import SynapseTarget
    from tdsp_deploy.manifest.model import ManifestBase


#: Beside a run's request log, written once the run succeeded: when it started.
RUN_RECORD = "run.json"


class SparkJobs:
    """The job half of SparkBackend."""

    if TYPE_CHECKING:  # provided by SparkBackend
        manifest: ManifestBase
        target: SynapseTarget
        progress: Progress
        store: Store
        livy: LivyClient
        _salt: str

        def _records(self) -> dict[str, dict[str, Any]]: ...
        def _endpoint_dir(self) -> str: ...
        def tell(self, step: str, message: str, **numbers: Any) -> None: ...

    # -- running jobs ------------------------------------------------------------------------------
    def job_location(self, text: str, format: str | None = None) -> DataLocation:
        """`run --input/--output` as a DataLocation; a local path from the current folder."""
        return location_from_option(text, format)

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
        import shutil
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
        keep = work_dir is not None  # a folder we made goes, unless the error points into it
        try:
            return run_local(
                spec,
                work,
                conf=self.target.conf,
                master=master,
                timeout=self.target.job_timeout,
                progress=self.progress,
            )
        except DeploymentFailed:  # and its DeploymentTimeout: they name the driver log in it
            keep = True
            raise
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)

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
        self.tell("run", f"submitted Spark batch {batch_id} to pool {self.target.spark_pool}")
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


def _run_id() -> str:
    """Sorts by time, unique across machines."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
