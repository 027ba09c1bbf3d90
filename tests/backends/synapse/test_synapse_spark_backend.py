"""The Spark-mode backend's contract without a Spark: slots, the split of rows, the experiment
salt, undo, render, and the smoke test's limits. The storage is a folder store; the jobs
these would start are run for real in test_synapse_livy.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy import paths
from tdsp_deploy.backends.base import Backend
from tdsp_deploy.backends.synapse import make_backend
from tdsp_deploy.backends.synapse.storage import FolderStore
from tdsp_deploy.errors import EndpointNotFound, UsageError
from tdsp_deploy.packaging import build_package
from tests.fakes.synapse_spark_project import STORAGE, load, make_project


class RecordingLivy:
    """Stands in for the pool where a test only needs to see what would be submitted: each
    batch "succeeds" having written, as the job does, its summary to the spec's result path."""

    def __init__(self, store: FolderStore) -> None:
        self.store = store
        self.bodies: list[dict[str, Any]] = []

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        spec = json.loads(body["args"][0])
        summary = {"state": "success", "rows": 3, "variants": [{"name": v["name"]} for v in spec["variants"]]}
        name = spec["result"]["path"].removeprefix(self.store.root + "/")
        self.store.put_bytes(name, json.dumps(summary).encode())
        return {
            "id": len(self.bodies) - 1,
            "appId": None,
            "appInfo": None,
            "state": "not_started",
            "log": None,
        }

    def wait(self, batch_id: int, *, timeout: float, progress: Any = None) -> dict[str, Any]:
        return {"id": batch_id, "state": "success", "log": ["stdout: ", "\nstderr: ", "\nYARN Diagnostics: "]}


def setup(tmp_path: Path, **target: Any) -> tuple[Backend, Any, RecordingLivy, FolderStore]:
    project = make_project(tmp_path / "p", target=target or None)
    manifest = load(project).manifest
    store = FolderStore(STORAGE, tmp_path / "container")
    livy = RecordingLivy(store)
    return make_backend(manifest, store=store, livy=livy), manifest, livy, store


def test_two_slots_split_rows_by_key_with_a_lasting_experiment_salt(tmp_path: Path) -> None:
    backend, manifest, livy, store = setup(tmp_path)
    package = build_package(manifest, paths.package_store())
    for slot in ("blue", "green"):
        backend.deploy_slot(slot, package)
        backend.wait_healthy(slot)
    backend.set_traffic({"blue": 70, "green": 30})
    assert backend.status().traffic == {"blue": 70, "green": 30}
    backend.set_experiment("exp-42")

    later = make_backend(manifest, store=store, livy=livy)  # another command, another process
    from tdsp_deploy.backends.synapse.target import DataLocation

    summary = later.run_job(DataLocation(path=f"{STORAGE}/in.parquet"), DataLocation(path=f"{STORAGE}/out"))
    assert summary["rows"] == 3 and summary["output"] == f"{STORAGE}/out"  # read from the job's result.json
    spec = json.loads(livy.bodies[-1]["args"][0])
    assert [(v["name"], v["share"]) for v in spec["variants"]] == [("blue", 70), ("green", 30)]
    assert spec["salt"] == "exp-42" and spec["key_column"] == "customer_id"
    # pinned to one slot: that slot takes every row
    later.run_job(
        DataLocation(path=f"{STORAGE}/in.parquet"), DataLocation(path=f"{STORAGE}/out"), slot="green"
    )
    assert [(v["name"], v["share"]) for v in json.loads(livy.bodies[-1]["args"][0])["variants"]] == [
        ("green", 100)
    ]


def test_a_split_without_key_column_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    text = project.read_text().replace("  key_column: customer_id\n", "")
    project.write_text(text)
    manifest = load(project).manifest
    store = FolderStore(STORAGE, tmp_path / "c")
    backend = make_backend(manifest, store=store, livy=RecordingLivy(store))
    package = build_package(manifest, paths.package_store())
    backend.deploy_slot("blue", package)
    backend.deploy_slot("green", package)
    with pytest.raises(UsageError, match="key_column"):
        backend.set_traffic({"blue": 50, "green": 50})
    backend.set_traffic({"blue": 100})  # one slot needs no key
    with pytest.raises(UsageError, match="cannot mirror"):
        backend.set_traffic({"blue": 100}, {"green": 10})


