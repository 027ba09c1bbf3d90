"""Benchmark: the synapse target's Spark job on a local Spark (local[2]) vs the same model's
predict in one pandas process, same rows, same run.

Ours: ``tdsp-deploy run MANIFEST --local --master local[2]`` on a parquet of N rows: the
generated job reads it, scores it over Arrow batches (mapInArrow: only the features become
pandas for the model; the model loaded once per Python worker) and writes every row with its predictions and model version as parquet. The
input is written in row groups of 50,000 rows (a parquet split is a row group: a file of one
huge row group is read by one task).
Peer: one Python process that reads the same parquet with pandas, calls the same model's predict
and predict_proba, and writes the same columns as parquet.

Two models, so that the figure is not one model's accident: a logistic regression (cheap to
score: the run is mostly reading, converting and writing) and a random forest of 100 trees
(scoring dominates).

Every run measures both sides at several sizes (--quick: 100,000 and 1,000,000 rows; full:
300,000, 1,000,000 and 3,000,000) and fits a straight line through each side's times (least
squares), which splits them into a fixed cost (the JVM's first query, the Python workers'
start, the model load) and a marginal rate (what each further row costs once all that is up,
which is what a bigger cluster multiplies). Reported per model:

- ``marginal``: the job's marginal rows/s vs the peer's; the goal is a ratio >= 1.0 on 2
  cores (two cores pay off), with the job's fixed seconds beside it;
- ``job``: rows/s of the job itself at the largest size (read + score + write, as the job
  times it, fixed cost included) vs the peer's; reported, no goal;
- ``end_to_end``: rows/s of the whole command at the largest size (JVM and Spark start,
  packaging included); reported, no goal;
- peak memory (RSS) of each side: the Spark process tree (JVM + Python workers) and the peer,
  and how many times the workers loaded the model (once per worker when they are reused).

    python bench/spark_batch.py [--quick]
    python bench/spark_batch.py --scale [--quick]

``--scale`` runs 100,000, 300,000, 1,000,000 and 3,000,000 rows (--quick: to 1,000,000) and
plots them in ``bench/scale_spark.png`` with its points in ``bench/scale_spark.json``.

Prints one JSON document on stdout; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
from common import emit, note, result, tdsp_deploy  # noqa: E402

from tests.fakes.synapse_spark_project import FEATURES, make_project  # noqa: E402

GOAL = 1.0  # on the marginal rate: two cores must pay off
# --quick: two sizes far apart, so that the load's noise on a job's seconds (a second or two)
# is small beside what the further rows cost; 100,000 and 300,000 rows differed by less than
# that noise for the logistic regression (BENCHMARKS.md, "Spark batch, round three")
ROWS = {"quick": (100_000, 1_000_000), "full": (300_000, 1_000_000, 3_000_000)}
# Seconds the measurements may take: inside bench/run's limit per script (300 s with --quick,
# 1200 s without), with room for writing the inputs and for the pair already under way.
BUDGET_S = {"quick": 255, "full": 1000}

PEER = """
import pickle, sys, time
import pandas as pd
FEATURES = sys.argv[4].split(",")
model = pickle.load(open(sys.argv[1], "rb"))
started = time.perf_counter()
frame = pd.read_parquet(sys.argv[2])
features = frame[FEATURES].astype("float64")
frame["label"] = model.predict(features).astype("int64")
proba = model.predict_proba(features)
for i in range(proba.shape[1]):
    frame[f"p{i}"] = proba[:, i]
