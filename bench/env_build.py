"""Benchmark: a deployment's own environment (uv), against pip, and what a cache hit costs.

Measured in one run, each build in a fresh folder with an empty package cache:

- env_build_cold: the local target's build of the iris example's environment (uv, from
  requirements.txt plus the inference server and granian at this CLI's versions, the index
  from pip's configuration), against ``python -m venv X && X/bin/pip install -r`` of the very
  same lines with ``--no-cache-dir``. Goal: ours <= 0.3 of pip's time. One build each (pip's
  takes minutes); left out with --quick.
- push_warm: ``tdsp-deploy push`` of the iris example to exit (health, smoke test, traffic)
  when its environment is already built, against the same push with
  ``environment.isolation: shared`` (the CLI's own environment, as before). Goal: <= 1.2x.
  Alternated, median of --runs, the endpoint deleted after each.
- disk_second_endpoint: what a second endpoint with the same requirements adds to
  $TDSP_DEPLOY_HOME (bytes of new files, hard links counted once). Goal: < 1 MB.

    python bench/env_build.py [--runs N | --quick] [--no-cold]

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import EXAMPLE, EXAMPLE_DIR, cli, delete, emit, fresh_home, note, result

from tdsp_deploy.backends.local import venvs
from tdsp_deploy.manifest import load_manifest


def _plan() -> venvs.EnvironmentPlan:
    manifest = load_manifest(EXAMPLE).manifest
    plan = venvs.plan(manifest.environment, manifest.target.http_server)
    assert plan is not None
    return plan


def uv_cold(plan: venvs.EnvironmentPlan) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-uv-") as scratch:
        env_before = os.environ.get("UV_CACHE_DIR")
        os.environ["UV_CACHE_DIR"] = str(Path(scratch) / "uv-cache")  # empty: nothing reused
        try:
            started = time.perf_counter()
            venvs.ensure(plan, Path(scratch), lambda event: note(f"{event.step}: {event.message}"))
            return time.perf_counter() - started
        finally:
            if env_before is None:
                os.environ.pop("UV_CACHE_DIR", None)
            else:
                os.environ["UV_CACHE_DIR"] = env_before


def pip_cold(plan: venvs.EnvironmentPlan) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-pip-") as scratch:
        lines = Path(scratch) / "requirements.txt"
        requirements = plan.requirements_file.read_text() if plan.requirements_file else ""
        lines.write_text(requirements + "\n" + "\n".join(plan.requirement_lines) + "\n")
        target = Path(scratch) / "venv"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        subprocess.run(
            [str(target / "bin" / "pip"), "install", "-q", "--no-cache-dir", "-r", str(lines)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - started


def _copy(shared: bool, root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(EXAMPLE_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    doc = yaml.safe_load((target / "deploy.yaml").read_text())
    doc["name"] = name
    if shared:
        doc["environment"]["isolation"] = "shared"
    (target / "deploy.yaml").write_text(yaml.safe_dump(doc))
    return target / "deploy.yaml"


def _remove(manifest: Path, env: dict[str, str]) -> None:
    cli(["delete", str(manifest), "--yes"], env, check=False)


def _timed_push(manifest: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    cli(["push", str(manifest)], env)
    return time.perf_counter() - started


def _disk(path: Path) -> int:
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of each (bench/run --quick)")
    parser.add_argument("--no-cold", action="store_true", help="leave out the cold build against pip")
    arguments = parser.parse_args()
    runs = 1 if arguments.quick else arguments.runs
    os.environ.pop(venvs.CACHE_VARIABLE, None)
    plan = _plan()

    benchmarks = []
    if arguments.quick or arguments.no_cold:
        # pip's build alone takes minutes here: past bench/run's quick limit
        note("--quick: the cold build against pip is left out (run without --quick)")
    else:
        # one cold build each: pip's takes minutes (BENCHMARKS.md)
        uv_s, pip_s = uv_cold(plan), pip_cold(plan)
        note(f"cold build: uv {uv_s:.1f} s, pip {pip_s:.1f} s")
        benchmarks.append(
            result("env_build_cold", uv_s, pip_s, unit="s", goal="<= 0.3 of pip", met=uv_s <= 0.3 * pip_s)
        )

    with fresh_home() as env, tempfile.TemporaryDirectory(prefix="bench-env-") as scratch:
        root = Path(scratch)
        isolated, shared = _copy(False, root, "iris-isolated"), _copy(True, root, "iris-shared")
        try:
            _timed_push(isolated, env)  # builds the environment: the pushes below hit the cache
            _remove(isolated, env)
            warm, plain = [], []
            for run in range(runs):
                warm.append(_timed_push(isolated, env))
                _remove(isolated, env)
                plain.append(_timed_push(shared, env))
                _remove(shared, env)
                note(f"run {run + 1}: warm isolated push {warm[-1]:.1f} s, shared push {plain[-1]:.1f} s")
            warm_s, plain_s = statistics.median(warm), statistics.median(plain)
            benchmarks.append(
                result("push_warm", warm_s, plain_s, unit="s", goal="<= 1.2x the shared push",
                       met=warm_s <= 1.2 * plain_s, runs=runs)
            )  # fmt: skip
            home = Path(env["TDSP_DEPLOY_HOME"])
            cli(["push", str(isolated)], env)
            before = _disk(home)
            second = _copy(False, root, "iris-second")
            cli(["push", str(second)], env)
            added = _disk(home) - before
            benchmarks.append(
                result("disk_second_endpoint", added / 1e6, None, unit="MB", goal="< 1 MB", met=added < 1e6,
                       environments=len(list((home / "envs").glob("*/" + venvs.READY))))
            )  # fmt: skip
        finally:
            delete(isolated, env)
    emit(benchmarks)


if __name__ == "__main__":
    main()