def test_discard_restores_the_previous_record_or_removes_the_slot(tmp_path: Path) -> None:
    backend, manifest, _, store = setup(tmp_path)
    first = build_package(manifest, paths.package_store())
    backend.deploy_slot("blue", first)
    backend.discard_slot("blue")
    assert not backend.status().exists  # a first deploy undone leaves nothing
    backend.deploy_slot("blue", first)
    backend.finalize_slot("blue")
    (tmp_path / "p" / "score.py").write_text((tmp_path / "p" / "score.py").read_text() + "\n# v2\n")
    second = build_package(load(tmp_path / "p" / "deploy.yaml").manifest, paths.package_store())
    assert second.package_id != first.package_id
    backend.deploy_slot("blue", second)
    backend.discard_slot("blue")
    assert backend.status().slot("blue").package_id == first.package_id
    backend.delete()
    with pytest.raises(EndpointNotFound):
        backend.delete()


def test_render_writes_job_spec_livy_request_and_upload_plan(tmp_path: Path) -> None:
    backend, manifest, _, _ = setup(tmp_path, executor={"size": "Large", "count": 3})
    package = build_package(manifest, paths.package_store())
    files = {p.name: p for p in backend.render(package, tmp_path / "out")}
    assert set(files) == {"tdsp_score_job.py", "job-spec.json", "livy-request.json", "upload-plan.json"}
    request = json.loads(files["livy-request.json"].read_text())
    assert request["url"] == (
        "https://contoso-ws.dev.azuresynapse.net/livyApi/versions/2019-11-01-preview/sparkPools/pool1/batches?detailed=true"
    )
    body = request["body"]
    assert (body["executorCores"], body["executorMemory"], body["numExecutors"]) == (16, "112g", 3)
    assert json.loads(body["args"][0]) == json.loads(files["job-spec.json"].read_text())
    plan = json.loads(files["upload-plan.json"].read_text())
    assert [item["name"] for item in plan] == [
        f"packages/{package.package_id}.tar",
        body["file"].split("/deploy/")[1],
    ]


def test_a_smoke_test_of_hundreds_of_jobs_is_refused_up_front(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "sample.json").write_text('{"columns": ["f0"], "data": [[1.0]]}')
    project = make_project(tmp_path / "p", smoke_test={"request": "sample.json"})
    backend = make_backend(load(project).manifest, store=FolderStore(STORAGE, tmp_path / "c"))
    with pytest.raises(UsageError, match="each one is a Spark batch job") as refused:
        backend.preflight()
    assert "requests: 1" in (refused.value.hint or "")


def test_a_latency_objective_is_refused_because_one_job_answers_the_smoke_test(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "sample.json").write_text('{"columns": ["f0"], "data": [[1.0]]}')
    latency = {"requests": 1, "warmup": 0, "concurrency": 1, "p95_ms": 60000}
    project = make_project(tmp_path / "p", smoke_test={"request": "sample.json", "latency": latency})
    backend = make_backend(load(project).manifest, store=FolderStore(STORAGE, tmp_path / "c"))
    with pytest.raises(UsageError, match="p95_ms cannot be checked") as refused:
        backend.preflight()
    assert "job_timeout" in (refused.value.hint or "")


def test_the_same_request_again_is_answered_by_the_job_that_scored_it(tmp_path: Path) -> None:
    """Within one run of callers, a repeated request (the smoke test's latency sample) starts no
    second job: it gets the first job's answer, its batch id, and that job's elapsed time."""
    backend, manifest, livy, store = setup(tmp_path)
    package = build_package(manifest, paths.package_store())
    backend.deploy_slot("blue", package)
    backend.wait_healthy("blue")
    scored = {"rows": 1}

    def scored_output(source: Any, sink: Any, *, slot: Any = None, run_dir: Any = None) -> dict[str, Any]:
        # what the pool's job writes: the request's rows with a label and the model version
        import pandas

        from tdsp_deploy.backends.synapse.spark_backend import parquet_bytes

        name = sink.path.removeprefix(store.root + "/")
        frame = pandas.read_parquet(store.folder / source.path.removeprefix(store.root + "/"))
        store.put_bytes(f"{name}/part-0.parquet", parquet_bytes(frame.assign(label=1, model_version="v1")))
        livy.bodies.append({"slot": slot})
        return {"batch_id": len(livy.bodies) - 1, **scored}

    backend.run_job = scored_output  # type: ignore[method-assign]
    body = b'{"columns": ["f0"], "data": [[1.0], [2.0]]}'
    with backend.callers("blue") as callers:
        first = next(callers)(body)
        again = next(callers)(body)
        other = next(callers)(b'{"columns": ["f0"], "data": [[3.0]]}')
    assert len(livy.bodies) == 2  # the sample once, the other request once
    assert first.status == again.status == other.status == 200
    assert again.body == first.body and json.loads(first.body)["data"] == [[1.0, 1], [2.0, 1]]
    assert again.headers["x-tdsp-answered-by-batch"] == first.headers["x-spark-batch-id"] == "0"
    assert again.elapsed_ms == first.elapsed_ms
    assert "x-tdsp-answered-by-batch" not in first.headers and other.headers["x-spark-batch-id"] == "1"