frame["model_version"] = "peer"
frame.to_parquet(sys.argv[3], index=False)
print(time.perf_counter() - started)
"""


def models() -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(5000, len(FEATURES))), columns=FEATURES)
    y = (x["f0"] + x["f1"] > 0).astype(int) + (x["f2"] > 1).astype(int)
    return {
        "logistic_regression": LogisticRegression(max_iter=500).fit(x, y),
        "random_forest_100": RandomForestClassifier(
            n_estimators=100, max_depth=10, n_jobs=1, random_state=0
        ).fit(x, y),
    }


class PeakMemory:
    """Samples the RSS of a process and all its children (the JVM's Python workers too), and
    the CPU seconds each of them has used (the last sample of each process, summed: a process
    that ends between two samples loses at most 0.1 s of its CPU)."""

    def __init__(self, process: subprocess.Popen[Any]):
        self.root = psutil.Process(process.pid)
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
                        times = proc.cpu_times()
                        self.cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            self._stop.wait(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str, int, float]:
    """Wall seconds, stdout, peak RSS and CPU seconds of the command's process tree."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    memory = PeakMemory(process)
    stdout, stderr = process.communicate()
    peak = memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {process.returncode}:\n{stderr[-3000:]}")
    return time.perf_counter() - started, stdout, peak, sum(memory.cpu.values())


def write_rows(path: Path, count: int) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(count, len(FEATURES))), columns=FEATURES)
    frame.insert(0, "customer_id", np.arange(count, dtype=np.int64))
    # row groups of 50,000 rows, as a Spark-written or appended dataset has: a parquet split
    # is a row group, and one row group of a million rows would be read by one task
    frame.to_parquet(path, index=False, row_group_size=50_000)
    note(f"{count:,} rows in {path.stat().st_size / 2**20:.1f} MiB of parquet")


def measure_pair(work: Path, name: str, model: Any, source: Path, count: int, env: dict[str, str]) -> dict:
    """The pandas peer, then the job, on the same ``count`` rows: their times and peak memory."""
    project = make_project(work / name)
    model_file = work / name / "model" / "model.pkl"
    model_file.write_bytes(pickle.dumps(model))
    (work / "peer.py").write_text(PEER)
    note(f"{name}, {count:,} rows: pandas peer")
    peer_wall, peer_out, peer_peak, peer_cpu = measured(
        [
            sys.executable,
            str(work / "peer.py"),
            str(model_file),
            str(source),
            str(work / "peer.parquet"),
            ",".join(FEATURES),
        ],
        env,
        work,
    )
    note(f"{name}, {count:,} rows: tdsp-deploy run --local --master local[2]")
    scored = work / f"{name}-{count}-scored.parquet"
    ours_wall, ours_out, ours_peak, ours_cpu = measured(
        [*tdsp_deploy(), "run", str(project), "--local", "--master", "local[2]"]
        + ["-i", str(source), "-o", str(scored), "--json"],
        env,
        work,
    )
    summary = json.loads(ours_out)
    if summary.get("rows") != count:
        raise RuntimeError(f"the job scored {summary.get('rows')} rows, not {count}")
    with contextlib.suppress(OSError):
        subprocess.run(["rm", "-rf", str(scored), str(work / "peer.parquet")], check=False)
    pair = {
        "rows": count,
        "job_s": summary["seconds"],
        "peer_s": float(peer_out.strip().splitlines()[-1]),
        "command_s": ours_wall,
        "peer_command_s": peer_wall,
        "ours_peak_rss_mib": round(ours_peak / 2**20, 1),
        "model_loads": summary.get("model_loads"),
        "peer_peak_rss_mib": round(peer_peak / 2**20, 1),
        "command_cpu_s": round(ours_cpu, 2),
        "peer_command_cpu_s": round(peer_cpu, 2),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    note(
        f"{name}: job {count / pair['job_s']:,.0f} rows/s, peer {count / pair['peer_s']:,.0f} rows/s,"
        f" command {ours_wall:.1f} s"
    )
    return pair


def measure_within(
    work: Path, named: dict[str, Any], sources: dict[int, Path], env: dict[str, str], budget: float
) -> dict[str, list[dict[str, Any]]]:
    """Every model at a size before the next size, each pair only while the budget allows it
    (the estimate: the last pair of the same model half as long again, else the last pair
    measured). A run cut short still has the smaller sizes of both models, and bench/run gets
    its JSON before its limit."""
    began = time.monotonic()
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in named}
    last: dict[str, Any] | None = None
    for count in sorted(sources):
        for name, model in named.items():
            if last is not None:
                same = series[name][-1] if series[name] else None
                # the job's time grows far slower than its rows (its fixed cost), the peer's
                # about with them
                grown = count / same["rows"] if same else 1.0
                estimate = 1.5 * same["command_s"] + grown * same["peer_command_s"] if same else (
                    last["command_s"] + last["peer_command_s"])  # fmt: skip
                if time.monotonic() - began + estimate > budget:
                    note(f"{name}, {count:,} rows: skipped, {budget:.0f} s budget (about {estimate:.0f} s more)")
                    continue
            last = measure_pair(work, name, model, sources[count], count, env)
            series[name].append(last)
    return series


