"""The Spark mode from the command line, as a user or a scheduler runs it, with nothing handed
in: the storage is Azurite (AZURE_STORAGE_CONNECTION_STRING), the workspace is the Livy server
on loopback (TDSP_SYNAPSE_ENDPOINT) whose pool reads and writes that same container, and the
Synapse token comes from DefaultAzureCredential through a managed identity's token service.

- `run` without --local submits the job for the deployed slots and reports the rows and output
  the job wrote to its result.json (the batch's `log` holds only launcher lines, as on
  Synapse); a job that dies exits 4 with the driver's traceback from that same file;
- a 50/50 split run logs which version scored which key, so that `ab status` counts the rows
  per variant and `ab analyze --outcomes` joins business outcomes to them by key.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.fakes.azurite import Azurite, azurite_blob

pytest.importorskip("pyspark")

from tests.fakes.identity_endpoint import ManagedIdentityEndpoint  # noqa: E402
from tests.fakes.livy_server import LOG_LINES, BlobMount, LivyServer  # noqa: E402
from tests.fakes.synapse_spark_project import expected_scores, make_project, rows  # noqa: E402

pytestmark = pytest.mark.skipif(
    azurite_blob() is None, reason="Azurite needs node and the npm package azurite (.ci/run installs both)"
)

TOKEN = "synapse-token-51c2"
CONTAINER = "tdsp"
ROOT = f"abfss://{CONTAINER}@contosolake.dfs.core.windows.net"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with Azurite(tmp_path_factory.mktemp("azurite")) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> Any:
    client = azurite.service().get_container_client(CONTAINER)
    client.create_container()
    return client


@pytest.fixture(scope="module")
def identity():  # type: ignore[no-untyped-def]
    with ManagedIdentityEndpoint(TOKEN) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def livy(container: Any, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    mount = BlobMount(container, tmp_path_factory.mktemp("pool-view"))
    with LivyServer(token=TOKEN, pools={"pool1": "Small"}, blob_mounts={ROOT: mount}) as server:
        yield server


@pytest.fixture
def environ(
    azurite: Azurite, livy: LivyServer, identity: ManagedIdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """What the user's shell would hold: where the workspace and storage are, and the identity."""
    settings = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "TDSP_SYNAPSE_ENDPOINT": livy.endpoint,
        **identity.environ,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)  # for the commands run in this process
    return dict(os.environ)


def project_in(folder: Path, prefix: str, **extra: Any) -> Path:
    """A project whose storage root is its own folder of the container."""
    return make_project(folder, target={"storage": f"{ROOT}/{prefix}"}, **extra)


def tdsp(*args: str | Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed command line, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "tdsp_deploy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
        env=environ,
        stdin=subprocess.DEVNULL,
    )


