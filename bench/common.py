"""Helpers shared by the benchmarks in bench/: paths, the CLI, a deployed example, the output.

Every benchmark prints one JSON document on stdout,
``{"benchmarks": [{"name", "ours", "peer", "ratio", "unit", "goal", "met", ...}], "machine": {...}}``,
and its progress notes on stderr. Whatever a benchmark deploys lives in a fresh
TDSP_DEPLOY_HOME in a temporary folder and is deleted before it exits.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = REPO / "examples" / "iris"
EXAMPLE = EXAMPLE_DIR / "deploy.yaml"
# The venv's scripts folder: the peers' commands (mlflow, azmlinfsrv) and ours are all there.
BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """A console script of this interpreter's environment, or None when not installed."""
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name)


def tdsp_deploy() -> list[str]:
    script = tool("tdsp-deploy")
    return [script] if script else [sys.executable, "-m", "tdsp_deploy"]


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def emit(benchmarks: list[dict[str, Any]]) -> None:
    print(json.dumps({"benchmarks": benchmarks, "machine": machine()}, indent=2))


def result(
    name: str,
    ours: float,
    peer: float | None,
    *,
    unit: str,
    goal: str,
    met: bool | None,
    ratio: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One benchmark entry; ``ratio`` defaults to ours/peer."""
    if ratio is None and peer:
        ratio = ours / peer
    return {
        "name": name,
        "ours": _round(ours),
        "peer": _round(peer),
        "ratio": None if ratio is None else round(ratio, 3),
        "unit": unit,
        "goal": goal,
        "met": met,
        **extra,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@contextlib.contextmanager
def fresh_home(prefix: str = "tdsp-bench-") -> Iterator[dict[str, str]]:
    """An environment for the CLI with TDSP_DEPLOY_HOME in a new temporary folder.

    Commands run with that folder as their working directory: `python -c` and `-m` put the
    working directory first on sys.path, and bench/packaging.py would shadow `packaging`."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        env = dict(os.environ, TDSP_DEPLOY_HOME=home, NO_COLOR="1")
        yield env


def cli(args: Sequence[str], env: dict[str, str], *, check: bool = True) -> Any:
    """Run ``tdsp-deploy ARGS --json`` and return its JSON document."""
    done = subprocess.run(
        [*tdsp_deploy(), *args, "--json"],
        env=env,
        cwd=env["TDSP_DEPLOY_HOME"],
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"tdsp-deploy {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout) if done.stdout.strip() else None


def delete(manifest: Path, env: dict[str, str]) -> None:
    """Delete the endpoint if it exists; never raises (it runs in finally blocks)."""
    done = subprocess.run(
        [*tdsp_deploy(), "delete", str(manifest), "--yes"],
        env=env,
        cwd=env["TDSP_DEPLOY_HOME"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        note(f"warning: delete exited {done.returncode}: {done.stderr.strip()[-500:]}")
    _kill_leftovers(env["TDSP_DEPLOY_HOME"])


def _kill_leftovers(home: str) -> None:
    """The safety net behind delete: a process whose command line names this run's home is ours."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid != os.getpid() and home in " ".join(process.info["cmdline"] or ()):
            note(f"warning: process {process.pid} outlived delete; killing it")
            with contextlib.suppress(psutil.Error):
                process.kill()


@contextlib.contextmanager
def deployed(manifest: Path = EXAMPLE) -> Iterator[dict[str, Any]]:
    """Push the manifest into a fresh home; yield its status, credentials and env; delete it."""
    with fresh_home() as env:
        try:
            note(f"pushing {manifest} ...")
            cli(["push", str(manifest)], env)
            status = cli(["status", str(manifest)], env)
            keys = cli(["credentials", str(manifest)], env)
            yield {"status": status, "key": keys["primary_key"], "env": env}
        finally:
            delete(manifest, env)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_200(port: int, path: str = "/", timeout: float = 0.5) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("GET", path)
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def stop_group(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything in its group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    process.wait()


def timed(command: Sequence[str], env: dict[str, str]) -> float:
    """Wall seconds of one command run to its end; it must succeed."""
    start = time.perf_counter()
    subprocess.run(
        list(command),
        env=env,
        cwd=env["TDSP_DEPLOY_HOME"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


# -- wrk ---------------------------------------------------------------------------------
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_threads(concurrency: int) -> int:
    return 1 if concurrency == 1 else 2


def wrk_script(path: Path, body: str, headers: dict[str, str]) -> Path:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [==[{body.strip()}]==]",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(wrk: str, url: str, script: Path, *, concurrency: int, duration: int) -> dict[str, Any]:
    command = [
        wrk,
        f"-t{wrk_threads(concurrency)}",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, p50/p90/p99 latency in ms and error counts from `wrk --latency` output."""
    latency = {
        f"p{pct}_ms": round(float(value) * UNITS_MS[unit], 4)
        for pct, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    if len(latency) != 3:
        raise ValueError(f"no latency distribution in wrk's output:\n{text}")
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = {"non_2xx": int(non_2xx.group(1)) if non_2xx else 0}
    counts = map(int, socket.groups()) if socket else (0, 0, 0, 0)
    errors.update(zip(("connect", "read", "write", "timeout"), counts, strict=True))
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),  # type: ignore[union-attr]
        **latency,
        "errors": errors,
    }
