"""Each deployment's own Python environment, built with uv from what the manifest declares.

Azure ML's container holds only what the environment file declares; a slot running in the
CLI's own environment passes whenever the developer happens to have a package installed, and
loads a model with whatever version is installed. So a slot runs in a virtual environment
built from ``environment.requirements`` (or the conda file's pip section and pins), plus the
inference server and the HTTP server the slot needs, nothing else.

Environments are shared: the folder is named by a hash of everything that decides its
content (the requirement lines, the Python version, the slot's own modules), so two
endpoints with the same requirements use one folder, and a second push builds nothing.
They live in ``$TDSP_DEPLOY_HOME/envs/<hash>/`` (``$TDSP_DEPLOY_ENV_CACHE`` moves them: a
test session shares one folder so that each environment is built once per run), and a
folder no deployment of this home uses is removed when a revision goes (``collect``).

uv installs from the index pip is configured for on this machine (``pip config list``:
index-url, extra-index-url, find-links, constraint), so a machine behind a mirror builds as
pip would.

The slot's own modules (slot_server, slot_app, slot_hooks, slot_guard) use only the standard library,
the inference server and the HTTP server; they are copied into the environment under their
package names, so the slot imports nothing else of tdsp-deploy.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tdsp_deploy.backends.local.interpreters import choose_python, conda_python, uv_binary
from tdsp_deploy.backends.local_preflight import declared
from tdsp_deploy.environment import conda_requirement_lines
from tdsp_deploy.errors import DeploymentFailed
from tdsp_deploy.progress import Progress, ProgressEvent, no_progress

CACHE_VARIABLE = "TDSP_DEPLOY_ENV_CACHE"
READY = "tdsp-environment.json"  # written last: a folder without it is not (yet) usable
RUNTIME = "tdsp-slot-runtime"  # the slot's modules, on the slot's PYTHONPATH
SLOT_MODULES = ("slot_server.py", "slot_app.py", "slot_hooks.py", "slot_guard.py")
SERVER_DISTRIBUTION = "azureml-inference-server-http"
BUILD_TIMEOUT_S = 1800
UNUSED_GRACE_S = 600  # a folder just built may not be recorded by its push yet
PIP_OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
               "constraint": "--constraint"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EnvironmentPlan:
    """What one environment holds, and the hash that names it."""

    requirement_lines: tuple[str, ...]  # as uv reads them (requirements file text, or conda's)
    requirements_file: Path | None  # given to uv as is (it may include others, or options)
    python: str  # the interpreter the environment is made from
    python_version: str
    declared_in: str  # where the user adds a package (for hints)
    key: str

    def to_json(self) -> dict[str, str]:
        return {"hash": self.key[:16], "python": self.python_version, "declared_in": self.declared_in}


@dataclasses.dataclass(frozen=True)
class BuiltEnvironment:
    path: Path
    plan: EnvironmentPlan

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def runtime(self) -> Path:
        return self.path / RUNTIME


def cache_root(home: Path) -> Path:
    override = os.environ.get(CACHE_VARIABLE)
    return Path(override) if override else home / "envs"


def plan(
    environment: object,
    http_server: str,
    *,
    model_path: Path | None = None,
    warn: Callable[[str], None] = lambda _: None,
) -> EnvironmentPlan | None:
    """The environment a slot of this manifest runs in; None to run in the CLI's own one
    (``environment.isolation: shared``, or no environment declared at all)."""
    if getattr(environment, "isolation", "isolated") == "shared":
        return None
    source = declared(environment, model_path)
    if source is None:
        warn(
            "the manifest declares no environment (environment.requirements or conda_file): the "
            "deployment runs in this CLI's Python environment, and Azure ML will need one"
        )
        return None
    requirements, conda_file, declared_python = source
    if requirements:
        lines = tuple(requirements.read_text(encoding="utf-8").splitlines())
        declared_in = str(requirements)
    else:
        assert conda_file is not None
        lines = tuple(conda_requirement_lines(conda_file))
        declared_python = getattr(environment, "python", None) or conda_python(conda_file) or declared_python
        declared_in = str(conda_file)
    python, version = choose_python(declared_python, warn)
    slot_needs = _slot_needs(lines, http_server)
    digest = hashlib.sha256()
    for part in (version, python, *lines, "--", *slot_needs, "--", *_runtime_digests()):
        digest.update(part.encode() + b"\0")
    return EnvironmentPlan(
        requirement_lines=(*lines, *slot_needs) if not requirements else tuple(slot_needs),
        requirements_file=requirements,
        python=python,
        python_version=version,
        declared_in=declared_in,
        key=digest.hexdigest(),
    )


def _slot_needs(lines: Iterable[str], http_server: str) -> list[str]:
    """The inference server and the HTTP server, at the versions this CLI runs with, unless
    the user declares them (their pin wins, as it would on Azure ML)."""
    declared = {
        re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-") for line in lines
    }
    import importlib.metadata  # here: `validate` imports this module and never builds

    needs = []
    for name in (SERVER_DISTRIBUTION, http_server):
        if name in declared:
            continue
        try:
            needs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            needs.append(name)
    return needs


def _runtime_digests() -> list[str]:
    here = Path(__file__).parent
    return [hashlib.sha256((here / name).read_bytes()).hexdigest() for name in SLOT_MODULES]


def ensure(plan: EnvironmentPlan, home: Path, progress: Progress = no_progress) -> BuiltEnvironment:
    """The environment of ``plan``, built now unless it exists (one builder at a time)."""
    root = cache_root(home)
    path = root / plan.key[:16]
    built = BuiltEnvironment(path, plan)
    if (path / READY).exists():
        _tell(progress, f"environment {plan.key[:12]} (Python {plan.python_version}) is ready")
        _touch(path)
        return built
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{plan.key[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another push may be building the same one
        if (path / READY).exists():
            return built
        shutil.rmtree(path, ignore_errors=True)  # a build that did not finish
        started = time.monotonic()
        _tell(progress, f"building environment {plan.key[:12]} with uv (Python {plan.python_version})")
        _build(plan, path, progress)
        (path / READY).write_text(
            json.dumps({"key": plan.key, "python": plan.python_version, "built_at": time.time()}) + "\n"
        )
        _tell(progress, f"built environment {plan.key[:12]} in {time.monotonic() - started:.1f} s")
    return built


def _tell(progress: Progress, message: str, **figures: float) -> None:
    progress(ProgressEvent(step="environment", message=message, **figures))  # type: ignore[arg-type]


def _build(plan: EnvironmentPlan, path: Path, progress: Progress) -> None:
    uv = uv_binary()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(path), "NO_COLOR": "1"}
    _run(
        [uv, "venv", "--quiet", "--python", plan.python, str(path)],
        env,
        plan,
        progress,
        "creating the environment",
    )
    # pip takes the best version from all its indexes alike; uv, by default, only from the
    # first index that has the package: do as pip does, since pip's indexes are the ones used.
    install = [
        uv,
        "pip",
        "install",
        "--python",
        str(path / "bin" / "python"),
        "--index-strategy",
        "unsafe-best-match",
        *pip_index_options(),
    ]
    if plan.requirements_file is not None:
        install += ["-r", str(plan.requirements_file)]
    extra = path / "tdsp-requirements.txt"
    extra.write_text("\n".join(plan.requirement_lines) + "\n")
    install += ["-r", str(extra)]
    _run(install, env, plan, progress, f"resolving {_count(plan)} declared packages and the inference server")
    runtime = path / RUNTIME / "tdsp_deploy" / "backends" / "local"
    runtime.mkdir(parents=True)
    for package in (runtime, runtime.parent, runtime.parent.parent):
        (package / "__init__.py").write_text("")
    here = Path(__file__).parent
    for name in SLOT_MODULES:
        shutil.copyfile(here / name, runtime / name)


def _count(plan: EnvironmentPlan) -> int:
    lines = (
        plan.requirements_file.read_text().splitlines() if plan.requirements_file else plan.requirement_lines
    )
    return sum(1 for line in lines if line.strip() and not line.strip().startswith(("#", "-")))


# uv's summary lines (its output off a terminal), as what the user is told while it works on
_UV_PHASES = (
    (re.compile(r"^Resolved (\d+) packages?"), "resolved {0} packages; downloading and preparing them"),
    (re.compile(r"^Prepared (\d+) packages?"), "prepared {0} packages; installing"),
    (re.compile(r"^Installed (\d+) packages?"), "installed {0} packages"),
)
TICK_S = 0.5


def _run(
    command: list[str], env: dict[str, str], plan: EnvironmentPlan, progress: Progress, doing: str
) -> None:
    """Run one uv step, telling ``progress`` what it does (its phases as uv reports them, and
    the time spent against the limit every ``TICK_S``)."""
    started = time.monotonic()
    output: list[str] = []
    state = {"doing": doing}
    _tell(progress, doing)
    try:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise DeploymentFailed(
            f"uv could not be started to build the deployment's environment: {exc}"
        ) from None

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            for pattern, message in _UV_PHASES:
                found = pattern.match(line.strip())
                if found:
                    state["doing"] = message.format(found.group(1))
                    _tell(progress, state["doing"])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while reader.is_alive():
        reader.join(TICK_S)
        elapsed = time.monotonic() - started
        if elapsed > BUILD_TIMEOUT_S:
            process.kill()
            process.wait()
            raise DeploymentFailed(
                f"building the deployment's environment took more than {BUILD_TIMEOUT_S} s",
                hint="check the package index is reachable",
            )
        if reader.is_alive():
            _tell(progress, state["doing"], elapsed=elapsed, timeout=BUILD_TIMEOUT_S)
    if process.wait() != 0:
        tail = "\n".join(output[-15:])
        raise DeploymentFailed(
            f"the deployment's environment could not be built from {plan.declared_in}",
            hint=f"fix the requirement uv names below in {plan.declared_in}, or set "
            "environment.isolation: shared to run in this CLI's environment",
            details={"log_tail": tail},
        )


def pip_index_options() -> list[str]:
    """pip's configured index, find-links and constraints (``pip config list``), as uv options."""
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return uv_options_from_pip_config(listed)