def upload_rows(container: Any, name: str, frame: pd.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    container.upload_blob(name, buffer.getvalue(), overwrite=True)
    return f"{ROOT}/{name}"


def read_scored(container: Any, prefix: str) -> pd.DataFrame:
    parts = [
        b.name for b in container.list_blobs(name_starts_with=prefix + "/") if b.name.endswith(".parquet")
    ]
    assert parts, f"no parquet under {prefix}"
    frames = [pd.read_parquet(io.BytesIO(container.download_blob(p).readall())) for p in parts]
    return pd.concat(frames, ignore_index=True).sort_values("customer_id").reset_index(drop=True)


def batches_posted(livy: LivyServer) -> int:
    return sum(1 for method, _, _ in livy.requests if method == "POST")


@pytest.mark.timeout(900)
def test_run_submits_the_job_through_livy_and_reports_the_result(
    tmp_path: Path,
    environ: dict[str, str],
    container: Any,
    livy: LivyServer,
    identity: ManagedIdentityEndpoint,
) -> None:
    project = project_in(tmp_path / "p", "run-ok")
    pushed = tdsp("push", project, "--json", environ=environ)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    version = json.loads(pushed.stdout)["model_version"]
    frame = rows(400)
    source = upload_rows(container, "run-ok/data/rows.parquet", frame)
    posted = batches_posted(livy)

    result = tdsp(
        "run", project, "--input", source, "--output", f"{ROOT}/run-ok/data/scored", "--json", environ=environ
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["local"] is False and summary["state"] == "success" and summary["rows"] == 400
    assert summary["output"] == f"{ROOT}/run-ok/data/scored"
    assert summary["variants"] == [{"name": "blue", "model_version": version, "rows": 400}]
    # read from the job's result.json in the container, not from the batch's log
    assert summary["result"].startswith(f"{ROOT}/run-ok/endpoints/churn/runs/")
    final = livy.batches[summary["batch_id"]].describe()
    # the row count as a word: an application id or a port may contain the digits
    assert len(final["log"]) <= LOG_LINES and not any(re.search(r"\b400\b", line) for line in final["log"])
    assert f"submitted Spark batch {summary['batch_id']} to pool pool1" in result.stderr
    assert batches_posted(livy) == posted + 1
    # the token came from the managed identity, for the Synapse development endpoint
    assert "https://dev.azuresynapse.net" in identity.resources
    # every row, scored by the deployed version, is in the storage
    out = read_scored(container, "run-ok/data/scored")
    model = pickle.loads((tmp_path / "p/model/model.pkl").read_bytes())
    np.testing.assert_array_equal(out["label"].to_numpy(), expected_scores(model, frame)["label"].to_numpy())
    np.testing.assert_allclose(
        out["p1"].to_numpy(), expected_scores(model, frame)["p1"].to_numpy(), atol=1e-12
    )
    assert set(out["model_version"]) == {version}


@pytest.mark.timeout(900)
def test_run_of_a_job_that_dies_exits_4_with_its_log_tail(
    tmp_path: Path, environ: dict[str, str], container: Any
) -> None:
    project = project_in(tmp_path / "p", "run-dead")
    assert tdsp("push", project, environ=environ).returncode == 0
    source = upload_rows(container, "run-dead/data/bad.parquet", rows(5).drop(columns=["f1"]))

    result = tdsp("run", project, "-i", source, "-o", f"{ROOT}/run-dead/data/scored", environ=environ)

    assert result.returncode == 4, result.stderr[-3000:]
    assert "ended dead" in result.stderr
    # the driver's own error, from the result.json the job saved beside its run
    assert "ValueError: the input has no column f1" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert not list(container.list_blobs(name_starts_with="run-dead/data/scored"))


# An effect small enough that 3,000 rows stay short of the planned sample: the primary metric
# then compares every outcome collected (past the plan it compares the first planned outcomes
# of each version only), so its rates are those of all the rows each version scored.
AB = {"minimum_detectable_effect": 0.02, "baseline": 0.3, "primary_metric": {"type": "binary"}}


@pytest.mark.timeout(900)
def test_ab_status_and_analyze_read_the_rows_each_version_scored(
    tmp_path: Path, environ: dict[str, str], container: Any, livy: LivyServer, cli: Any
) -> None:
    folder = tmp_path / "p"
    project = project_in(folder, "ab", ab=AB)
    assert cli("push", project).exit_code == 0  # blue
    manifest = yaml.safe_load(project.read_text())
    make_project(folder, seed=3, target=manifest["target"], ab=AB)  # another model
    assert cli("push", project).exit_code == 0  # green
    started = cli(
        "ab", "start", project, "--control", "blue", "--treatment", "green", "--split", "50", "--json"
    )
    assert started.exit_code == 0, started.stderr
    frame = rows(3000, seed=5)
    source = upload_rows(container, "ab/data/rows.parquet", frame)
    posted = batches_posted(livy)

    ran = cli("run", project, "-i", source, "-o", f"{ROOT}/ab/data/scored", "--json")

    assert ran.exit_code == 0, ran.stderr[-3000:]
    assert batches_posted(livy) == posted + 1
    out = read_scored(container, "ab/data/scored")
    scored = out["variant"].value_counts().to_dict()
    assert set(scored) == {"blue", "green"} and abs(scored["green"] / 3000 - 0.50) < 0.04
    # the per-variant counts the job wrote to its result.json are what it wrote to the output
    summary = ran.json()
    assert {v["name"]: v["rows"] for v in summary["variants"]} == scored and summary["rows"] == 3000
    # the run record that `ab` reads is there
    assert [
        b.name
        for b in container.list_blobs(name_starts_with="ab/endpoints/churn/requests/")
        if b.name.endswith("/run.json")
    ]

    status = cli("ab", "status", project, "--json")
    assert status.exit_code == 0, status.stderr
    assert status.json()["collected"] == scored  # every row, counted for the version that scored it

    # the business outcome of each customer arrives later, keyed by the key column
    outcomes = tmp_path / "outcomes.csv"
    pd.DataFrame({"request_id": out["customer_id"], "outcome": (out["label"] == 1).astype(int)}).to_csv(
        outcomes, index=False
    )
    analyzed = cli("ab", "analyze", project, "--outcomes", outcomes, "--json")
    assert analyzed.exit_code in (0, 8), analyzed.stderr
    document = analyzed.json()
    assert {name: doc["n"] for name, doc in document["variants"].items()} == scored
    assert document["sample_size"]["collected"] == scored  # every key met its outcome
    metric = next(m for m in document["metrics"] if m["name"] == "outcome")
    for role, variant in (("control", "blue"), ("treatment", "green")):
        rate = (out.loc[out["variant"] == variant, "label"] == 1).mean()
        assert metric[role] == pytest.approx(rate)  # the outcome rate of the rows that version scored
