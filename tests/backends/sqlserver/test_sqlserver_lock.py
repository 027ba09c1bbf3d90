"""The sqlserver target's endpoint lock: a session-owned application lock on the server.

Two commands on two connections (two machines, as far as the server can tell) to one fake
server, which keeps sp_getapplock's rules: one exclusive holder per resource, a wait that gives
up after @LockTimeout with -1, and the lock released when the holding session ends.
"""

from __future__ import annotations

import threading
import time

import pytest

from tdsp_deploy.backends.sqlserver.applock import resource_name
from tdsp_deploy.errors import BackendError, ExitCode
from tests.fakes.sqlserver_fake import FakeSqlServer
from tests.fakes.sqlserver_project import backend_for, make_project, matching_libraries
from tests.fakes.sqlserver_traffic import driver  # noqa: F401 (fixture: the CLI's driver is the fake)


@pytest.fixture
def server() -> FakeSqlServer:
    return FakeSqlServer(libraries=matching_libraries())


def test_a_second_command_waits_for_the_first_and_says_so(server, tmp_path):
    manifest = make_project(tmp_path / "project")
    first, second = backend_for(manifest, server), backend_for(manifest, server)
    told: list[str] = []
    second.progress = lambda event: told.append(event.message)
    entered = threading.Event()

    def hold() -> None:
        with first.lock(timeout=5):
            entered.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    with second.lock(timeout=30):
        assert not holder.is_alive()  # granted only once the first released it
        assert list(server.app_locks.values()) == [second.connection._connection]
    holder.join()
    assert any("another command is changing endpoint 'irissql'" in m for m in told)
    assert server.app_locks == {}


def test_a_lock_held_past_the_timeout_gives_up_with_exit_3(server, tmp_path):
    manifest = make_project(tmp_path / "project")
    first, second = backend_for(manifest, server), backend_for(manifest, server)
    with first.lock(timeout=5):
        with pytest.raises(BackendError) as caught:
            second.lock(timeout=0.3).__enter__()
        assert caught.value.exit_code == ExitCode.BACKEND == 3
        assert "locked by another command" in str(caught.value)
        assert "--lock-timeout" in caught.value.hint


def test_the_lock_of_a_session_that_ended_is_free_at_once(server, tmp_path):
    """A push that dies (killed, machine lost) loses its connection, and the server its lock."""
    manifest = make_project(tmp_path / "project")
    crashed, next_one = backend_for(manifest, server), backend_for(manifest, server)
    crashed.lock(timeout=5).__enter__()  # never released by the command
    assert len(server.app_locks) == 1
    crashed.connection._connection.close()  # the session ends
    with next_one.lock(timeout=0):
        assert list(server.app_locks.values()) == [next_one.connection._connection]


def test_endpoints_lock_apart_and_the_resource_fits_sp_getapplock(server, tmp_path):
    one = backend_for(make_project(tmp_path / "a"), server)
    other_manifest = make_project(tmp_path / "b")
    other_manifest.write_text(other_manifest.read_text().replace("name: irissql", "name: irissql-eu"))
    other = backend_for(other_manifest, server)
    with one.lock(timeout=0), other.lock(timeout=0):
        assert len(server.app_locks) == 2
    assert len(resource_name("d" * 128, "[s].[" + "p" * 200 + "]")) == 255


def test_push_through_the_cli_gives_up_while_another_command_holds_the_lock(server, driver, cli, tmp_path):  # noqa: F811
    manifest = make_project(tmp_path / "project")
    holder = backend_for(manifest, server)
    with holder.lock(timeout=5):
        result = cli("push", manifest, "--lock-timeout", "0.5", "--json")
        assert result.exit_code == 3, result.stdout + result.stderr
        assert "locked by another command" in result.stdout + result.stderr
        assert server.db.tables == {} and server.db.procedures == {}  # nothing was written
    assert cli("push", manifest, "--json").exit_code == 0  # free again: the push goes through
