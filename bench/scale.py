"""Benchmark: how the cost of our work grows with the work.

1. Push time and peak memory vs model size. The iris example with an extra model file of
   1 MB, 100 MB and 1 GB of random bytes (--quick: 1 MB and 100 MB), each pushed cold into a
   fresh TDSP_DEPLOY_HOME (hash, archive, unpack, start, smoke test). The peer is `cp -r` of
   the same model folder (what any deployment must at least do with the bytes), same run.
   Peak memory is the push process's maximum RSS (GNU time's %M); bytes read are what the
   push process passed through read() (Linux's /proc/<pid>/io rchar, files and sockets).
   Then the same manifest is pushed again unchanged: it must report `unchanged` and start no
   slot, and it must not read the model (the hash cache vouches for the files, the archive of
   the last build is kept): a re-push of the largest model reads no more than one of the
   smallest (+1 MB; a CLI start alone reads about 6 MB of Python modules), and its time does
   not grow with the model.
2. Smoke test time vs request count: `tdsp-deploy test` with 1, 100, 1,000 and 5,000 latency
   requests (--quick: 1, 200 and 1,000) against the endpoint of the smallest model (pushed
   once for both parts). The run with one request is the fixed cost (CLI start,
   connections); the marginal time per request above it, (time(N) - time(1)) / (N - 1),
   should stay flat as N grows. One untimed run first (the first `test` in a home pays
   one-off costs), then SMOKE_ROUNDS rounds of every count in turn, each count's fastest
   round kept: the 100-request run adds about 0.1 s to a CLI start of about 0.4 s, so one
   CLI start slower or faster by a few tens of ms moved its marginal time by half (0.46 to
   1.49 ms per request between two runs). Beside the wall time, the CPU time of the CLI,
   the router and the slot (marginal_cpu_ms, reported): what load on the machine moves least.

Plots (PNG, matplotlib) and the JSON they were drawn from are written next to this script:
`bench/scale_push.png`, `bench/scale_smoke.png`, `bench/scale.json` (--quick: `*_quick.*`, so
that a quick run never replaces the full run's figures).

    python bench/scale.py [--quick]

Prints one JSON document on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import EXAMPLE_DIR, cli, delete, emit, fresh_home, note, result

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024
SIZES_MB = (1, 100, 1024)
QUICK_SIZES_MB = (1, 100)
REQUESTS = (1, 100, 1000, 5000)  # the run with 1 request measures the fixed cost (CLI, connections)
QUICK_REQUESTS = (1, 200, 1000)
GOAL_MEMORY_GROWTH = 1.5  # peak RSS at the largest model / at 1 MB
GOAL_SMOKE_PER_REQUEST = 1.25  # marginal time per request at the most requests / at the fewest
GOAL_REPUSH_READ_SLACK_MB = 1.0  # re-push read at the largest model - at the smallest
REPUSHES = 3
SMOKE_ROUNDS = 5  # rounds of the smoke-test counts; each count's fastest is kept
GOAL_REPUSH_GROWTH = 2.0  # re-push time at the largest model / at the smallest
# `tdsp-deploy` in this interpreter, writing its own read/write counters as it exits
COUNTED_CLI = (
    "import atexit, sys\n"
    "from pathlib import Path\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: Path(out).write_text(Path('/proc/self/io').read_text()))\n"
    "sys.argv[0] = 'tdsp-deploy'\n"
    "from tdsp_deploy.cli import run\n"
    "run()\n"
)


def project_with_model(root: Path, size_mb: int) -> Path:
    project = root / f"iris-{size_mb}mb"
    shutil.copytree(EXAMPLE_DIR, project, ignore=shutil.ignore_patterns("__pycache__"))
    with open(project / "model" / "weights.bin", "wb") as out:  # incompressible, written in 16 MB steps
        left = size_mb * MB
        while left:
            step = min(left, 16 * MB)
            out.write(os.urandom(step))
            left -= step
    manifest = project / "deploy.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["smoke_test"]["latency"] = {"requests": 50, "concurrency": 2, "warmup": 0}
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


def timed_push(manifest: Path, env: dict[str, str]) -> dict[str, Any]:
    """Push once; wall time, peak RSS (GNU time) and bytes read by the push process, its JSON."""
    report = Path(env["TDSP_DEPLOY_HOME"]) / "time.txt"
    counters = Path(env["TDSP_DEPLOY_HOME"]) / "io.txt"
    command = [sys.executable, "-c", COUNTED_CLI, str(counters), "push", str(manifest), "--json"]
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *command],
        env=env,
        cwd=env["TDSP_DEPLOY_HOME"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"push exited {done.returncode}:\n{done.stderr[-3000:]}")
    peak_kb = int(report.read_text().split()[-1])
    io = dict(line.split(": ") for line in counters.read_text().splitlines())
    return {
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "read_mb": round(int(io["rchar"]) / MB, 3),
        "result": json.loads(done.stdout),
    }


def copy_time(folder: Path, scratch: Path) -> float:
    target = scratch / "copy"
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(folder), str(target)], check=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    return seconds


def push_scale(
    sizes: tuple[int, ...], counts: tuple[int, ...], root: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Push and re-push each size; the smoke-test scale runs on the first (smallest) one's
    endpoint, so that it costs no push of its own."""
    rows: list[dict[str, Any]] = []
    smoke: list[dict[str, Any]] = []
    for size in sizes:
        note(f"writing a {size} MB model ...")
        manifest = project_with_model(root, size)
        with fresh_home() as env:
            try:
                first = timed_push(manifest, env)
                slot_pids = {s["details"]["pid"] for s in cli(["status", str(manifest)], env)["slots"]}
                # A re-push costs about a CLI start, which the machine's noise moves by 2x: median of 3.
                repushes = [timed_push(manifest, env) for _ in range(REPUSHES)]
                again = sorted(repushes, key=lambda r: r["seconds"])[REPUSHES // 2]
                after = {s["details"]["pid"] for s in cli(["status", str(manifest)], env)["slots"]}
                if not smoke:
                    smoke = smoke_scale(counts, manifest, env)
            finally:
                delete(manifest, env)
        peer = copy_time(manifest.parent / "model", root)
        row = {
            "model_mb": size,
            "push_s": first["seconds"],
            "push_peak_rss_mb": first["peak_rss_mb"],
            "push_read_mb": first["read_mb"],
            "copy_s": round(peer, 3),
            "repush_s": again["seconds"],
            "repush_peak_rss_mb": again["peak_rss_mb"],
            "repush_read_mb": again["read_mb"],
            "repush_unchanged": all(r["result"].get("unchanged") for r in repushes),
            "repush_runs_s": [r["seconds"] for r in repushes],
            "repush_same_slot_process": slot_pids == after,
        }
        note(
            f"{size} MB: push {row['push_s']} s (peak {row['push_peak_rss_mb']} MB, read "
            f"{row['push_read_mb']} MB), cp {row['copy_s']} s, re-push {row['repush_s']} s (read "
            f"{row['repush_read_mb']} MB) unchanged={row['repush_unchanged']}"
        )
        rows.append(row)
        shutil.rmtree(manifest.parent)
    return rows, smoke


def smoke_scale(counts: tuple[int, ...], manifest: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """`tdsp-deploy test` against the pushed endpoint with each request count in turn, for
    SMOKE_ROUNDS rounds after one untimed run; each count's fastest round."""
    original = manifest.read_text()
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in counts}
    try:
        smoke_run(manifest, counts[0], env)  # untimed: the first test in this home
        for round_ in range(1, SMOKE_ROUNDS + 1):
            for count in counts:
                run = smoke_run(manifest, count, env)
                runs[count].append(run)
                note(
                    f"round {round_}: smoke test with {count} requests: {run['seconds']:.2f} s, "
                    f"{run['cpu_s']:.2f} CPU s (CLI, router, slot), load {os.getloadavg()[0]:.2f}"
                )
    finally:
        manifest.write_text(original)
    fastest = {count: min(runs[count], key=lambda r: r["seconds"]) for count in counts}
    least_cpu = {count: min(r["cpu_s"] for r in runs[count]) for count in counts}
    fixed, fixed_cpu = fastest[counts[0]]["seconds"], least_cpu[counts[0]]
    rows: list[dict[str, Any]] = []
    for count in counts:
        best, latency = fastest[count], fastest[count]["latency"]
        rows.append(
            {
                "requests": count,
                "test_s": round(best["seconds"], 3),
                "test_runs_s": [round(r["seconds"], 3) for r in runs[count]],
                "per_request_ms": round(best["seconds"] / count * 1000, 3),
                "marginal_ms": _marginal_ms(best["seconds"], fixed, count),
                "cpu_s": round(least_cpu[count], 3),
                "marginal_cpu_ms": _marginal_ms(least_cpu[count], fixed_cpu, count),
                "p50_ms": latency.get("p50_ms"),
                "p99_ms": latency.get("p99_ms"),
                "runner_cpu_s": latency.get("client_cpu_s"),
            }
        )
    return rows


def _marginal_ms(seconds: float, fixed: float, count: int) -> float | None:
    """Milliseconds per request above the one-request run's; None for that run itself."""
    return round((seconds - fixed) / (count - 1) * 1000, 3) if count > 1 else None


def smoke_run(manifest: Path, count: int, env: dict[str, str]) -> dict[str, Any]:
    """One `tdsp-deploy test` with ``count`` latency requests: its wall time, its latency
    report, and the CPU seconds of the CLI process, the router and the slot processes."""
    doc = yaml.safe_load(manifest.read_text())
    doc["smoke_test"]["latency"] = {"requests": count, "concurrency": 4, "warmup": 10}
    manifest.write_text(yaml.safe_dump(doc))
    endpoint = endpoint_processes(env)
    cpu_before, children_before = _cpu(endpoint), _children_cpu()
    started = time.perf_counter()
    report = cli(["test", str(manifest)], env)
    seconds = time.perf_counter() - started
    cpu = _cpu(endpoint) - cpu_before + _children_cpu() - children_before
    return {"seconds": seconds, "cpu_s": cpu, "latency": _find_latency(report)}


def endpoint_processes(env: dict[str, str]) -> list[Any]:
    """The router and slot processes of the endpoints in this run's home (they name it on their
    command line; the slots' workers are their children)."""
    import psutil

    home = env["TDSP_DEPLOY_HOME"].rstrip("/") + "/"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        if home in command and "local.supervisor" not in command:
            found.append(process)
    return found


def _cpu(processes: list[Any]) -> float:
    import psutil

    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended (the CLI runs)."""
    times = os.times()
    return times.children_user + times.children_system


def _find_latency(doc: Any) -> dict[str, Any]:
    """The latency report inside `test --json`'s document, wherever it sits."""
    if isinstance(doc, dict):
        if "p50_ms" in doc and "requests" in doc:
            return doc
        for value in doc.values():
            found = _find_latency(value)
            if found:
                return found
    return {}


def plot(push: list[dict[str, Any]], smoke: list[dict[str, Any]], suffix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [r["model_mb"] for r in push]
    left.plot(sizes, [r["push_s"] for r in push], "o-", label="push (cold)")
    left.plot(sizes, [r["repush_s"] for r in push], "s-", label="push again (unchanged)")
    left.plot(sizes, [r["copy_s"] for r in push], "^--", label="cp -r of the model (peer)")
    left.set(xscale="log", xlabel="model size (MB)", ylabel="seconds", title="Push time vs model size")
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    right.plot(sizes, [r["push_peak_rss_mb"] for r in push], "o-", label="push")
    right.plot(sizes, [r["repush_peak_rss_mb"] for r in push], "s-", label="push again")
    right.set(
        xscale="log", xlabel="model size (MB)", ylabel="peak RSS (MB)", title="Push memory vs model size"
    )
    right.set_ylim(bottom=0)
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(HERE / f"scale_push{suffix}.png", dpi=100)
    written.append(str(HERE / f"scale_push{suffix}.png"))
    plt.close(figure)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    counts = [r["requests"] for r in smoke]
    left.plot(counts, [r["test_s"] for r in smoke], "o-")
    left.set(xscale="log", xlabel="latency requests", ylabel="seconds", title="Smoke test time vs requests")
    left.set_ylim(bottom=0)
    left.grid(True, which="both", alpha=0.3)
    marginal = [r for r in smoke if r["marginal_ms"] is not None]
    right.plot(
        [r["requests"] for r in marginal],
        [r["marginal_ms"] for r in marginal],
        "o-",
        label="marginal wall time per request",
    )
    right.plot(
        [r["requests"] for r in marginal], [r["p50_ms"] for r in marginal], "s--", label="p50 latency (c=4)"
    )
    right.set(xscale="log", xlabel="latency requests", ylabel="ms", title="Cost per request")
    right.set_ylim(bottom=0)
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(HERE / f"scale_smoke{suffix}.png", dpi=100)
    written.append(str(HERE / f"scale_smoke{suffix}.png"))
    plt.close(figure)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 MB and 100 MB models; 100 and 1,000 requests")
    args = parser.parse_args()
    sizes = QUICK_SIZES_MB if args.quick else SIZES_MB
    counts = QUICK_REQUESTS if args.quick else REQUESTS
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tdsp-bench-scale-") as tmp:
        push, smoke = push_scale(sizes, counts, Path(tmp))
    load_after = [round(v, 2) for v in os.getloadavg()]
    suffix = "_quick" if args.quick else ""  # a quick run never replaces the full run's figures
    plots = plot(push, smoke, suffix)
    (HERE / f"scale{suffix}.json").write_text(
        json.dumps({"push": push, "smoke": smoke, "load_average": [load_before, load_after]}, indent=2) + "\n"
    )
    common = {"load_average_before": load_before, "load_average_after": load_after, "plots": plots}
    entries = []
    for row in push:
        entries.append(
            result(
                f"scale_push_{row['model_mb']}mb",
                row["push_s"],
                row["copy_s"],
                unit="s",
                goal="(reported: push time vs a plain copy of the model)",
                met=None,
                **row,
                **common,
            )
        )
        entries.append(
            result(
                f"scale_repush_unchanged_{row['model_mb']}mb",
                row["repush_s"],
                row["push_s"],
                unit="s",
                goal="re-push reports unchanged and starts no slot",
                met=row["repush_unchanged"] and row["repush_same_slot_process"],
                repush_read_mb=row["repush_read_mb"],
                push_read_mb=row["push_read_mb"],
                **common,
            )
        )
    smallest, largest = push[0], push[-1]
    entries.append(
        result(
            f"scale_repush_read_{largest['model_mb']}mb_vs_{smallest['model_mb']}mb",
            largest["repush_read_mb"],
            smallest["repush_read_mb"],
            unit="MB",
            goal=f"no packaging work: re-push of the largest model reads <= the smallest's + "
            f"{GOAL_REPUSH_READ_SLACK_MB:g} MB",
            met=largest["repush_read_mb"] <= smallest["repush_read_mb"] + GOAL_REPUSH_READ_SLACK_MB,
            push_read_mb={r["model_mb"]: r["push_read_mb"] for r in push},
            **common,
        )
    )
    entries.append(
        result(
            f"scale_repush_{largest['model_mb']}mb_vs_{smallest['model_mb']}mb",
            largest["repush_s"],
            smallest["repush_s"],
            unit="s",
            goal=f"re-push time flat in model size: <= {GOAL_REPUSH_GROWTH:g}x the smallest model's",
            met=largest["repush_s"] / smallest["repush_s"] <= GOAL_REPUSH_GROWTH,
            repush_read_mb={r["model_mb"]: r["repush_read_mb"] for r in push},
            **common,
        )
    )
    growth = largest["push_peak_rss_mb"] / smallest["push_peak_rss_mb"]
    entries.append(
        result(
            f"scale_push_peak_rss_{largest['model_mb']}mb_vs_{smallest['model_mb']}mb",
            largest["push_peak_rss_mb"],
            smallest["push_peak_rss_mb"],
            unit="MB",
            goal=f"flat: <= {GOAL_MEMORY_GROWTH:g}x the smallest model's",
            met=growth <= GOAL_MEMORY_GROWTH,
            **common,
        )
    )
    few, many = smoke[1], smoke[-1]
    entries.append(
        result(
            f"scale_smoke_marginal_{many['requests']}_vs_{few['requests']}",
            many["marginal_ms"],
            few["marginal_ms"],
            unit="ms/request",
            goal=f"linear: marginal time per request <= {GOAL_SMOKE_PER_REQUEST:g}x that of the smallest run",
            met=many["marginal_ms"] / few["marginal_ms"] <= GOAL_SMOKE_PER_REQUEST,
            fixed_s=smoke[0]["test_s"],
            rows=smoke,
            rounds=SMOKE_ROUNDS,
            notes=f"each count's fastest of {SMOKE_ROUNDS} rounds, after one untimed run",
            **common,
        )
    )
    entries.append(
        result(
            f"scale_smoke_marginal_cpu_{many['requests']}_vs_{few['requests']}",
            many["marginal_cpu_ms"],
            few["marginal_cpu_ms"],
            unit="CPU ms/request",
            goal="(reported: the marginal CPU time per request of the CLI, the router and the slot, "
            "at the most requests against the smallest run; each count's least of the rounds)",
            met=None,
            fixed_cpu_s=smoke[0]["cpu_s"],
            **common,
        )
    )
    emit(entries)


if __name__ == "__main__":
    main()