def ratio_entries(name: str, pair: dict[str, Any]) -> list[dict[str, Any]]:
    count = pair["rows"]
    job_rate, peer_rate = count / pair["job_s"], count / pair["peer_s"]
    return [
        result(
            f"spark_batch_job_{name}",
            job_rate,
            peer_rate,
            unit="rows/s",
            goal="reported (the job's fixed cost included; the goal is on the marginal rate)",
            met=None,
            rows=count,
            job_seconds=pair["job_s"],
            model_loads=pair.get("model_loads"),
            peer_seconds=round(pair["peer_s"], 3),
            ours_peak_rss_mib=pair["ours_peak_rss_mib"],
            peer_peak_rss_mib=pair["peer_peak_rss_mib"],
            master="local[2]",
        ),
        result(
            f"spark_batch_end_to_end_{name}",
            count / pair["command_s"],
            count / pair["peer_command_s"],
            unit="rows/s",
            goal="reported (JVM and Spark start included)",
            met=None,
            rows=count,
            ours_seconds=round(pair["command_s"], 3),
            peer_seconds=round(pair["peer_command_s"], 3),
        ),
    ]


def scale_entries(name: str, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch time vs rows: a straight line fitted through the points (least squares) splits each
    side's time into a fixed part and a part per row; the marginal rate (what each further row
    costs once the JVM, the workers and the model are up, which is what a bigger cluster
    multiplies) is compared, and the job's fixed seconds are reported beside it."""
    goal = f"ratio >= {GOAL} (what a further row costs, on local[2])"
    if len(pairs) < 2:
        # the budget ran out before a second size: one point fixes no line
        return [
            result(f"spark_batch_marginal_{name}", 0.0, None, unit="rows/s", met=False, goal=goal,
                   error=f"{len(pairs)} size(s) measured within the time budget: no line to fit",
                   points=pairs)
        ]  # fmt: skip
    rows = np.array([p["rows"] for p in pairs], dtype=float)
    job_slope, job_fixed = np.polyfit(rows, [p["job_s"] for p in pairs], 1)
    peer_slope, peer_fixed = np.polyfit(rows, [p["peer_s"] for p in pairs], 1)
    if job_slope <= 0 or peer_slope <= 0:
        # more rows took no longer: the noise of a busy machine is larger than the rows' cost,
        # and no rate can be read from these points (a failed measurement, not a met goal)
        note(f"{name}: time did not grow with rows (job slope {job_slope:.3g}, peer {peer_slope:.3g})")
        return [
            result(f"spark_batch_marginal_{name}", 0.0, None, unit="rows/s", met=False, goal=goal,
                   error="time did not grow with rows: no marginal rate can be read", points=pairs)
        ]  # fmt: skip
    # plain floats: numpy's would make `met` a numpy bool, which json cannot write
    job_rate, peer_rate = 1 / float(job_slope), 1 / float(peer_slope)
    # the whole command's fixed seconds (JVM and session start too), and each side's CPU per
    # further row: the CPU a row costs moves far less with the machine's load than its seconds
    command_slope, command_fixed = np.polyfit(rows, [p["command_s"] for p in pairs], 1)
    cpu_slope, cpu_fixed = np.polyfit(rows, [p["command_cpu_s"] for p in pairs], 1)
    peer_cpu_slope, _ = np.polyfit(rows, [p["peer_command_cpu_s"] for p in pairs], 1)
    return [
        result(
            f"spark_batch_marginal_{name}",
            job_rate,
            peer_rate,
            unit="rows/s",
            goal=goal,
            met=job_rate / peer_rate >= GOAL,
            job_fixed_seconds=round(float(job_fixed), 2),
            peer_fixed_seconds=round(float(peer_fixed), 2),
            command_fixed_seconds=round(float(command_fixed), 2),
            command_fixed_cpu_seconds=round(float(cpu_fixed), 2),
            cpu_us_per_row=round(float(cpu_slope) * 1e6, 3),
            peer_cpu_us_per_row=round(float(peer_cpu_slope) * 1e6, 3),
            points=pairs,
            master="local[2]",
        )
    ]


