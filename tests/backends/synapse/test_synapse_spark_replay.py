"""Synapse's recorded answers replayed, over loopback HTTP, to the real LivyClient and backend.

The answers follow, step by step, the Azure SDK for .NET's recorded live test of a Spark batch
(Azure.Analytics.Synapse.Spark tests, SessionRecords/SparkBatchClientLiveTests/
TestSparkBatchJobCompletesWhenJobComplete.json): the create answers ``not_started`` with a null
``log``; polls see ``not_started``, then ``starting`` with the empty stdout/stderr/YARN frame,
then ``success`` with ten launcher lines (tracking URL, user, shutdown hooks) and
``appInfo.driverLogUrl`` - never a line of the driver's output. The values (ids, names, times)
are this test's; the fields and their order of appearance are the recording's. A request the
replay does not expect fails the test.

What the job would have written to storage is written by the test while the batch "runs".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tdsp_deploy import paths
from tdsp_deploy.backends.synapse import make_backend
from tdsp_deploy.backends.synapse.livy import LivyClient
from tdsp_deploy.backends.synapse.storage import FolderStore
from tdsp_deploy.backends.synapse.target import DataLocation
from tdsp_deploy.errors import DeploymentFailed, ExitCode
from tdsp_deploy.packaging import build_package
from tests.fakes.synapse_spark_project import STORAGE, load, make_project

TOKEN = "replay-token"
BATCHES = "/livyApi/versions/2019-11-01-preview/sparkPools/pool1/batches"
APP = "application_1631617122900_0006"
DRIVER_LOG = f"http://node0:8042/node/containerlogs/container_{APP}_01_000001/trusted-service-user"
FRAME = ["stdout: ", "\nstderr: ", "\nYARN Diagnostics: "]
LAUNCHER_END = [
    f"\t tracking URL: http://node1:8088/proxy/{APP}/",
    "\t user: trusted-service-user",
    "21/09/14 11:10:24 INFO ShutdownHookManager: Shutdown hook called",
    "21/09/14 11:10:24 INFO ShutdownHookManager: Deleting directory /tmp/spark-91e61251",
    "21/09/14 11:10:24 INFO ShutdownHookManager: Deleting directory /tmp/spark-b3f4755d",
    "21/09/14 11:10:24 INFO MetricsSystemImpl: Stopping azure-file-system metrics system...",
    "21/09/14 11:10:24 INFO MetricsSystemImpl: azure-file-system metrics system stopped.",
    "21/09/14 11:10:24 INFO MetricsSystemImpl: azure-file-system metrics system shutdown complete.",
]


def described(batch_id: int, request: dict[str, Any], state: str) -> dict[str, Any]:
    """A GET answer at ``state``, in the recording's shape."""
    started = state != "not_started"
    ended = state in ("success", "dead", "killed")
    return {
        "livyInfo": {"currentState": state, "jobCreationRequest": {"conf": {}, **request}},
        "name": request["name"],
        "workspaceName": "contoso-ws",
        "computeName": "pool1",
        "sparkPoolName": "pool1",
        "artifactId": "Livy",
        "jobType": "SparkBatch",
        "result": {"success": "Succeeded", "dead": "Failed"}.get(state, "Uncertain"),
        "schedulerInfo": {"currentState": "Ended" if ended else ("Scheduled" if started else "Queued")},
        "pluginInfo": {"currentState": "Ended" if ended else ("Monitoring" if started else "Preparation")},
        "tags": request.get("tags", {}),
        "id": batch_id,
        "appId": APP if ended else None,
        "appInfo": (
            {"driverLogUrl": DRIVER_LOG if ended else None, "sparkUiUrl": None, "isSessionTimedOut": None}
            if started
            else None
        ),
        "state": state,
        "log": None if not started else (FRAME if not ended else LAUNCHER_END + FRAME[1:]),
    }


class Replay:
    """Answers POST, then GETs in the recorded order of states; ``on_running`` is called once
    when the batch reaches its last state (what the job does on the pool)."""

    def __init__(self, final: str, on_end: Callable[[dict[str, Any]], None]):
        self.states = ["not_started", "starting", final]
        self.on_end = on_end
        self.request: dict[str, Any] | None = None
        self.unexpected: list[str] = []
        self.batch_id = 4616
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if urlparse(self.path).path != BATCHES or replay.request is not None:
                    replay.unexpected.append(f"POST {self.path}")
                    return self._send(400, {"message": "not in the recording"})
                replay.request = body
                self._send(
                    200,
                    {
                        "id": replay.batch_id,
                        "appId": None,
                        "appInfo": None,
                        "state": "not_started",
                        "log": None,
                    },
                )

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                if (
                    url.path != f"{BATCHES}/{replay.batch_id}"
                    or replay.request is None
                    or "detailed=true" not in url.query
                ):
                    replay.unexpected.append(f"GET {self.path}")
                    return self._send(404, {"message": "not in the recording"})
                state = replay.states.pop(0) if len(replay.states) > 1 else replay.states[0]
                if state in ("success", "dead") and replay.on_end is not None:
                    replay.on_end(replay.request)
                    replay.on_end = None  # type: ignore[assignment]
                self._send(200, described(replay.batch_id, replay.request, state))

        return Handler


