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
# Set by bench/run: the example endpoint it pushed once for every benchmark that only loads
# it, as JSON {"home", "status", "key"}; deployed(EXAMPLE) then uses it and leaves it running.
SHARED_ENDPOINT = "TDSP_BENCH_SHARED_ENDPOINT"


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
    """Stop every process of the endpoints in this run's home; never raises (it runs in
    finally blocks). The home is a temporary folder deleted right after, so this kills instead
    of `tdsp-deploy delete`, which stops each process gracefully (0.6 s now; 5.5 s before it
    stopped them together and stopped waiting for zombies to be reaped)."""
    import psutil

    home = env["TDSP_DEPLOY_HOME"].rstrip("/") + "/"
    ours = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        # the router, the supervisor and every slot process name the home on their command line
        if process.pid != os.getpid() and home in " ".join(process.info["cmdline"] or ()):
            with contextlib.suppress(psutil.Error):
                process.kill()
                ours.append(process)
    _, alive = psutil.wait_procs(ours, timeout=10)
    if alive:
        note(f"warning: processes {[p.pid for p in alive]} of {manifest.name} outlived SIGKILL")


@contextlib.contextmanager
def deployed(manifest: Path = EXAMPLE) -> Iterator[dict[str, Any]]:
    """Push the manifest into a fresh home; yield its status, credentials and env; delete it.

    The example under bench/run is already pushed (SHARED_ENDPOINT): it is yielded as it is."""
    shared = os.environ.get(SHARED_ENDPOINT)
    if shared and manifest.resolve() == EXAMPLE.resolve():
        endpoint = json.loads(shared)
        note(f"using the example endpoint bench/run pushed ({endpoint['status']['scoring_uri']})")
        env = dict(os.environ, TDSP_DEPLOY_HOME=endpoint["home"], NO_COLOR="1")
        yield {"status": endpoint["status"], "key": endpoint["key"], "env": env}
        return
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


# -- the router's own timing ---------------------------------------------------------------
def router_timing(endpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The router's running per-phase totals (``GET /-/timing``, with the admin key); None from
    a router that does not serve them. Two readings around a load give its breakdown
    (tdsp_deploy.backends.local.timing.difference)."""
    from tdsp_deploy.backends.local.control import control_request
    from tdsp_deploy.backends.local.state import EndpointFiles

    status = endpoint["status"]
    files = EndpointFiles(status["name"], Path(endpoint["env"]["TDSP_DEPLOY_HOME"]))
    host, port = re.match(r"https?://([^:/]+):(\d+)", status["scoring_uri"]).groups()  # type: ignore[union-attr]
    answer = control_request(files, host, int(port), "GET", "/-/timing", timeout=5)
    if answer is None or answer[0] != 200:
        return None
    return json.loads(answer[1])


def timing_change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    from tdsp_deploy.backends.local.timing import difference

    return difference(after, before) if before and after else None


def slot_pass(endpoint: dict[str, Any], slot: dict[str, Any]) -> dict[str, str]:
    """The header that lets a caller other than the router reach a slot (slot_guard.py)."""
    from tdsp_deploy.backends.local.slot_guard import SLOT_SECRET_HEADER, slot_secret
    from tdsp_deploy.backends.local.state import EndpointFiles

    files = EndpointFiles(endpoint["status"]["name"], Path(endpoint["env"]["TDSP_DEPLOY_HOME"]))
    secret = slot_secret(files.admin()["slot_key"], slot["name"], slot["details"]["revision"])
    return {SLOT_SECRET_HEADER.decode(): secret}