def plot_scale(series: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pairs in series.items():
        rows = [p["rows"] for p in pairs]
        left.plot(rows, [p["job_s"] for p in pairs], "o-", label=f"{name}: job, local[2]")
        left.plot(rows, [p["peer_s"] for p in pairs], "s--", label=f"{name}: pandas, 1 process")
        right.plot(
            rows, [p["ours_peak_rss_mib"] for p in pairs], "o-", label=f"{name}: Spark (JVM + workers)"
        )
        right.plot(rows, [p["peer_peak_rss_mib"] for p in pairs], "s--", label=f"{name}: pandas")
    left.set(xscale="log", yscale="log", xlabel="rows", ylabel="seconds", title="Batch time vs rows")
    right.set(xscale="log", xlabel="rows", ylabel="peak RSS (MiB)", title="Batch memory vs rows")
    right.set_ylim(bottom=0)
    for axis in (left, right):
        axis.legend(fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def cpu_per_row(work: Path, count: int, reps: int) -> list[dict[str, Any]]:
    """CPU microseconds per row of each step of the job, warm: one local[2] session with the
    job's local settings, each query over ``count`` rows written as parquet ``reps`` times (the
    first run pays the JIT; the least of the others is kept), CPU of the whole process tree
    (this driver, the JVM, the Python workers); beside it, the pandas peer's steps in this
    process, timed alike."""
    import importlib.util

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from tdsp_deploy.backends.synapse import job as jobs
    from tdsp_deploy.backends.synapse.local_spark import local_command
    from tdsp_deploy.backends.synapse.target import DataLocation
    from tdsp_deploy.packaging import build_package
    from tests.fakes.synapse_spark_project import load

    source, sink = work / "rows.parquet", str(work / "out")
    write_rows(source, count)
    loaded = importlib.util.spec_from_file_location(jobs.JOB_FILE[:-3], jobs.job_script_path())
    job = importlib.util.module_from_spec(loaded)
    sys.modules[loaded.name] = job
    loaded.loader.exec_module(job)
    command = local_command(jobs.job_script_path(), {}, {}, "local[2]")
    builder = SparkSession.builder.master("local[2]")
    for key, value in (c.split("=", 1) for c in command[command.index("--conf") + 1 : -2 : 2]):
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.addPyFile(str(jobs.job_script_path()))

    def tree_cpu() -> float:
        me = psutil.Process()
        times = [p.cpu_times() for p in [me, *me.children(recursive=True)]]
        return sum(t.user + t.system for t in times)

    read = lambda: spark.read.parquet(str(source))  # noqa: E731
    queries: dict[str, Any] = {
        "read + write, no Python": lambda: read().withColumn("model_version", F.lit("1")),
        "mapInArrow, batches handed back": lambda: read().mapInArrow(lambda b: b, read().schema),
        "mapInPandas, batches handed back": lambda: read().mapInPandas(lambda b: b, read().schema),
    }
    specs = {}
    for name, model in models().items():
        manifest = load(make_project(work / name)).manifest
        (work / name / "model" / "model.pkl").write_bytes(pickle.dumps(model))
        package = build_package(manifest, work / "packages")
        variant = jobs.Variant.of("local", package.lock, str(package.path), 100, "sklearn")
        places = DataLocation(path="i"), DataLocation(path="o")
        specs[name] = jobs.job_spec(manifest.target, manifest, [variant], *places)
        for arrow in (False, True):
            queries[f"{name}: the job, {'Arrow' if arrow else 'pandas'} path"] = (
                lambda s=specs[name], a=arrow: job.scored_frame(spark, read(), s, arrow=a))  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # the job says what it set; stdout is the JSON
        job.set_batch_rows(spark, read().schema)
    spent: dict[str, list[float]] = {}
    for rep in range(reps):
        for label, query in queries.items():
            before = tree_cpu()
            query().write.mode("overwrite").parquet(sink)
            spent.setdefault(label, []).append((tree_cpu() - before) / count * 1e6)
            note(f"run {rep + 1}, {label}: {spent[label][-1]:.2f} CPU us/row, load {os.getloadavg()[0]:.1f}")
    spark.stop()
    entries = []
    for name, model in models().items():
        steps: dict[str, list[float]] = {}
        for _ in range(reps):
            began = time.process_time()
            frame = pd.read_parquet(source)
            features = frame[FEATURES].astype("float64")
            frame["label"] = model.predict(features).astype("int64")
            proba = model.predict_proba(features)
            scored = time.process_time()
            for i in range(proba.shape[1]):
                frame[f"p{i}"] = proba[:, i]
            frame["model_version"] = "peer"
            frame.to_parquet(work / "peer.parquet", index=False)
            done = time.process_time()
            steps.setdefault("read + score", []).append((scored - began) / count * 1e6)
            steps.setdefault("write", []).append((done - scored) / count * 1e6)
        peer = sum(min(v) for v in steps.values())
        for label, values in spent.items():
            if not label.startswith(tuple(specs)) or label.startswith(name):
                entries.append(result(
                    f"spark_cpu_per_row: {label} (vs pandas, {name})", min(values[1:] or values), peer,
                    unit="CPU us/row", goal="reported (lower is better)", met=None,
                    runs=[round(v, 3) for v in values],
                    peer_steps={k: round(min(v), 3) for k, v in steps.items()}, rows=count))  # fmt: skip
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="100,000 and 1,000,000 rows instead of 300,000 to 3,000,000"
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="batch time vs rows (100,000 to 3,000,000; --quick: to 1,000,000), plotted to"
        " bench/scale_spark.png with its JSON beside it",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="CPU microseconds per row of each step of the job, in one"
        " session (1,000,000 rows, 3 runs each), and of the pandas peer's; not run by bench/run"
    )
    args = parser.parse_args()
    if args.cpu:
        with tempfile.TemporaryDirectory(prefix="tdsp-bench-spark-") as scratch:
            emit(cpu_per_row(Path(scratch), 1_000_000, 3))
        return
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tdsp-bench-spark-") as scratch:
        work = Path(scratch)
        env = dict(
            os.environ, TDSP_DEPLOY_HOME=str(work / "home"), NO_COLOR="1", PYSPARK_PYTHON=sys.executable
        )
        if not args.scale:
            counts = ROWS["quick" if args.quick else "full"]
            sources = {}
            for count in counts:
                sources[count] = work / f"rows-{count}.parquet"
                write_rows(sources[count], count)
            series = measure_within(work, models(), sources, env, BUDGET_S["quick" if args.quick else "full"])
            for name, pairs in series.items():
                entries += scale_entries(name, pairs)
                if pairs:
                    entries += ratio_entries(name, pairs[-1])
            emit(entries)
            return
        counts = (100_000, 300_000, 1_000_000) if args.quick else (100_000, 300_000, 1_000_000, 3_000_000)
        sources = {}
        for count in counts:
            sources[count] = work / f"rows-{count}.parquet"
            write_rows(sources[count], count)
        series = {}
        for name, model in models().items():
            series[name] = [measure_pair(work, name, model, sources[c], c, env) for c in counts]
            entries += scale_entries(name, series[name])
        suffix = "_quick" if args.quick else ""
        plot_scale(series, HERE / f"scale_spark{suffix}.png")
        (HERE / f"scale_spark{suffix}.json").write_text(json.dumps(series, indent=2) + "\n")
        note(f"wrote {HERE / f'scale_spark{suffix}.png'}")
    emit(entries)


if __name__ == "__main__":
    main()