def uv_options_from_pip_config(listed: str) -> list[str]:
    """``global.extra-index-url='a b'`` and the like, as uv's options (env and global both)."""
    options: list[str] = []
    seen: set[tuple[str, str]] = set()
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1].strip()
        if name not in PIP_OPTIONS:
            continue
        for item in value.strip().strip("'\"").split():
            if (name, item) not in seen:
                seen.add((name, item))
                options += [PIP_OPTIONS[name], item]
    return options


def collect(home: Path, in_use: set[str]) -> list[str]:
    """Remove the environments no deployment of this home uses (not with a shared cache,
    whose other users this home cannot see)."""
    if os.environ.get(CACHE_VARIABLE):
        return []
    root = cache_root(home)
    removed = []
    for path in root.glob("*/" + READY):
        folder = path.parent
        if folder.name in in_use or time.time() - _last_used(folder) < UNUSED_GRACE_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        (root / f"{folder.name}.lock").unlink(missing_ok=True)
        removed.append(folder.name)
    return removed


def _touch(path: Path) -> None:
    try:
        os.utime(path / READY)
    except OSError:
        pass


def _last_used(folder: Path) -> float:
    try:
        return (folder / READY).stat().st_mtime
    except OSError:
        return 0.0


# Import names whose distribution is named otherwise: the hint names the package to add.
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "cv2": "opencv-python", "PIL": "pillow", "yaml": "pyyaml",
                   "skimage": "scikit-image", "bs4": "beautifulsoup4"}  # fmt: skip


def missing_module(log_tail: str) -> str | None:
    """The module a failed start could not import, from its log."""
    found = re.findall(r"ModuleNotFoundError: No module named '([^'.]+)", log_tail)
    return found[-1] if found else None
