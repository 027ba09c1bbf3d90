"""Shared fixtures: an isolated state home, the real CLI run in-process, and a guard that no
test leaves a process running."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tdsp_deploy.cli import main
from tdsp_deploy.output import Environment
from tests import paths

ROOT = paths.ROOT
EXAMPLES = ROOT / "examples"
PLUGINS = paths.FAKES / "plugins"

# The fake backend registers through the real entry-point mechanism: its dist-info folder on
# sys.path is found by importlib.metadata exactly as an installed plugin would be.
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))


@dataclasses.dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class CliRunner:
    """Runs the real CLI in this process, with streams that are not terminals (as in CI)."""

    def __call__(
        self, *args: str | Path, isatty: bool = False, environ: dict[str, str] | None = None
    ) -> CliResult:
        import os

        stdout, stderr = io.StringIO(), io.StringIO()
        env = Environment(
            stdout=stdout,
            stderr=stderr,
            stdin_isatty=isatty,
            stderr_isatty=isatty,
            environ=environ if environ is not None else dict(os.environ),
        )
        code = main([str(a) for a in args], env)
        return CliResult(code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True, scope="session")
def environment_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Deployments' environments (built with uv) are shared by the whole run, so each
    distinct one is built once per run, not once per test; a test that is about building
    them points TDSP_DEPLOY_ENV_CACHE elsewhere itself.

    Under pytest-xdist the workers of one run share one cache in the run's own temporary
    root (numbered per run, so another copy of the suite on this machine has its own): the
    backend builds each environment under a file lock and marks it ready last, so two
    workers asking for the same one build it once."""
    previous = os.environ.get("TDSP_DEPLOY_ENV_CACHE")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent / "envs"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("envs")
    os.environ["TDSP_DEPLOY_ENV_CACHE"] = str(cache)
    yield
    if previous is None:
        os.environ.pop("TDSP_DEPLOY_ENV_CACHE", None)
    else:
        os.environ["TDSP_DEPLOY_ENV_CACHE"] = previous


@pytest.fixture(autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own TDSP_DEPLOY_HOME, so tests never see each other's endpoints."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TDSP_DEPLOY_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def no_process_left(state_home: Path):  # type: ignore[no-untyped-def]
    """Fails the test that leaves a process behind (and stops it, so others are not hurt)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = []
    for process in _project_processes(state_home):
        if process.pid not in before:
            left.append(process)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=5)
    assert not left, f"processes left running: {[p.info.get('cmdline') for p in left]}"


def _project_processes(home: Path) -> list[psutil.Process]:
    """The local target's processes started for ``home`` (its path on their command line or in
    their environment). Only command lines are read for every process on the machine,
    which other test runs share: environments just for the few that run our backend."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(process.info.get("cmdline") or [])
            if "tdsp_deploy.backends.local" not in cmdline:
                continue
            if _names(home, cmdline) or any(_names(home, value) for value in process.environ().values()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _names(home: Path, text: str) -> bool:
    """Whether ``text`` names ``home`` or a path under it (not home10 for home1)."""
    return any(rest == "" or rest[0] in (os.sep, " ") for rest in text.split(str(home))[1:])


@pytest.fixture
def iris(tmp_path: Path) -> Path:
    """A private copy of the iris example (tests may change it)."""
    target = tmp_path / "iris"
    shutil.copytree(EXAMPLES / "iris", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target / "deploy.yaml"
