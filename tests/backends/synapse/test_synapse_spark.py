"""The synapse target's Spark job on a real local Spark.

One SparkSession serves the whole module (starting a JVM is the slow part). The job module is
the template itself, imported as the workers import it (addPyFile), and it is given the spec
the backend builds from a real manifest and a real package. Every row must come out scored
exactly as the model scores it in this process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pyspark = pytest.importorskip("pyspark")

from tdsp_deploy.backends.synapse import job as jobs  # noqa: E402
from tdsp_deploy.backends.synapse.target import DataLocation  # noqa: E402
from tdsp_deploy.packaging import build_package  # noqa: E402
from tests.fakes.synapse_spark_project import (  # noqa: E402
    BATCH_PREDICT_PY,
    SCORE_PY,
    FEATURES,
    OUTPUTS,
    STORAGE,
    expected_scores,
    load,
    make_project,
    rows,
    train,
)


# -- the module's one Spark ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def job_module() -> Any:
    spec = importlib.util.spec_from_file_location(jobs.JOB_FILE[:-3], jobs.job_script_path())
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spark(job_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("tdsp-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("warehouse")))  # tables go here
        .getOrCreate()
    )
    session.sparkContext.addPyFile(str(jobs.job_script_path()))
    yield session
    session.stop()


def spec_for(
    manifest_path: Path,
    variants: list[tuple[str, int]],
    source: DataLocation,
    sink: DataLocation,
    *,
    salt: str = "",
    flavor: str = "sklearn",
) -> dict[str, Any]:
    """The backend's spec for the manifest, with one variant per (project, share)."""
    loaded = load(manifest_path)
    built = []
    for index, (project, share) in enumerate(variants):
        manifest = load(Path(project)).manifest
        package = build_package(manifest, Path(project).parent / "packages")
        built.append(
            jobs.Variant.of(["blue", "green"][index], package.lock, str(package.path), share, flavor)
        )
    return jobs.job_spec(loaded.manifest.target, loaded.manifest, built, source, sink, salt=salt)


