"""Benchmark: batch scoring through the SQL Server target's generated in-database script vs
calling the model directly.

Ours: the Python that the scoring procedure hands to ``sp_execute_external_script``, run with
that procedure's contract by tests/fakes/sqlserver_harness.py (InputDataSet, the ``@params`` bound
by name, the ``request_log`` OUTPUT parameter): unbundle the payload, route the rows (one
slot with all the traffic), load the model, predict, build ``OutputDataSet`` with the serving
version beside each row, write the request log. Peer: the same model loaded from the same
bytes and called directly on the same DataFrame (onnxruntime ``run``; scikit-learn
``predict`` and ``predict_proba``), the floor any in-database scoring is measured against.
The goal: at least 0.8 of the peer's throughput.

Timed in CPU seconds of this process (``time.process_time``), the median of alternating runs:
on a machine shared with other work the wall clock measures the neighbours as much as the
code; the wall-clock figures and their ratio are reported too (``wall_*``). Each run starts
after a short pause.

OpenBLAS's idle threads spin for about 0.1 s after each call before they sleep, and that CPU
time is this process's: it charged each side for the time its Python work ran after a BLAS
call (twice over on an idle machine, where the spinning thread has a core to itself, less
under load, where it yields), so the ratio moved with the machine's load rather than with
the code. Both sides therefore run with OPENBLAS_THREAD_TIMEOUT=4 (the threads sleep as soon
as their work is done; the BLAS keeps its threads), and ``blas_idle_spin_cpu_ms`` shows what
the process spent during a 0.1 s sleep right after a BLAS call (about 0 when the setting took).
``--blas-spin`` keeps the BLAS's default, to see the effect.

The server's conversion of ``OutputDataSet`` to the WITH RESULT SETS types is the server's
work, not the script's, and is left out of both (the harness emulates it in Python, much more
slowly than the server's C++ does; ``harness_conversion_s`` shows it for reference).

    python bench/sqlserver_batch.py [--quick] [--blas-spin]     (--quick: 5 runs instead of 7)

Prints one JSON document on stdout; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Read by OpenBLAS when numpy loads it, so set before the imports below (see the docstring).
if "--blas-spin" not in sys.argv:
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import emit, note, result  # noqa: E402

from tdsp_deploy.backends.sqlserver.script import generate_script  # noqa: E402
from tdsp_deploy.backends.sqlserver.target import Column  # noqa: E402
from tests.fakes.sqlserver_harness import run_external_script_with_outputs  # noqa: E402

GOAL = 0.8
# A multi-threaded BLAS (OpenBLAS here) keeps its idle threads spinning for a while after each
# call (about 0.1 s by default), and that CPU time counts for this process: without a pause
# the peer's spin would be charged to the script's run that follows it, and the script's to the
# peer's. Each run starts with the threads asleep.
SETTLE_S = 0.3
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
INPUTS = [Column(name=name, type="float") for name in FEATURES]
OUTPUTS = [Column(name="label", type="nvarchar(16)")] + [Column(name=f"p_{c}", type="float") for c in CLASSES]
RESULT_SETS = [(c.name, c.type) for c in OUTPUTS] + [("model_version", "nvarchar(64)")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 runs instead of 7 (same rows)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--blas-spin", action="store_true", help="leave OpenBLAS's idle threads spinning")
    args = parser.parse_args()
    rows, runs = args.rows, (5 if args.quick else args.runs)
    frame = pd.DataFrame(
        np.random.default_rng(0).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(rows, 4)), columns=FEATURES
    )
    benchmarks = [
        _compare("onnx", (REPO / "examples" / "iris" / "model" / "model.onnx").read_bytes(), frame, runs),
        _compare("sklearn", pickle.dumps(_sklearn_model()), frame, runs),
    ]
    emit(benchmarks)


def _sklearn_model() -> Any:
    """The example's model as scikit-learn trains it (examples/iris/train.py), pickled."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    features = pd.DataFrame(iris.data, columns=FEATURES)
    return LogisticRegression(max_iter=1000, random_state=0).fit(features, iris.target_names[iris.target])


