"""The Spark mode's endpoint lock, against Azurite (a real Blob service with real conditional
requests): a second command waits for the first or gives up (exit 3), a lock whose holder died
is taken over, a live holder keeps its lock by renewing it, and commands never interleave."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy.backends.base import Backend
from tdsp_deploy.backends.synapse import make_backend
from tdsp_deploy.backends.synapse.blob_lease import BlobLease
from tdsp_deploy.backends.synapse.storage import BlobStore, FolderStore
from tdsp_deploy.errors import BackendError, ExitCode
from tests.fakes.azurite import Azurite, azurite_blob
from tests.fakes.synapse_spark_project import load, make_project

pytestmark = pytest.mark.skipif(
    azurite_blob() is None, reason="Azurite needs node and the npm package azurite (.ci/run installs both)"
)

LOCK = "endpoints/churn/lock.json"

# Another command holding the endpoint's lock: a separate process, the backend built from the
# manifest exactly as the CLI builds it (storage from AZURE_STORAGE_CONNECTION_STRING).
HOLDER = """\
import sys, time
from pathlib import Path
from tdsp_deploy.backends.synapse import make_backend
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.manifest import load_manifest

manifest, seconds, marker = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
backend = make_backend(load_manifest(Path(manifest), targets=(SynapseTarget,)).manifest)
with backend.lock(timeout=60):
    print("held", flush=True)
    time.sleep(seconds)
    marker.write_text("done")
print("released", flush=True)
"""


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with Azurite(tmp_path_factory.mktemp("azurite")) as emulator:
        yield emulator


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    # one container per test, so that tests never see each other's locks
    container = "l" + str(abs(hash(request.node.name)))[:12]
    return make_project(
        tmp_path / "p", target={"storage": f"abfss://{container}@contosolake.dfs.core.windows.net/deploy"}
    )


@pytest.fixture
def environ(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return dict(os.environ)


def backend_for(project: Path, events: list[str] | None = None) -> Backend:
    progress = (lambda e: events.append(e.message)) if events is not None else (lambda e: None)
    return make_backend(load(project).manifest, progress=progress)


def start_holder(
    project: Path, seconds: float, marker: Path, environ: dict[str, str]
) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(project), str(seconds), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environ,
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()  # blocks until the lock is held (or the process failed)
    assert line.strip() == "held", line + holder.stdout.read()
    return holder


def test_a_second_command_waits_for_the_first_and_then_holds_the_lock(
    tmp_path: Path, project: Path, environ: dict[str, str]
) -> None:
    marker = tmp_path / "first-done"
    holder = start_holder(project, 6.0, marker, environ)
    events: list[str] = []
    backend = backend_for(project, events)
    try:
        with backend.lock(timeout=120):
            # only once the first command left its locked block
            assert marker.exists()
            doc = json.loads(backend.store.get_bytes(LOCK) or b"{}")
            assert doc["pid"] == os.getpid()
    finally:
        holder.wait(timeout=60)
    assert any(f"is locked by pid {holder.pid}" in m and "waiting up to 120 s" in m for m in events), events
    assert backend.store.get_bytes(LOCK) is None  # released


def test_a_command_gives_up_with_exit_3_and_a_dead_holders_lock_is_taken_over(
    tmp_path: Path, project: Path, environ: dict[str, str], cli: Any
) -> None:
    holder = start_holder(project, 600, tmp_path / "never", environ)
    try:
        # the real CLI: a push that cannot get the lock within --lock-timeout exits 3
        refused = cli("push", project, "--lock-timeout", "2", environ=environ)
        assert refused.exit_code == ExitCode.BACKEND == 3, refused.stderr
        assert f"endpoint 'churn' is locked by another command (pid {holder.pid}" in refused.stderr
        assert "--lock-timeout" in refused.stderr
        assert not backend_for(project).status().exists  # nothing was deployed
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: no release, no more renewals
        holder.wait(timeout=60)
    backend = backend_for(project)
    left = json.loads(backend.store.get_bytes(LOCK) or b"{}")
    assert left["pid"] == holder.pid and left["expires_at"] > time.time() + 30  # not expired yet

    events: list[str] = []
    with backend_for(project, events).lock(timeout=30):
        assert json.loads(backend.store.get_bytes(LOCK) or b"{}")["pid"] == os.getpid()
    assert any(
        f"took over a stale lock on endpoint 'churn' (process {holder.pid} on this machine" in m
        for m in events
    ), events


def store_of(project: Path) -> BlobStore:
    return backend_for(project).store  # type: ignore[return-value]


def test_an_expired_lock_of_another_machine_is_taken_over_a_live_one_is_not(
    project: Path, environ: dict[str, str]
) -> None:
    store = store_of(project)
    alive = {"host": "build-agent-7", "pid": 4242, "token": "x", "expires_at": time.time() + 300}
    store.put_bytes(LOCK, json.dumps(alive).encode())
    with pytest.raises(BackendError, match="pid 4242 on build-agent-7"):
        BlobLease(store, LOCK, "churn", timeout=1.5).__enter__()

    store.put_bytes(LOCK, json.dumps(alive | {"expires_at": time.time() - 5}).encode())
    told: list[str] = []
    with BlobLease(store, LOCK, "churn", timeout=5, on_wait=told.append) as lock:
        assert json.loads(store.get_bytes(LOCK) or b"{}")["token"] == lock.token
    assert told == ["took over a stale lock on endpoint 'churn' (its holder stopped renewing it)"]
    assert store.get_bytes(LOCK) is None


def test_a_holder_that_renews_keeps_its_lock_past_the_ttl(project: Path, environ: dict[str, str]) -> None:
    store = store_of(project)
    with BlobLease(store, LOCK, "churn", timeout=5, ttl=4.0) as first:
        time.sleep(5.0)  # past the TTL: only the renewals (every second) keep it
        with pytest.raises(BackendError, match="locked by another command"):
            BlobLease(store, LOCK, "churn", timeout=1.5, ttl=4.0).__enter__()
        assert not first.lost
        assert json.loads(store.get_bytes(LOCK) or b"{}")["token"] == first.token


def test_commands_holding_the_lock_never_interleave(project: Path, environ: dict[str, str]) -> None:
    """Two writers each add to a counter blob four times, read-modify-write under the lock:
    without it, updates would be lost."""
    store = store_of(project)
    store.put_bytes("counter", b"0")
    problems: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(4):
                with BlobLease(store, LOCK, "churn", timeout=120):
                    value = int(store.get_bytes("counter") or b"0")
                    time.sleep(0.05)  # a window another writer would hit
                    store.put_bytes("counter", str(value + 1).encode())
        except BaseException as exc:  # reported below, in the test's thread
            problems.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not problems
    assert store.get_bytes("counter") == b"8"


def test_a_folder_store_takes_the_same_lock(tmp_path: Path) -> None:
    store = FolderStore("abfss://tdsp@contosolake.dfs.core.windows.net/deploy", tmp_path / "c")
    with (
        BlobLease(store, LOCK, "churn", timeout=5),
        pytest.raises(BackendError, match="locked by another command"),
    ):
        BlobLease(store, LOCK, "churn", timeout=0.5).__enter__()
    assert store.get_bytes(LOCK) is None