def score(spark: Any, job_module: Any, spec: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    scored = job_module.scored_frame(spark, spark.createDataFrame(frame), spec)
    return scored.toPandas().sort_values("customer_id").reset_index(drop=True)


# -- tests ------------------------------------------------------------------------------------
def test_every_row_is_scored_exactly_as_the_model_scores_it(
    tmp_path: Path, spark: Any, job_module: Any
) -> None:
    project = make_project(tmp_path / "p")
    frame = rows(2000)
    spec = spec_for(project, [(str(project), 100)], DataLocation(path="in"), DataLocation(path="out"))
    out = score(spark, job_module, spec, frame)

    assert len(out) == len(frame)
    expected = expected_scores(pickle.loads((tmp_path / "p/model/model.pkl").read_bytes()), frame)
    np.testing.assert_array_equal(out["label"].to_numpy(), expected["label"].to_numpy())
    for name in ("p0", "p1", "p2"):
        np.testing.assert_allclose(out[name].to_numpy(), expected[name].to_numpy(), rtol=0, atol=1e-12)
    # passthrough columns (the id, a string) and the features are kept as they were
    np.testing.assert_array_equal(out["customer_id"].to_numpy(), frame["customer_id"].to_numpy())
    assert list(out["region"]) == list(frame["region"])
    np.testing.assert_array_equal(out[FEATURES].to_numpy(), frame[FEATURES].to_numpy())
    # every row says which model version scored it; no variant column without a split
    version = (
        load(project).manifest.model.version
        or build_package(load(project).manifest, tmp_path / "x").lock.model_version
    )
    assert set(out["model_version"]) == {version}
    assert "variant" not in out.columns
    assert [
        f.name for f in job_module.scored_frame(spark, spark.createDataFrame(frame), spec).schema.fields
    ] == ["customer_id", *FEATURES, "region", "label", "p0", "p1", "p2", "model_version"]


def test_ab_split_is_deterministic_by_key_and_close_to_the_share(
    tmp_path: Path, spark: Any, job_module: Any
) -> None:
    control = make_project(tmp_path / "a", seed=1)
    treatment = make_project(tmp_path / "b", seed=3)
    models = {
        "blue": pickle.loads((tmp_path / "a/model/model.pkl").read_bytes()),
        "green": pickle.loads((tmp_path / "b/model/model.pkl").read_bytes()),
    }
    frame = rows(6000, seed=11)
    spec = spec_for(
        control, [(str(control), 30), (str(treatment), 70)], DataLocation(path="i"), DataLocation(path="o")
    )
    first = score(spark, job_module, spec, frame)
    second = score(spark, job_module, spec, frame.sample(frac=1.0, random_state=5))  # another row order

    # the same key meets the same model, whatever the order or the partitioning
    assert list(first["variant"]) == list(second["variant"])
    share = (first["variant"] == "blue").mean()
    assert abs(share - 0.30) < 0.03, share
    # each row is scored by its variant's model, exactly
    for variant, model in models.items():
        mine = first[first["variant"] == variant]
        expected = expected_scores(model, mine)
        np.testing.assert_array_equal(mine["label"].to_numpy(), expected["label"].to_numpy())
        np.testing.assert_allclose(mine["p1"].to_numpy(), expected["p1"].to_numpy(), atol=1e-12)
    # the two models differ, so the check above tells them apart
    assert (
        expected_scores(models["blue"], frame)["label"] != expected_scores(models["green"], frame)["label"]
    ).any()
    # a new experiment's salt splits anew, still near the share
    salted = spec | {"salt": "experiment-2"}
    third = score(spark, job_module, salted, frame)
    assert list(third["variant"]) != list(first["variant"])
    assert abs((third["variant"] == "blue").mean() - 0.30) < 0.03


def test_scoring_module_batch_predict_replaces_the_built_in_call(
    tmp_path: Path, spark: Any, job_module: Any
) -> None:
    project = make_project(tmp_path / "p", score_py=BATCH_PREDICT_PY)
    frame = rows(50)
    spec = spec_for(project, [(str(project), 100)], DataLocation(path="i"), DataLocation(path="o"))
    out = score(spark, job_module, spec, frame)
    model = pickle.loads((tmp_path / "p/model/model.pkl").read_bytes())
    np.testing.assert_array_equal(out["label"].to_numpy(), model.predict(frame[FEATURES]))
    assert set(out["p1"]) == {0.5}


def test_an_mlflow_model_is_scored_through_pyfunc(tmp_path: Path, spark: Any, job_module: Any) -> None:
    """model.flavor: mlflow needs no scoring script: the job loads the MLmodel folder with
    mlflow.pyfunc, once per worker, and its answers are the model's."""
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    project = make_project(tmp_path / "p")
    model = pickle.loads((tmp_path / "p/model/model.pkl").read_bytes())
    mlflow_sklearn.save_model(model, str(tmp_path / "p/mlmodel"))
    manifest = yaml.safe_load(project.read_text())
    manifest["model"] = {"path": "mlmodel", "flavor": "mlflow"}
    del manifest["scoring"]
    manifest["target"]["outputs"] = [{"name": "label", "type": "bigint"}]
    project.write_text(yaml.safe_dump(manifest, sort_keys=False))
    frame = rows(500)
    spec = spec_for(
        project, [(str(project), 100)], DataLocation(path="i"), DataLocation(path="o"), flavor="mlflow"
    )
    out = score(spark, job_module, spec, frame)
    np.testing.assert_array_equal(out["label"].to_numpy(), model.predict(frame[FEATURES]))
    np.testing.assert_array_equal(out["customer_id"].to_numpy(), frame["customer_id"].to_numpy())


def onnx_project(folder: Path, form: str) -> tuple[Path, bytes]:
    """A project whose model is the scikit-learn classifier exported to ONNX: as skl2onnx gives it
    by default (one float matrix in, a label and a ZipMap of probabilities out), or in the form a
    SQL pool's PREDICT needs (one input and one output per column, float64)."""
    project = make_project(folder)
    model = pickle.loads((folder / "model/model.pkl").read_bytes())
    if form == "matrix":
        from skl2onnx import to_onnx

        data = to_onnx(model, np.zeros((1, len(FEATURES)), dtype=np.float32)).SerializeToString()
    else:
        from tdsp_deploy.backends.sqlserver.target import Column
        from tdsp_deploy.backends.synapse.sql_onnx_convert import sklearn_to_onnx

        data = sklearn_to_onnx(
            model,
            [Column(name=f, type="float") for f in FEATURES],
            [Column(name=n, type=t) for n, t in OUTPUTS],
        )
    (folder / "model").joinpath("model.pkl").unlink()
    (folder / "model" / "model.onnx").write_bytes(data)
    manifest = yaml.safe_load(project.read_text())
    manifest["model"] = {"path": "model/model.onnx", "flavor": "onnx"}
    project.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return project, data


def onnxruntime_scores(data: bytes, frame: pd.DataFrame) -> pd.DataFrame:
    """What onnxruntime answers for the rows, called directly: the reference for the job."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) == 1:
        feeds = {inputs[0].name: frame[FEATURES].to_numpy(dtype=np.float32)}
    else:
        feeds = {node.name: frame[[node.name]].to_numpy(dtype=np.float64) for node in inputs}
    label, *rest = session.run(None, feeds)
    if len(rest) == 1 and isinstance(rest[0], list):  # ZipMap: one {class: probability} per row
        probabilities = np.array([[row[c] for c in sorted(row)] for row in rest[0]])
    else:
        probabilities = np.column_stack([np.asarray(r).reshape(-1) for r in rest])
    scored = {"label": np.asarray(label).reshape(-1).astype("int64")}
    return pd.DataFrame(scored | {f"p{i}": probabilities[:, i].astype("float64") for i in range(3)})


@pytest.mark.parametrize("form", ["matrix", "per-column"])
def test_an_onnx_model_scores_every_row_as_onnxruntime_does(
    tmp_path: Path, spark: Any, job_module: Any, form: str
) -> None:
    project, data = onnx_project(tmp_path / "p", form)
    frame = rows(1500)
    spec = spec_for(
        project, [(str(project), 100)], DataLocation(path="i"), DataLocation(path="o"), flavor="onnx"
    )
    out = score(spark, job_module, spec, frame)

    expected = onnxruntime_scores(data, frame)
    assert len(out) == len(frame)
    np.testing.assert_array_equal(out["label"].to_numpy(), expected["label"].to_numpy())
    for name in ("p0", "p1", "p2"):  # exactly: the same runtime, the same float32 or float64 values
        np.testing.assert_array_equal(out[name].to_numpy(), expected[name].to_numpy())
    np.testing.assert_array_equal(out["customer_id"].to_numpy(), frame["customer_id"].to_numpy())
    # the ONNX model is the classifier: it agrees with scikit-learn on nearly every label
    model = train(1)
    assert (out["label"].to_numpy() == model.predict(frame[FEATURES])).mean() > 0.99


def test_tables_in_and_out_keep_every_row_scored(tmp_path: Path, spark: Any, job_module: Any) -> None:
    project = make_project(tmp_path / "p")
    frame = rows(700)
    spark.sql("CREATE DATABASE IF NOT EXISTS lake")
    spark.createDataFrame(frame).write.mode("overwrite").saveAsTable("lake.customers")
    spec = spec_for(
        project,
        [(str(project), 100)],
        DataLocation.model_validate("lake.customers"),
        DataLocation.model_validate("lake.scores"),
    )
    assert spec["input"] == {"table": "lake.customers", "format": "parquet"}

    summary = job_module.run(spark, spec)

    assert summary["rows"] == 700 and summary["output"] == "lake.scores"
    out = spark.table("lake.scores").toPandas().sort_values("customer_id").reset_index(drop=True)
    assert len(out) == len(frame)
    model = pickle.loads((tmp_path / "p/model/model.pkl").read_bytes())
    expected = expected_scores(model, frame)
    np.testing.assert_array_equal(out["label"].to_numpy(), expected["label"].to_numpy())
    np.testing.assert_allclose(out["p2"].to_numpy(), expected["p2"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["customer_id"].to_numpy(), frame["customer_id"].to_numpy())
    # the table lives in the warehouse folder, as a pool's lake database keeps it
    assert any(Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:")).rglob("*.parquet"))
    # a second run replaces the table rather than appending to it
    job_module.run(spark, spec)
    assert spark.table("lake.scores").count() == 700


def test_a_delta_output_without_delta_lake_fails_before_scoring(
    tmp_path: Path, spark: Any, job_module: Any
) -> None:
    project = make_project(tmp_path / "p")
    source = tmp_path / "in.parquet"
    rows(20).to_parquet(source, index=False)
    sink = tmp_path / "out.delta"
    spec = spec_for(
        project, [(str(project), 100)], DataLocation(path=str(source)), DataLocation(path=str(sink))
    )
    assert spec["output"]["format"] == "delta"
    with pytest.raises(job_module.JobError) as refused:
        job_module.run(spark, spec)
    message = str(refused.value)
    assert "needs Delta Lake" in message and "io.delta:delta-spark_2.13" in message
    assert "DeltaSparkSessionExtension" in message and "Synapse Spark pools include it" in message
    assert not sink.exists()  # nothing was written


def test_job_reads_csv_and_writes_the_format_of_the_path(tmp_path: Path, spark: Any, job_module: Any) -> None:
    project = make_project(tmp_path / "p")
    frame = rows(300)
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    sink = tmp_path / "out.csv"
    spec = spec_for(
        project, [(str(project), 100)], DataLocation(path=str(source)), DataLocation(path=str(sink))
    )
    summary = job_module.run(spark, spec)
    assert summary["rows"] == 300 and summary["format"] == "csv"
    written = pd.concat(pd.read_csv(p) for p in sorted(sink.glob("part-*.csv"))).sort_values("customer_id")
    model = pickle.loads((tmp_path / "p/model/model.pkl").read_bytes())
    np.testing.assert_array_equal(written["label"].to_numpy(), model.predict(frame[FEATURES]))


CONVERSIONS_PY = (
    SCORE_PY
    + """
def predict(model, df):
    # what the two paths must convert alike: a float label for a bigint column, NaN for a
    # missing feature, and a column handed back as it came
    import numpy, pandas
    label = model.predict(df.fillna(0).astype("float64")).astype("float64")
    return pandas.DataFrame(
        {"label": label, "p0": numpy.where(df["f0"].isna(), numpy.nan, 0.25), "p1": df["f1"], "p2": df["f3"]}
    )
"""
)


def test_the_arrow_path_writes_what_the_pandas_path_writes(
    tmp_path: Path, spark: Any, job_module: Any
) -> None:
    """Numbers in and out: the batches stay Arrow (mapInArrow) and only the features become
    pandas. Every column, passed through or predicted, nulls included, comes out with the
    type and the value the pandas path (mapInPandas) gives it."""
    from pyspark.sql import functions as F

    project = make_project(tmp_path / "p", score_py=CONVERSIONS_PY)
    manifest = yaml.safe_load(project.read_text())
    manifest["target"]["inputs"][3]["type"] = "int"  # an integer feature, with nulls below
    project.write_text(yaml.safe_dump(manifest, sort_keys=False))
    spec = spec_for(project, [(str(project), 100)], DataLocation(path="i"), DataLocation(path="o"))
    assert job_module.arrow_path(spec)
    frame = (
        spark.createDataFrame(rows(3000))
        .withColumn("f0", F.when(F.col("customer_id") % 3 == 0, F.lit(None)).otherwise(F.col("f0")))
        .withColumn("f3", F.when(F.col("customer_id") % 4 == 0, F.lit(None)).otherwise(F.col("f3") * 10))
        .withColumn("region", F.when(F.col("customer_id") % 5 == 0, F.lit(None)).otherwise(F.col("region")))
        .withColumn("seen", F.timestamp_seconds(F.col("customer_id")))
        .withColumn("day", F.to_date(F.timestamp_seconds(F.col("customer_id") * 1000)))
        .withColumn("amount", (F.col("customer_id") / 7).cast("decimal(12,3)"))
        .withColumn("even", F.col("customer_id") % 2 == 0)
        .withColumn("maybe", F.when(F.col("customer_id") % 6 != 0, F.col("customer_id")))
    )
    arrow = job_module.scored_frame(spark, frame, spec, arrow=True)
    pandas_path = job_module.scored_frame(spark, frame, spec, arrow=False)
    assert arrow.schema == pandas_path.schema
    assert "MapInArrow" in arrow._jdf.queryExecution().executedPlan().toString()
    assert "MapInPandas" in pandas_path._jdf.queryExecution().executedPlan().toString()
    ours = arrow.toPandas().sort_values("customer_id").reset_index(drop=True)
    theirs = pandas_path.toPandas().sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs)
    assert len(ours) == 3000
    # NaN predictions are nulls (which toPandas cannot tell apart), as the pandas path makes them
    missing = (arrow.where("p0 IS NULL").count(), pandas_path.where("p0 IS NULL").count())
    assert missing[0] == missing[1] == (ours["customer_id"] % 3 == 0).sum() > 0
    # the float labels are whole numbers in a bigint column
    assert ours["p0"].isna().sum() == (ours["customer_id"] % 3 == 0).sum() > 0
    assert str(ours["label"].dtype) == "int64" and set(ours["label"]) <= {0, 1, 2}
    assert ours["p2"].isna().sum() == (ours["customer_id"] % 4 == 0).sum() > 0


def test_text_or_dates_among_features_or_predictions_keep_the_pandas_path(
    tmp_path: Path, spark: Any, job_module: Any
) -> None:
    project = make_project(tmp_path / "p")
    spec = spec_for(project, [(str(project), 100)], DataLocation(path="i"), DataLocation(path="o"))
    assert job_module.arrow_path(spec)
    text_label = {**spec, "outputs": [{"name": "label", "type": "string"}, *spec["outputs"][1:]]}
    dated = {**spec, "inputs": [*spec["inputs"], {"name": "region", "type": "date"}]}
    for other in (text_label, dated):
        assert not job_module.arrow_path(other)
    plan = job_module.scored_frame(spark, spark.createDataFrame(rows(5)), text_label)
    assert "MapInPandas" in plan._jdf.queryExecution().executedPlan().toString()


def test_arrow_batches_grow_to_100000_rows_for_a_narrow_table_and_less_for_a_wide_one(
    spark: Any, job_module: Any
) -> None:
    from pyspark.sql.types import DoubleType, StructField, StructType

    key = job_module.BATCH_ROWS_KEY
    before = spark.conf.get(key)
    try:
        job_module.set_batch_rows(spark, spark.createDataFrame(rows(3)).schema)
        assert spark.conf.get(key) == "100000"
        wide = StructType([StructField(f"c{i}", DoubleType()) for i in range(400)])  # 3,200 bytes a row
        job_module.set_batch_rows(spark, wide)
        assert spark.conf.get(key) == str((64 << 20) // 3200)
        very_wide = StructType([StructField(f"c{i}", DoubleType()) for i in range(20000)])
        job_module.set_batch_rows(spark, very_wide)
        assert spark.conf.get(key) == "10000"  # never below Spark's own default
    finally:
        spark.conf.set(key, before)


def test_input_without_a_model_column_is_refused_by_name(tmp_path: Path, spark: Any, job_module: Any) -> None:
    project = make_project(tmp_path / "p")
    spec = spec_for(project, [(str(project), 100)], DataLocation(path="i"), DataLocation(path="o"))
    with pytest.raises(ValueError, match="no column f2"):
        job_module.scored_frame(spark, spark.createDataFrame(rows(5).drop(columns=["f2"])), spec)


# -- tdsp-deploy run --local: the same job through spark-submit ----------------------------------
def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tdsp_deploy", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env or dict(os.environ),
        stdin=subprocess.DEVNULL,
    )


def test_run_local_scores_a_parquet_with_spark_submit(tmp_path: Path) -> None:
    # eight files, that a file "costing" 64 MiB to open keeps from sharing one task, so several
    # tasks on local[2]'s two Python workers: a worker that was not reused, or a model loaded
    # per batch, would show as more model loads than workers
    project = make_project(
        tmp_path / "p", target={"conf": {"spark.sql.files.openCostInBytes": str(64 << 20)}}
    )
    frame = rows(1500)
    source = tmp_path / "rows.parquet"
    source.mkdir()
    for part in range(8):
        frame.iloc[part * 200 : (part + 1) * 200].to_parquet(source / f"part-{part}.parquet", index=False)
    sink = tmp_path / "scored.parquet"
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    result = run_cli(
        "run", str(project), "--local", "--master", "local[2]", "-i", str(source), "-o", str(sink), "--json",
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not list(scratch.glob("tdsp-run-*")), "a run that succeeded left its scratch folder behind"
    summary = json.loads(result.stdout)
    assert summary["rows"] == 1500 and summary["local"] is True
    assert len(list(sink.glob("part-*.parquet"))) >= 3  # more tasks wrote than there are workers
    assert 1 <= summary["model_loads"] <= 2, summary  # and no more than the two workers loaded it
    assert "local Spark" in result.stderr  # progress goes to stderr
    out = pd.read_parquet(sink).sort_values("customer_id").reset_index(drop=True)
    model = pickle.loads((tmp_path / "p/model/model.pkl").read_bytes())
    expected = expected_scores(model, frame)
    np.testing.assert_array_equal(out["label"].to_numpy(), expected["label"].to_numpy())
    np.testing.assert_allclose(out["p2"].to_numpy(), expected["p2"].to_numpy(), atol=1e-12)
    assert list(out["region"]) == list(frame["region"])


def test_run_local_failure_exits_4_with_the_reason(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    source = tmp_path / "rows.parquet"
    rows(10).drop(columns=["f3"]).to_parquet(source, index=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_cli(
        "run", str(project), "--local", "--master", "local[1]", "-i", str(source), "-o", str(tmp_path / "o"),
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 4, result.stderr[-3000:]
    assert "the input has no column f3" in result.stderr
    # the driver log the error points at is still there to read
    (log,) = scratch.glob("tdsp-run-*/driver.log")
    assert str(log) in " ".join(result.stderr.split()), result.stderr[-2000:]
    assert "Traceback" not in result.stderr.split("failed")[0]  # our message first, the job's log after


def test_run_local_to_delta_without_delta_lake_says_what_to_install(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    source = tmp_path / "rows.parquet"
    rows(10).to_parquet(source, index=False)
    result = run_cli(
        "run",
        str(project),
        "--local",
        "--master",
        "local[1]",
        "-i",
        str(source),
        "-o",
        str(tmp_path / "o.delta"),
    )
    assert result.returncode == 4, result.stderr[-3000:]
    reason = result.stderr.split("failed")[1]
    assert "JobError: the delta format needs Delta Lake" in reason
    assert "spark.jars.packages: io.delta:delta-spark_2.13" in reason
    assert "\tat org.apache" not in reason  # the job's words, not a Java stack trace


def test_run_local_without_java_says_how_to_get_it(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    source = tmp_path / "rows.parquet"
    rows(3).to_parquet(source, index=False)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # python, but no java
    result = run_cli("run", str(project), "--local", "-i", str(source), "-o", str(tmp_path / "o"), env=env)
    assert result.returncode == 3, result.stderr
    assert "needs Java" in result.stderr and "default-jre-headless" in result.stderr


def test_run_local_refuses_an_azure_path(tmp_path: Path, cli: Any) -> None:
    project = make_project(tmp_path / "p")
    result = cli("run", project, "--local", "-i", f"{STORAGE}/rows.parquet", "-o", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "local paths" in result.stderr


# -- the package on the workers: extracted by hand, checked against its lock, never trusted -------
def _package_for_workers(tmp_path: Path, spark: Any) -> tuple[Path, str]:
    """A real package, added to the Spark job under a name of its own (as the job adds it)."""
    import shutil
    import uuid

    manifest = load(make_project(tmp_path / "p")).manifest
    built = build_package(manifest, tmp_path / "packages")
    name = f"{uuid.uuid4().hex}.tar"
    shutil.copy(built.path, tmp_path / name)
    spark.sparkContext.addFile(str(tmp_path / name))
    return tmp_path / name, name


def _old_python_extractall(monkeypatch: pytest.MonkeyPatch) -> None:
    """tarfile as on a Python before 3.10.12: extractall() takes no filter."""
    import tarfile

    original = tarfile.TarFile.extractall

    def extractall(
        self: Any, path: Any = ".", members: Any = None, *, numeric_owner: bool = False, **kw: Any
    ) -> Any:
        if "filter" in kw:
            raise TypeError("extractall() got an unexpected keyword argument 'filter'")
        return original(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


def extracting_folders() -> set[Path]:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("tdsp-extract-*"))


def test_a_package_with_a_link_is_refused_even_where_tarfile_has_no_filter(
    tmp_path: Path, spark: Any, job_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import tarfile
    import tempfile
    import uuid

    name = f"{uuid.uuid4().hex}.tar"
    archive = tmp_path / name
    lock = json.dumps({"files": [{"path": "code/score.py", "sha256": "0" * 64, "size": 0, "mode": "0644"}]})
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("code/score.py")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        data = lock.encode()
        info = tarfile.TarInfo("package.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    spark.sparkContext.addFile(str(archive))
    _old_python_extractall(monkeypatch)
    before = extracting_folders()

    with pytest.raises(job_module.JobError, match="unsafe member 'code/score.py'"):
        job_module._unpacked(name)
    root = Path(tempfile.gettempdir()) / f"tdsp-{name[:-4]}"
    assert not root.exists()
    assert extracting_folders() == before, "a failed extraction left its folder behind"


def test_a_folder_left_on_the_machine_is_used_only_if_it_matches_the_lock(
    tmp_path: Path, spark: Any, job_module: Any
) -> None:
    import shutil
    import tarfile
    import tempfile

    archive, name = _package_for_workers(tmp_path, spark)
    root = Path(tempfile.gettempdir()) / f"tdsp-{name[:-4]}"
    try:
        # a folder of the same name, with a model that is not the package's
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        (root / "model/model.pkl").write_bytes(b"not the model")
        os.chmod(root, 0o700)
        used = Path(job_module._unpacked(name))
        assert used != root
        assert (used / "model/model.pkl").read_bytes() == (tmp_path / "p/model/model.pkl").read_bytes()
        shutil.rmtree(used)

        # the same files, but a folder others may write to: not trusted either
        shutil.rmtree(root)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        os.chmod(root, 0o777)
        used = Path(job_module._unpacked(name))
        assert used != root
        shutil.rmtree(used)

        # the job's own extraction is reused as long as it matches
        shutil.rmtree(root)
        first = Path(job_module._unpacked(name))
        assert first == root and Path(job_module._unpacked(name)) == root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_worker_that_loses_the_extraction_race_uses_the_winners_folder_and_leaves_none(
    tmp_path: Path, spark: Any, job_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import tempfile

    archive, name = _package_for_workers(tmp_path, spark)
    root = Path(tempfile.gettempdir()) / f"tdsp-{name[:-4]}"
    extract = job_module.extract_checked

    def racing(archive: str, dest: str, lock: Any) -> None:
        extract(archive, dest, lock)
        if not root.exists():  # another worker finishes first and renames its copy into place
            other = tempfile.mkdtemp(prefix="tdsp-other-")
            extract(archive, other, lock)
            os.rename(other, root)

    monkeypatch.setattr(job_module, "extract_checked", racing)
    before = extracting_folders()
    try:
        assert Path(job_module._unpacked(name)) == root
        assert extracting_folders() == before  # the loser's copy is gone
    finally:
        shutil.rmtree(root, ignore_errors=True)
