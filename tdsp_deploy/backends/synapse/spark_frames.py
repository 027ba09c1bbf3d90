"""Calls to the synapse target in Spark mode: a JSON table request written as a parquet frame,
scored by a job pinned to a slot, and the scored frame read back as the answer.

``SparkCalls`` is mixed into ``SparkBackend`` (spark_backend.py); ``run_job`` comes from
``SparkJobs`` (spark_jobs.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import (
    REPLAYED_ANSWER_HEADER,
    Caller,
    InvokeResult,
)
from tdsp_deploy.backends.synapse.spark_jobs import _run_id
from tdsp_deploy.backends.synapse.target import DataLocation
from tdsp_deploy.errors import DeploymentFailed

if TYPE_CHECKING:
    from tdsp_deploy.backends.synapse.storage import Store


#: A push's smoke test runs one Spark job per distinct request: more than this is refused.
MAX_SMOKE_JOBS = 3
ROW_INDEX = "_tdsp_row"
#: On an answer given again from the job that answered the same request before: that job's id.
REPLAY_HEADER = REPLAYED_ANSWER_HEADER


class SparkCalls:
    """The calling half of SparkBackend."""

    if TYPE_CHECKING:  # provided by SparkBackend and SparkJobs
        store: Store

        def _endpoint_dir(self) -> str: ...
        def run_job(
            self,
            source: DataLocation | None = None,
            sink: DataLocation | None = None,
            *,
            slot: str | None = None,
            run_dir: str | None = None,
        ) -> dict[str, Any]: ...

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


def _answer(status: int, doc: Any, started: float) -> InvokeResult:
    return InvokeResult(
        status=status,
        body=json.dumps(doc).encode(),
        headers={"content-type": "application/json"},
        elapsed_ms=(time.perf_counter() - started) * 1e3,
    )
