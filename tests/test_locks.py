"""The endpoint lock's interface and its file lock (tdsp_deploy.locks). The blob lease and the
SQL application lock have their own tests (test_synapse_lock.py, test_sqlserver_lock.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tdsp_deploy.backends.local.state import EndpointFiles
from tdsp_deploy.backends.sqlserver.applock import ApplicationLock
from tdsp_deploy.backends.synapse.blob_lease import BlobLease
from tdsp_deploy.errors import BackendError
from tdsp_deploy.locks import EndpointLock, FileLock


def test_every_mechanism_is_an_endpoint_lock() -> None:
    assert all(issubclass(kind, EndpointLock) for kind in (FileLock, BlobLease, ApplicationLock))


def test_a_file_lock_keeps_a_second_holder_out_until_released(tmp_path: Path) -> None:
    path = tmp_path / "endpoints" / "iris" / ".lock"
    told: list[str] = []
    with FileLock(path, "iris", timeout=5) as first:
        assert path.read_text() == str(os.getpid())
        second = FileLock(path, "iris", timeout=0.3, on_wait=told.append)
        with pytest.raises(BackendError, match="endpoint 'iris' is locked by another command"):
            second.acquire()
        assert told == ["another command is changing endpoint 'iris'; waiting for it"]  # once
        assert first.endpoint == "iris"
    with FileLock(path, "iris", timeout=0.3):  # released: taken at once
        pass


def test_the_local_lock_file_stays_where_earlier_versions_took_it(tmp_path: Path) -> None:
    # a command of an earlier version holding the endpoint still keeps this one out
    assert EndpointFiles("iris", tmp_path).lock_path == tmp_path / "endpoints" / "iris" / ".lock"