def _compare(flavor: str, payload: bytes, frame: pd.DataFrame, runs: int) -> dict[str, Any]:
    script = generate_script(
        flavor, INPUTS, OUTPUTS, model_file_name=f"model.{'onnx' if flavor == 'onnx' else 'pkl'}"
    )
    params = {
        "model_bundle": len(payload).to_bytes(8, "big") + payload,
        "routes": json.dumps([{"slot": "blue", "version": "1", "weight": 100}]),
    }
    peer = _PEERS[flavor]
    # the two must agree before their speed means anything
    ours_out = _ours(script, frame, params)[1]
    peer_labels = peer(payload, frame)[1]
    if ours_out["label"].tolist() != [str(v) for v in peer_labels]:
        raise SystemExit(f"{flavor}: the script and the model disagree")
    _ours(script, frame, params), peer(payload, frame)  # warm-up: imports, caches
    spin = _idle_spin(payload, frame) if flavor == "sklearn" else None
    ours_times, peer_times, ours_wall, peer_wall = [], [], [], []
    for run in range(runs):  # alternating, so that load on the machine hits both alike
        for times, wall, measure in (
            (ours_times, ours_wall, lambda: _ours(script, frame, params)),
            (peer_times, peer_wall, lambda: peer(payload, frame)),
        ):
            time.sleep(SETTLE_S)  # the previous call's idle BLAS threads stop spinning first
            cpu = time.process_time()
            wall.append(measure()[0])
            times.append(time.process_time() - cpu)
        note(
            f"{flavor} run {run + 1}: script {ours_times[-1] * 1000:.1f} ms CPU "
            f"({ours_wall[-1] * 1000:.1f} wall), "
            f"direct {peer_times[-1] * 1000:.1f} ms CPU ({peer_wall[-1] * 1000:.1f} wall)"
        )
    started = time.perf_counter()
    run_external_script_with_outputs(
        script, frame, params, result_sets=RESULT_SETS, output_params=["request_log"]
    )
    conversion = time.perf_counter() - started - statistics.median(ours_wall)
    ours, theirs = statistics.median(ours_times), statistics.median(peer_times)
    rows = len(frame)
    ratio = theirs / ours  # throughput ratio
    return result(
        f"sqlserver_batch_{flavor}_{rows // 1000}k",
        rows / ours,
        rows / theirs,
        ratio=ratio,
        unit="rows/s",
        goal=f">= {GOAL} of direct predict throughput",
        met=ratio >= GOAL,
        rows=rows,
        runs={
            "ours_cpu_s": [round(t, 4) for t in ours_times],
            "peer_cpu_s": [round(t, 4) for t in peer_times],
            "ours_wall_s": [round(t, 4) for t in ours_wall],
            "peer_wall_s": [round(t, 4) for t in peer_wall],
        },
        wall_ratio=round(statistics.median(peer_wall) / statistics.median(ours_wall), 3),
        harness_conversion_s=round(max(conversion, 0.0), 4),
        blas_idle_spin_cpu_ms=spin,
        openblas_thread_timeout=os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        peer_command=_PEER_TEXT[flavor],
        notes="rows per CPU second, median of alternating runs (wall_ratio: the same by the wall "
        "clock); both load the model from the same bytes in each run; onnxruntime on one thread, "
        "scikit-learn with the BLAS's default threads on both sides, which sleep once their work is "
        "done (OPENBLAS_THREAD_TIMEOUT=4, unless --blas-spin); a 0.3 s pause before each run",
    )


def _idle_spin(payload: bytes, frame: pd.DataFrame) -> float:
    """CPU milliseconds this process spends in a 0.1 s sleep right after a BLAS call."""
    model = pickle.loads(payload)
    time.sleep(SETTLE_S)
    model.predict_proba(frame)
    cpu = time.process_time()
    time.sleep(0.1)
    return round((time.process_time() - cpu) * 1000, 1)


def _ours(script: str, frame: pd.DataFrame, params: dict[str, Any]) -> tuple[float, pd.DataFrame]:
    started = time.perf_counter()
    out, _ = run_external_script_with_outputs(script, frame, params, output_params=["request_log"])
    return time.perf_counter() - started, out


def _peer_onnx(payload: bytes, frame: pd.DataFrame) -> tuple[float, Any]:
    import onnxruntime

    started = time.perf_counter()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(payload, sess_options=options, providers=["CPUExecutionProvider"])
    labels, _ = session.run(None, {session.get_inputs()[0].name: frame.to_numpy(dtype=np.float32)})
    return time.perf_counter() - started, labels


def _peer_sklearn(payload: bytes, frame: pd.DataFrame) -> tuple[float, Any]:
    started = time.perf_counter()
    model = pickle.loads(payload)
    labels = model.predict(frame)
    model.predict_proba(frame)
    return time.perf_counter() - started, labels


_PEERS = {"onnx": _peer_onnx, "sklearn": _peer_sklearn}
_PEER_TEXT = {
    "onnx": "onnxruntime.InferenceSession(model bytes, 1 thread).run(None, {input: rows as float32})",
    "sklearn": "pickle.loads(model bytes); model.predict(rows); model.predict_proba(rows)",
}


if __name__ == "__main__":
    main()
