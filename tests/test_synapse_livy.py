"""The Livy path end to end: the backend pushes, runs and smoke-tests through a Livy-compatible
server on loopback (tests/livy_server.py) that runs every batch with the local spark-submit.

The storage is a folder standing for the container, mounted by the server as the pool mounts
its ADLS Gen2 account (uploads through the Blob API are tested against Azurite elsewhere).
Failure states come from real batches: a job that raises (dead), one that is cancelled
(killed), one that hangs until the timeout cancels it.
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

from livy_server import LivyServer  # noqa: E402
from test_synapse_spark import STORAGE, expected_scores, load, make_project, rows  # noqa: E402

from tdsp_deploy.backends.synapse import SynapseBackend  # noqa: E402
from tdsp_deploy.backends.synapse.livy import LivyClient  # noqa: E402
from tdsp_deploy.backends.synapse.storage import FolderStore  # noqa: E402
from tdsp_deploy.backends.synapse.target import DataLocation  # noqa: E402
from tdsp_deploy.errors import BackendError, DeploymentFailed, DeploymentTimeout, ExitCode  # noqa: E402
from tdsp_deploy.pipeline import push  # noqa: E402

TOKEN = "test-token-3f9a"
CONTAINER = "abfss://tdsp@contosolake.dfs.core.windows.net"


@pytest.fixture
def container(tmp_path: Path) -> Path:
    folder = tmp_path / "container"
    folder.mkdir()
    return folder


@pytest.fixture
def livy(container: Path):  # type: ignore[no-untyped-def]
    with LivyServer(token=TOKEN, pools={"pool1"}, mounts={CONTAINER: container}) as server:
        yield server


def client(server: LivyServer, token: str = TOKEN, pool: str = "pool1") -> LivyClient:
    return LivyClient(server.endpoint, pool, lambda: token, poll_interval=0.2, max_poll_interval=1.0)


def backend_for(manifest_path: Path, server: LivyServer, container: Path) -> SynapseBackend:
    store = FolderStore(STORAGE, container / STORAGE.removeprefix(CONTAINER + "/"))
    return SynapseBackend(load(manifest_path).manifest, store=store, livy=client(server))


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
    out = pd.read_parquet(container / "data/scored").sort_values("customer_id").reset_index(drop=True)
    np.testing.assert_array_equal(out["label"].to_numpy(), expected_scores(model, frame)["label"].to_numpy())
    assert set(out["model_version"]) == {result.model_version}


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
    assert "the input has no column f1" in failure.value.details["log_tail"]
    # the tail stays with the slot for `tdsp-deploy logs`
    assert "the input has no column f1" in backend.logs("blue", tail=50)


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
        LivyClient("http://127.0.0.1:9", "pool1", lambda: TOKEN, request_timeout=5).get(1)