@pytest.fixture
def deployed(tmp_path: Path) -> tuple[Any, FolderStore]:
    manifest = load(make_project(tmp_path / "p")).manifest
    store = FolderStore(STORAGE, tmp_path / "container")
    backend = make_backend(manifest, store=store, livy=None)
    package = build_package(manifest, paths.package_store())
    backend.deploy_slot("blue", package)
    backend.wait_healthy("blue")
    backend.set_traffic({"blue": 100})
    return manifest, store


def run_replayed(
    manifest: Any, store: FolderStore, final: str, on_end: Callable[[dict[str, Any]], None]
) -> Any:
    replay = Replay(final, on_end)
    try:
        livy = LivyClient(replay.endpoint, "pool1", lambda: TOKEN, poll_interval=0.01, max_poll_interval=0.01)
        backend = make_backend(manifest, store=store, livy=livy)
        return backend.run_job(
            DataLocation(path=f"{STORAGE}/in.parquet"), DataLocation(path=f"{STORAGE}/scored")
        )
    finally:
        replay.close()
        assert replay.unexpected == []


def job_writes(store: FolderStore, doc: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def write(request: dict[str, Any]) -> None:
        spec = json.loads(request["args"][0])
        store.put_bytes(spec["result"]["path"].removeprefix(store.root + "/"), json.dumps(doc).encode())

    return write


def test_run_reports_the_rows_and_output_the_job_wrote_to_storage(deployed: Any) -> None:
    manifest, store = deployed
    summary = {
        "state": "success",
        "rows": 1500,
        "output": "/mnt/elsewhere/scored",
        "format": "parquet",
        "variants": [{"name": "blue", "model_version": "1", "rows": 1500}],
        "messages": ["reading ...", "wrote 1500 rows"],
    }
    result = run_replayed(manifest, store, "success", job_writes(store, summary))
    assert result["rows"] == 1500 and result["state"] == "success" and result["batch_id"] == 4616
    assert result["output"] == f"{STORAGE}/scored"  # what was asked for, not the job's own view of it
    assert result["variants"] == summary["variants"] and result["driver_log"] == DRIVER_LOG
    assert result["result"].startswith(f"{STORAGE}/endpoints/churn/runs/") and result["result"].endswith(
        "/result.json"
    )
    assert "messages" not in result


def test_a_success_without_its_result_is_a_failure_not_a_question_mark(deployed: Any) -> None:
    """Before: `run` printed "scored ? rows into ?" and exited 0."""
    manifest, store = deployed
    with pytest.raises(DeploymentFailed, match="ended success but its job wrote no summary") as failed:
        run_replayed(manifest, store, "success", lambda request: None)
    assert failed.value.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert DRIVER_LOG in (failed.value.hint or "")


def test_a_dead_batch_shows_the_drivers_traceback_from_storage(deployed: Any) -> None:
    manifest, store = deployed
    error = {
        "state": "failed",
        "error": "ValueError: the input has no column f1",
        "traceback": 'Traceback (most recent call last):\n  File "tdsp_score_job.py", line 1\n'
        "ValueError: the input has no column f1",
        "messages": ["reading abfss://..."],
    }
    with pytest.raises(DeploymentFailed) as failed:
        run_replayed(manifest, store, "dead", job_writes(store, error))
    message = failed.value.message
    assert message.startswith("Spark batch 4616 on pool pool1 ended dead:\nTraceback")
    assert message.endswith("ValueError: the input has no column f1")
    assert "ShutdownHookManager" not in message  # the launcher's noise stays in the details
    assert "ShutdownHookManager" in failed.value.details["log_tail"]


def test_the_run_command_prints_the_rows_and_output_replaying_the_recording(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tdsp-deploy run` as a user runs it: storage through the Blob API (a Blob service on
    loopback), the workspace answering as recorded, the token from a managed identity.
    Before: "scored ? rows into ?"."""
    from tests.fakes.blob_service import BlobService
    from tests.fakes.identity_endpoint import ManagedIdentityEndpoint

    project = make_project(tmp_path / "p")
    with BlobService() as service, ManagedIdentityEndpoint(TOKEN) as identity:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", service.connection_string)
        for name, value in identity.environ.items():
            monkeypatch.setenv(name, value)
        assert cli("push", project).exit_code == 0
        from tdsp_deploy.backends.synapse.storage import BlobStore

        store = BlobStore.connect(STORAGE)
        summary = {"state": "success", "rows": 1500, "variants": [{"name": "blue", "rows": 1500}]}

        def job(request: dict[str, Any]) -> None:
            spec = json.loads(request["args"][0])
            store.put_bytes(
                spec["result"]["path"].removeprefix(store.root + "/"), json.dumps(summary).encode()
            )

        replay = Replay("success", job)
        monkeypatch.setenv("TDSP_SYNAPSE_ENDPOINT", replay.endpoint)
        try:
            ran = cli("run", project, "-i", f"{STORAGE}/in.parquet", "-o", f"{STORAGE}/scored")
        finally:
            replay.close()
    assert replay.unexpected == []
    assert ran.exit_code == 0, ran.stderr
    assert f"scored 1500 rows into {STORAGE}/scored" in ran.stderr
