"""Benchmark: a cold `tdsp-deploy push` of the iris example, against the bare inference server.

Measured, each in a fresh TDSP_DEPLOY_HOME (no package cached, no processes), the endpoint
deleted after each run, median of 3:

- ours: wall time of ``tdsp-deploy push examples/iris/deploy.yaml --json`` from start to exit
  (package, router, slot start, health, smoke test with its 210-request latency run, traffic);
  ``healthy_s`` is when the push printed "<slot> is healthy" on stderr (read as it comes).
- ours without the latency run: the same on a temp copy of the example whose manifest has
  ``smoke_test.latency: {requests: 1, warmup: 0}``.
- peer: the bare server, ``azmlinfsrv --entry_script src/score.py --model_dir DIR --port P``
  with AZUREML_MODEL_DIR=DIR (the same copy), from start to its first 200 on GET /.

The three alternate within each run; one untimed round first puts every file in the page
cache for all three (--quick: one run and no untimed round, the files being in the cache
already when bench/run has pushed before). Goal: ours <= 10 s (absolute); the ratio ours/peer
is reported too.

    python bench/push_cold.py [--runs N | --quick]

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import (
    EXAMPLE,
    EXAMPLE_DIR,
    answers_200,
    delete,
    emit,
    free_port,
    fresh_home,
    note,
    result,
    stop_group,
    tdsp_deploy,
    tool,
)

GOAL_S = 10.0
PEER_TIMEOUT_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 run, no untimed warm-up round")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    first = 1 if args.quick else 0  # round 0 only warms the page cache
    server = tool("azmlinfsrv")

    with tempfile.TemporaryDirectory(prefix="tdsp-bench-example-") as tmp:
        copy = _example_without_latency_run(Path(tmp) / "iris")
        times: dict[str, list[float]] = {"full": [], "no_latency": [], "healthy": [], "peer": []}
        for round_ in range(first, runs + 1):
            peer_s = _bare_server(server, copy) if server else None
            full_s, healthy_s = _push(EXAMPLE)
            quick_s, _ = _push(copy / "deploy.yaml")
            if round_:
                for key, value in (
                    ("full", full_s),
                    ("no_latency", quick_s),
                    ("healthy", healthy_s),
                    ("peer", peer_s),
                ):
                    times[key].append(value)
            note(
                f"round {round_}{' (warm-up)' if not round_ else ''}: push {full_s:.2f}s (healthy at "
                f"{healthy_s:.2f}s), without latency run {quick_s:.2f}s, bare server "
                + (f"{peer_s:.2f}s" if peer_s is not None else "missing")
            )

    peer = statistics.median(times["peer"]) if server else None
    extra = {} if server else {"note": "azmlinfsrv not found (azureml-inference-server-http); no peer"}
    common = {
        "peer_command": "azmlinfsrv --entry_script src/score.py --model_dir DIR --port P, "
        "start to first 200 on GET /",
        "notes": f"median of {runs}, fresh TDSP_DEPLOY_HOME each run, alternating with the peer"
        + (", after one untimed round (page cache warm)" if not first else "")
        + "; ratio = ours / bare server start; goal is absolute",
        **extra,
    }
    full, no_latency = statistics.median(times["full"]), statistics.median(times["no_latency"])
    emit(
        [
            result(
                "push_cold",
                full,
                peer,
                unit="s",
                goal=f"ours <= {GOAL_S:g} s",
                met=full <= GOAL_S,
                command="tdsp-deploy push examples/iris/deploy.yaml",
                healthy_s=round(statistics.median(times["healthy"]), 3),
                runs={"ours": _r(times["full"]), "healthy": _r(times["healthy"]), "peer": _r(times["peer"])},
                **common,
            ),
            result(
                "push_cold_no_latency_run",
                no_latency,
                peer,
                unit="s",
                goal=f"ours <= {GOAL_S:g} s",
                met=no_latency <= GOAL_S,
                command="tdsp-deploy push (copy with smoke_test.latency.requests: 1)",
                runs={"ours": _r(times["no_latency"]), "peer": _r(times["peer"])},
                **common,
            ),
        ]
    )


def _r(values: list[float | None]) -> list[float]:
    return [round(v, 3) for v in values if v is not None]


def _example_without_latency_run(copy: Path) -> Path:
    shutil.copytree(EXAMPLE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((copy / "deploy.yaml").read_text())
    manifest["smoke_test"]["latency"].update({"requests": 1, "warmup": 0})
    (copy / "deploy.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return copy


def _push(manifest: Path) -> tuple[float, float | None]:
    """Wall seconds of one cold push, and when it said the slot was healthy; then delete."""
    with fresh_home() as env, tempfile.TemporaryFile() as out:
        healthy = None
        try:
            start = time.perf_counter()
            process = subprocess.Popen(
                [*tdsp_deploy(), "push", str(manifest), "--json"],
                env=env,
                cwd=env["TDSP_DEPLOY_HOME"],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )
            log = []
            for line in process.stderr:  # type: ignore[union-attr]
                log.append(line)
                if healthy is None and line.rstrip().endswith("is healthy"):
                    healthy = time.perf_counter() - start
            process.wait()
            seconds = time.perf_counter() - start
            out.seek(0)
            report = json.loads(out.read() or b"null")
            if process.returncode != 0 or not (report or {}).get("smoke", {}).get("passed"):
                raise RuntimeError(f"push exited {process.returncode}:\n{''.join(log[-30:])}")
            return seconds, healthy if healthy is not None else seconds
        finally:
            delete(manifest, env)


def _bare_server(server: str, example: Path) -> float:
    """Seconds from starting the bare inference server to its first 200 on GET /."""
    port = free_port()
    env = dict(os.environ, AZUREML_MODEL_DIR=str(example), LOG_LEVEL="info", PYTHONUNBUFFERED="1")
    env.pop("SERVER_PORT", None)
    if _gunicorn_has_control_socket():  # as our slots do: no shared per-user control socket
        env["GUNICORN_CMD_ARGS"] = f"{env.get('GUNICORN_CMD_ARGS', '')} --no-control-socket".strip()
    with tempfile.NamedTemporaryFile(prefix="azmlinfsrv-", suffix=".log") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            [server, "--entry_script", "src/score.py", "--model_dir", str(example), "--port", str(port)],
            cwd=example,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while not answers_200(port, timeout=0.5):
                if process.poll() is not None or time.perf_counter() - start > PEER_TIMEOUT_S:
                    log.seek(0)
                    raise RuntimeError(f"azmlinfsrv did not become healthy:\n{log.read().decode()[-3000:]}")
                time.sleep(0.01)
            return time.perf_counter() - start
        finally:
            stop_group(process)


def _gunicorn_has_control_socket() -> bool:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gunicorn import config; "
            "print(any(s.name == 'control_socket_disable' for s in config.KNOWN_SETTINGS))",
        ],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    return done.stdout.strip() == "True"


if __name__ == "__main__":
    main()
