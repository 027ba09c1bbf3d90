"""The Livy path end to end: the backend pushes, runs and smoke-tests through a Livy-compatible
server on loopback (tests/fakes/livy_server.py) that runs every batch with the local spark-submit.

The storage is a folder standing for the container, mounted by the server as the pool mounts
its ADLS Gen2 account (uploads through the Blob API are tested against Azurite elsewhere).
Failure states come from real batches: a job that raises (dead), one that is cancelled
(killed), one that hangs until the timeout cancels it. The server answers as Synapse does
(livy_server.py): a `log` of at most 10 launcher lines, the driver's output only behind
appInfo.driverLogUrl, so what the job scored or why it failed is read from its result.json.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark")

from tdsp_deploy.backends.base import Backend  # noqa: E402
from tdsp_deploy.backends.synapse import make_backend  # noqa: E402
from tdsp_deploy.backends.synapse.livy import LivyClient  # noqa: E402
from tdsp_deploy.backends.synapse.storage import FolderStore  # noqa: E402
from tdsp_deploy.backends.synapse.target import DataLocation  # noqa: E402
from tdsp_deploy.errors import BackendError, DeploymentFailed, DeploymentTimeout, ExitCode  # noqa: E402
from tdsp_deploy.pipeline import push  # noqa: E402
from tests.fakes.livy_server import LOG_LINES, LivyServer  # noqa: E402
from tests.fakes.synapse_rest_spec import validate  # noqa: E402
from tests.fakes.synapse_spark_project import STORAGE, expected_scores, load, make_project, rows  # noqa: E402

TOKEN = "test-token-3f9a"
CONTAINER = "abfss://tdsp@contosolake.dfs.core.windows.net"


@pytest.fixture
def container(tmp_path: Path) -> Path:
    folder = tmp_path / "container"
    folder.mkdir()
    return folder


@pytest.fixture
def livy(container: Path):  # type: ignore[no-untyped-def]
    with LivyServer(token=TOKEN, pools={"pool1": "Small"}, mounts={CONTAINER: container}) as server:
        yield server


def client(server: LivyServer, token: str = TOKEN, pool: str = "pool1", **options: Any) -> LivyClient:
    options = {"poll_interval": 0.2, "max_poll_interval": 1.0, "retry_pause": 0.1, **options}
    return LivyClient(server.endpoint, pool, lambda: token, **options)


def batch_answers(server: LivyServer, batch_id: int) -> list[dict[str, Any]]:
    """Every answer the server gave about one batch, as the client got it."""
    import requests

    url = f"{server.endpoint}/livyApi/versions/2019-11-01-preview/sparkPools/pool1/batches/{batch_id}"
    return [
        requests.get(url, params={"detailed": "true"}, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    ]


def backend_for(manifest_path: Path, server: LivyServer, container: Path) -> Backend:
    store = FolderStore(STORAGE, container / STORAGE.removeprefix(CONTAINER + "/"))
    return make_backend(load(manifest_path).manifest, store=store, livy=client(server))


def smoke_files(folder: Path, model: Any) -> dict[str, Any]:
    sample = rows(6)
    request = {"columns": list(sample.columns), "data": json.loads(sample.to_json(orient="values"))}
    scored = pd.concat([sample, expected_scores(model, sample)], axis=1)
    expect = json.loads(scored.to_json(orient="split", index=False))
    (folder / "sample.json").write_text(json.dumps(request))
    (folder / "expected.json").write_text(json.dumps({"columns": expect["columns"], "data": expect["data"]}))
    return {
        "request": "sample.json",
        "expect": "expected.json",
        "tolerance": 1e-9,
        "latency": {"requests": 1, "warmup": 0, "concurrency": 1},
    }


@pytest.mark.timeout(1200)  # two Spark jobs, each a JVM start, on a machine shared by many tests
def test_push_submits_the_job_and_its_smoke_test_through_livy(
    tmp_path: Path, livy: LivyServer, container: Path
) -> None:
    folder = tmp_path / "p"
    project = make_project(folder)
    model = pickle.loads((folder / "model/model.pkl").read_bytes())
    project = make_project(folder, smoke_test=smoke_files(folder, model))
    loaded = load(project)
    backend = backend_for(project, livy, container)

    result = push(loaded, backend)

    assert result.smoke is not None and result.smoke.passed
    status = backend.status()
    assert status.traffic == {"blue": 100}
    assert status.slot("blue").state == "healthy"
    # what reached "Synapse": the documented request, sized by the target, the job in storage
    posts = [body for method, _, body in livy.requests if method == "POST"]
    # one Spark job answers the smoke test: the sample's answer, and its latency sample
    assert len(posts) == 1
    assert result.smoke.latency is not None and result.smoke.latency.requests == 1
    body = posts[0]
    assert body["file"].startswith(STORAGE + "/jobs/") and body["file"].endswith("/tdsp_score_job.py")
    assert (body["driverCores"], body["driverMemory"], body["numExecutors"]) == (4, "28g", 2)
    spec = json.loads(body["args"][0])
    assert spec["variants"][0]["package"] == f"{STORAGE}/packages/{result.package_id}.tar"
    assert spec["input"]["path"].startswith(STORAGE + "/endpoints/churn/runs/")

    # re-running the same push is a no-op: no upload, no job
    again = push(loaded, backend)
    assert again.unchanged and len([m for m, _, _ in livy.requests if m == "POST"]) == 1

    # a scheduled run on the endpoint: abfss in, abfss out, every row scored
    frame = rows(400)
    (container / "data").mkdir()
    frame.to_parquet(container / "data/rows.parquet", index=False)
    summary = backend.run_job(
        DataLocation(path=f"{CONTAINER}/data/rows.parquet"), DataLocation(path=f"{CONTAINER}/data/scored")
    )
    assert summary["state"] == "success" and summary["rows"] == 400
    assert summary["output"] == f"{CONTAINER}/data/scored"
    assert summary["variants"] == [{"name": "blue", "model_version": result.model_version, "rows": 400}]
    out = pd.read_parquet(container / "data/scored").sort_values("customer_id").reset_index(drop=True)
    np.testing.assert_array_equal(out["label"].to_numpy(), expected_scores(model, frame)["label"].to_numpy())
    assert set(out["model_version"]) == {result.model_version}

    # what Synapse answered: the definition's shape; a log of launcher lines, not the driver's
    final = batch_answers(livy, summary["batch_id"])[0]
    assert validate(final) == [] and final["state"] == "success" and final["result"] == "Succeeded"
    assert 0 < len(final["log"]) <= LOG_LINES
    assert not any("tdsp-job" in line or "rows" in line for line in final["log"])
    import requests

    driver_log = requests.get(final["appInfo"]["driverLogUrl"]).text
    assert "tdsp-job: wrote 400 rows" in driver_log  # the driver's output is only there
    assert summary["driver_log"] == final["appInfo"]["driverLogUrl"]


def test_a_job_that_fails_is_dead_with_its_log_tail(
    tmp_path: Path, livy: LivyServer, container: Path
) -> None:
    project = make_project(tmp_path / "p")
    backend = backend_for(project, livy, container)
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package

    package = build_package(load(project).manifest, paths.package_store())
    backend.deploy_slot("blue", package)
    backend.wait_healthy("blue")
    backend.set_traffic({"blue": 100})
    (container / "data").mkdir()
    rows(5).drop(columns=["f1"]).to_parquet(container / "data/bad.parquet", index=False)

    with pytest.raises(DeploymentFailed) as failure:
        backend.run_job(
            DataLocation(path=f"{CONTAINER}/data/bad.parquet"),
            DataLocation(path=f"{CONTAINER}/o"),
            slot="blue",
        )
    assert failure.value.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "ended dead" in failure.value.message
    # the driver's traceback, from the result.json the job saved; the batch's log has none of it
    assert "ValueError: the input has no column f1" in failure.value.message
    assert "Traceback (most recent call last)" in failure.value.details["error"]
    assert "the input has no column f1" not in failure.value.details["log_tail"]
    assert "driverLogUrl" not in failure.value.message and "/node/containerlogs/" in (
        failure.value.hint or ""
    )
    # the error stays with the slot for `tdsp-deploy logs`
    logged = backend.logs("blue", tail=80)
    assert "the input has no column f1" in logged and "driver log: http://" in logged


SLEEPER = "import time\nprint('tdsp-job: waiting', flush=True)\ntime.sleep(600)\n"


def test_a_hung_job_is_cancelled_at_the_timeout(livy: LivyServer, container: Path) -> None:
    (container / "sleep.py").write_text(SLEEPER)
    livy_client = client(livy)
    batch = livy_client.submit({"name": "hung", "file": f"{CONTAINER}/sleep.py"})
    with pytest.raises(DeploymentTimeout) as timeout:
        livy_client.wait(batch["id"], timeout=25)
    assert "was cancelled" in timeout.value.message
    server_batch = livy.batches[batch["id"]]
    assert server_batch.state == "killed"
    assert server_batch.process is None or server_batch.process.poll() is not None  # nothing left running


def test_a_cancelled_job_ends_killed(livy: LivyServer, container: Path) -> None:
    (container / "sleep.py").write_text(SLEEPER)
    livy_client = client(livy)
    batch = livy_client.submit({"name": "cancel-me", "file": f"{CONTAINER}/sleep.py"})
    deadline = time.monotonic() + 120
    while livy_client.get(batch["id"])["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    livy_client.cancel(batch["id"])
    with pytest.raises(DeploymentFailed, match="ended killed"):
        livy_client.wait(batch["id"], timeout=60)


def test_a_missing_job_file_is_dead_with_the_reason(livy: LivyServer) -> None:
    livy_client = client(livy)
    batch = livy_client.submit({"name": "nofile", "file": f"{CONTAINER}/jobs/none.py"})
    with pytest.raises(DeploymentFailed) as failure:
        livy_client.wait(batch["id"], timeout=60)
    assert "FileNotFoundException" in failure.value.message


def test_auth_pool_and_request_errors_are_backend_errors(livy: LivyServer) -> None:
    with pytest.raises(BackendError, match="HTTP 401") as refused:
        client(livy, token="wrong").submit({"name": "x", "file": f"{CONTAINER}/a.py"})
    assert refused.value.exit_code == ExitCode.BACKEND and "wrong" not in refused.value.message
    with pytest.raises(BackendError, match="HTTP 404") as missing:
        client(livy, pool="nopool").submit({"name": "x", "file": f"{CONTAINER}/a.py"})
    assert "pool 'nopool' exists" in (missing.value.hint or "")
    with pytest.raises(BackendError, match="HTTP 400"):
        client(livy).submit({"name": "x", "file": f"{CONTAINER}/a.py", "numExecutors": "2"})
    with pytest.raises(BackendError, match="could not reach"):
        LivyClient("http://127.0.0.1:9", "pool1", lambda: TOKEN, request_timeout=5, retry_pause=0.01).get(1)


# -- Synapse's answers and limits, through the real LivyClient (no Spark needed: the batches stay
# queued, as a busy pool keeps them) ---------------------------------------------------------------
@pytest.fixture
def queued(container: Path):  # type: ignore[no-untyped-def]
    with LivyServer(
        token=TOKEN, pools={"pool1": "Small"}, mounts={CONTAINER: container}, start_delay=600
    ) as server:
        yield server


def test_the_create_answer_is_the_recorded_one_and_every_answer_fits_the_definition(
    queued: LivyServer,
) -> None:
    livy_client = client(queued)
    created = livy_client.submit({"name": "shape", "file": f"{CONTAINER}/a.py", "tags": {"k": "v"}})
    assert created == {
        "id": created["id"],
        "appId": None,
        "appInfo": None,
        "state": "not_started",
        "log": None,
    }
    described = livy_client.get(created["id"])
    assert validate(described) == []
    assert described["livyInfo"]["jobCreationRequest"]["file"] == f"{CONTAINER}/a.py"
    assert described["schedulerInfo"]["currentState"] == "Queued" and described["log"] is None
    livy_client.cancel(created["id"])
    cancelled = livy_client.get(created["id"])
    assert validate(cancelled) == [] and cancelled["state"] == "killed" and cancelled["result"] == "Cancelled"
    # the check itself can say no
    assert validate({"id": "7", "result": "Done", "log": [1]}) != []


def test_creates_faster_than_the_workspace_allows_wait_for_retry_after(queued: LivyServer) -> None:
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    livy_client = client(queued, sleep=sleep)
    ids = [livy_client.submit({"name": f"b{i}", "file": f"{CONTAINER}/a.py"})["id"] for i in range(3)]
    assert len(set(ids)) == 3  # each create made one batch, none twice
    posts = [m for m, path, _ in queued.requests if m == "POST"]
    assert len(posts) == 4 and pauses == [1.0]  # the third was refused once (429), then waited Retry-After
    # a client that may not wait gets the 429 as an error that says so
    time.sleep(1.1)
    impatient = client(queued, max_tries=1)
    impatient.submit({"name": "x", "file": f"{CONTAINER}/a.py"})
    impatient.submit({"name": "y", "file": f"{CONTAINER}/a.py"})
    with pytest.raises(BackendError, match="too many requests") as refused:
        impatient.submit({"name": "z", "file": f"{CONTAINER}/a.py"})
    assert "2 batch submissions and 200 status reads a second" in (refused.value.hint or "")


def test_polling_retries_429_and_5xx_honouring_retry_after(queued: LivyServer) -> None:
    pauses: list[float] = []
    livy_client = client(queued, sleep=pauses.append)
    batch = livy_client.submit({"name": "poll", "file": f"{CONTAINER}/a.py"})
    queued.faults += [("GET", 429, "3"), ("GET", 503, None), ("GET", 502, None)]
    assert livy_client.get(batch["id"])["id"] == batch["id"]
    assert pauses == [3.0, 0.2, 0.4]  # Retry-After as given, else a doubling pause (from 0.1)


def test_polling_that_keeps_failing_cancels_the_batch(queued: LivyServer) -> None:
    livy_client = client(queued, sleep=lambda s: None, max_tries=3)
    batch = livy_client.submit({"name": "lost", "file": f"{CONTAINER}/a.py"})
    queued.faults += [("GET", 503, None)] * 3
    with pytest.raises(BackendError, match="HTTP 503 after 3 tries") as lost:
        livy_client.wait(batch["id"], timeout=60)
    assert f"batch {batch['id']} was cancelled" in lost.value.message
    assert (
        "DELETE",
        f"/livyApi/versions/2019-11-01-preview/sparkPools/pool1/batches/{batch['id']}",
        None,
    ) in queued.requests
    assert queued.batches[batch["id"]].state == "killed"


def test_sizes_beyond_the_pool_node_and_large_bodies_are_refused(queued: LivyServer) -> None:
    livy_client = client(queued)
    body = {"name": "big", "file": f"{CONTAINER}/a.py", "driverCores": 4, "driverMemory": "28g"}
    livy_client.submit(body)  # a Small driver fits a Small pool
    with pytest.raises(BackendError, match="HTTP 400.*exceeds the node size of the pool"):
        livy_client.submit({**body, "executorCores": 8, "executorMemory": "56g"})
    with pytest.raises(BackendError, match="HTTP 400.*not a Spark job size"):
        livy_client.submit({**body, "driverMemory": "30g"})
    posts = sum(1 for method, _, _ in queued.requests if method == "POST")
    with pytest.raises(BackendError, match="Synapse takes at most 102400"):
        livy_client.submit({**body, "args": ["x" * 110_000]})
    assert sum(1 for method, _, _ in queued.requests if method == "POST") == posts  # not even sent
    import requests

    url = f"{queued.endpoint}/livyApi/versions/2019-11-01-preview/sparkPools/pool1/batches"
    refused = requests.post(
        url, json={**body, "args": ["x" * 110_000]}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert refused.status_code == 413  # the server says no on its own
