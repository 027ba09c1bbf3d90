"""Benchmark: the synapse target's Spark job on a local Spark (local[2]) vs the same model's
predict in one pandas process, same rows, same run.

Ours: ``tdsp-deploy run MANIFEST --local --master local[2]`` on a parquet of N rows (1,000,000;
--quick: 100,000): the generated job reads it, scores it with mapInPandas over Arrow batches
(model loaded once per Python worker) and writes every row with its predictions and model
version as parquet. The input is written in row groups of 50,000 rows (a parquet split is a
row group: a file of one huge row group is read by one task). Peer: one Python process that reads the same parquet with pandas, calls
the same model's predict and predict_proba, and writes the same columns as parquet.

Two models, so that the figure is not one model's accident: a logistic regression (cheap to
score: the run is mostly reading, converting and writing) and a random forest of 100 trees
(scoring dominates). Reported per model:

- ``job``: rows/s of the job itself (read + score + write, as the job times it) vs the peer's
  rows/s for the same work; the goal is a ratio >= 0.5 on 2 cores, so that N cores are a gain;
- ``end_to_end``: rows/s of the whole command (JVM and Spark start, packaging included), for
  what a user waits for; no goal;
- peak memory (RSS) of each side: the Spark process tree (JVM + Python workers) and the peer.

    python bench/spark_batch.py [--quick]

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
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
from common import emit, note, result, tdsp_deploy  # noqa: E402
from test_synapse_spark import FEATURES, make_project  # noqa: E402

GOAL = 0.5

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
    """Samples the RSS of a process and all its children (the JVM's Python workers too)."""

    def __init__(self, process: subprocess.Popen[Any]):
        self.root = psutil.Process(process.pid)
        self.peak = 0
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
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            self._stop.wait(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str, int]:
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    memory = PeakMemory(process)
    stdout, stderr = process.communicate()
    peak = memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {process.returncode}:\n{stderr[-3000:]}")
    return time.perf_counter() - started, stdout, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    args = parser.parse_args()
    count = 100_000 if args.quick else 1_000_000
    entries = []
    with tempfile.TemporaryDirectory(prefix="tdsp-bench-spark-") as scratch:
        work = Path(scratch)
        env = dict(
            os.environ, TDSP_DEPLOY_HOME=str(work / "home"), NO_COLOR="1", PYSPARK_PYTHON=sys.executable
        )
        rng = np.random.default_rng(1)
        frame = pd.DataFrame(rng.normal(size=(count, len(FEATURES))), columns=FEATURES)
        frame.insert(0, "customer_id", np.arange(count, dtype=np.int64))
        source = work / "rows.parquet"
        # row groups of 50,000 rows, as a Spark-written or appended dataset has: a parquet split
        # is a row group, and one row group of a million rows would be read by one task
        frame.to_parquet(source, index=False, row_group_size=50_000)
        note(f"{count:,} rows in {source.stat().st_size / 2**20:.1f} MiB of parquet")
        for name, model in models().items():
            project = make_project(work / name)
            model_file = work / name / "model" / "model.pkl"
            model_file.write_bytes(pickle.dumps(model))
            (work / "peer.py").write_text(PEER)

            note(f"{name}: pandas peer")
            peer_wall, peer_out, peer_peak = measured(
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
            peer_seconds = float(peer_out.strip().splitlines()[-1])

            note(f"{name}: tdsp-deploy run --local --master local[2]")
            ours_wall, ours_out, ours_peak = measured(
                [
                    *tdsp_deploy(),
                    "run",
                    str(project),
                    "--local",
                    "--master",
                    "local[2]",
                    "-i",
                    str(source),
                    "-o",
                    str(work / f"{name}-scored.parquet"),
                    "--json",
                ],
                env,
                work,
            )
            summary = json.loads(ours_out)
            if summary.get("rows") != count:
                raise RuntimeError(f"the job scored {summary.get('rows')} rows, not {count}")
            job_rate, peer_rate = count / summary["seconds"], count / peer_seconds
            note(
                f"{name}: job {job_rate:,.0f} rows/s, peer {peer_rate:,.0f} rows/s, command {ours_wall:.1f} s"
            )
            entries.append(
                result(
                    f"spark_batch_job_{name}",
                    job_rate,
                    peer_rate,
                    unit="rows/s",
                    goal=f"ratio >= {GOAL}",
                    met=job_rate / peer_rate >= GOAL,
                    rows=count,
                    job_seconds=summary["seconds"],
                    peer_seconds=round(peer_seconds, 3),
                    ours_peak_rss_mib=round(ours_peak / 2**20, 1),
                    peer_peak_rss_mib=round(peer_peak / 2**20, 1),
                    master="local[2]",
                )
            )
            entries.append(
                result(
                    f"spark_batch_end_to_end_{name}",
                    count / ours_wall,
                    count / peer_wall,
                    unit="rows/s",
                    goal="reported (JVM and Spark start included)",
                    met=None,
                    rows=count,
                    ours_seconds=round(ours_wall, 3),
                    peer_seconds=round(peer_wall, 3),
                )
            )
    emit(entries)


if __name__ == "__main__":
    main()
