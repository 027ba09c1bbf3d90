"""The sqlserver target's generated artefacts: schema, scoring script, T-SQL.

The scoring script is run with the exact ``sp_execute_external_script`` contract
(tests/fakes/sqlserver_harness.py) and must answer like the model called directly. The T-SQL is
compared with golden files (``UPDATE_GOLDEN=1 pytest ...`` rewrites them) and parsed by sqlglot.
"""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.sql import rows as sql_rows
from tdsp_deploy.backends.sqlserver import tsql
from tdsp_deploy.backends.sqlserver.script import generate_script, model_payload, row_prelude
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget, quote_identifier, sql_type
from tdsp_deploy.manifest.model import manifest_class
from tdsp_deploy.packaging.lock import LockedModel, PackageLock
from tests import paths
from tests.fakes.sqlserver_harness import (
    ExternalScriptError,
    run_external_script,
    run_external_script_with_outputs,
)

ROOT = paths.ROOT
IRIS = ROOT / "examples" / "iris"
GOLDEN = paths.DATA / "golden" / "sqlserver"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
# A model name no T-SQL text may hold: it must travel as a parameter.
PLANTED_MODEL_NAME = "Zq9-planted.model_name-7x"


def target_doc(**changes):
    doc = {
        "kind": "sqlserver",
        "server": "sql.example.com",
        "database": "scoring",
        "auth": {"method": "sql", "username": "deployer", "password_env": "SQL_PASSWORD"},
        "inputs": [{"name": n, "type": "float"} for n in FEATURES],
        "outputs": [{"name": "label", "type": "nvarchar(16)"}]
        + [{"name": f"p_{c}", "type": "float"} for c in CLASSES],
    }
    doc.update(changes)
    return doc


def make_target(**changes) -> SqlServerTarget:
    return SqlServerTarget.model_validate(target_doc(**changes))


def make_manifest(flavor="onnx", **target_changes):
    cls = manifest_class((LocalTarget, SqlServerTarget))
    raw = {
        "name": "iris",
        "model": {"path": "model/", "name": PLANTED_MODEL_NAME, "version": "3", "flavor": flavor},
        "scoring": {"code": "src/", "script": "score.py"},
        "target": target_doc(**target_changes),
    }
    return cls.model_validate(raw, context={"base_dir": IRIS})


def make_lock() -> PackageLock:
    model = LockedModel(name=PLANTED_MODEL_NAME, version="3", path="model/model", sha256="0" * 64)
    return PackageLock(
        package_id="1" * 64,
        name="iris",
        model=model,
        script="code/score.py",
        environment=None,
        files=(),
        tool={"name": "tdsp-deploy"},
        python="3.11",
        libraries={},
    )


def iris_rows(n=100) -> pd.DataFrame:
    from sklearn.datasets import load_iris

    data = load_iris().data
    rows = np.random.default_rng(7).choice(len(data), size=n, replace=False)
    return pd.DataFrame(data[rows], columns=FEATURES)


def result_sets(target: SqlServerTarget):
    return [(c.name, c.type) for c in target.outputs] + [("model_version", "nvarchar(64)")]


def routed(*routes):
    """The procedure's @params for routes given as (slot, version, weight, payload[, salt]):
    the payloads bundled (8-byte big-endian length, then the bytes) and the routes as JSON,
    as the T-SQL preamble builds them."""
    import json

    bundle = b"".join(len(r[3]).to_bytes(8, "big") + r[3] for r in routes)
    docs = [
        {"slot": r[0], "version": r[1], "weight": r[2], **({"salt": r[4]} if len(r) > 4 else {})}
        for r in routes
    ]
    return {"@model_bundle": bundle, "@routes": json.dumps(docs)}


def one_route(payload, version):
    return routed(("blue", version, 100, payload))


# --- schema ---------------------------------------------------------------------------------


def test_defaults():
    target = make_target()
    assert (target.port, target.schema_, target.model_table) == (1433, "dbo", "tdsp_models")
    assert target.encrypt is True and target.trust_server_certificate is False
    assert target.procedure_name("iris-v2") == "score_iris_v2"
    assert target.row_procedure_name("iris-v2") == "score_iris_v2_row"
    assert make_target(procedure="predict_iris").procedure_name("iris") == "predict_iris"


@pytest.mark.parametrize(
    "changes",
    [
        {"schema": "x]; DROP TABLE y--"},
        {"model_table": "t; DROP TABLE y"},
        {"procedure": "p'--"},
        {"database": "a b"},
        {"model_table": "a" * 129},
        {"schema": "1abc"},
        {"inputs": [{"name": "x]; DROP TABLE y--", "type": "float"}]},
        {"inputs": [{"name": "x", "type": "float; DROP TABLE y"}]},
        {"inputs": [{"name": "x", "type": "nvarchar(5000)"}]},
        {"inputs": [{"name": "x", "type": "decimal(40,2)"}]},
        {"inputs": [{"name": "x", "type": "xml"}]},
        {"inputs": [{"name": "model_bytes", "type": "float"}]},
        {"inputs": [{"name": "class", "type": "float"}]},
        {"inputs": [{"name": "a", "type": "int"}, {"name": "A", "type": "int"}]},
        {"inputs": []},
        {"port": 0},
        {"server": "host; Trusted_Connection=yes"},
        {"auth": {"method": "kerberos"}},
        {"unknown": 1},
    ],
)
def test_schema_refuses(changes):
    with pytest.raises(ValidationError):
        make_target(**changes)


def test_identifier_limits_and_quoting():
    assert make_target(model_table="a" * 128).model_table == "a" * 128
    assert quote_identifier("tdsp_models") == "[tdsp_models]"
    assert quote_identifier("x]; DROP TABLE y--") == "[x]]; DROP TABLE y--]"
    with pytest.raises(ValueError):
        quote_identifier("a" * 129)


@pytest.mark.parametrize(
    "given, normalized",
    [
        ("FLOAT", "float"),
        ("nvarchar( max )", "nvarchar(max)"),
        ("decimal(10, 2)", "decimal(10,2)"),
        ("varchar(8000)", "varchar(8000)"),
        ("numeric(5)", "decimal(5,0)"),
        ("datetime2", "datetime2"),
    ],
)
def test_sql_types_normalized(given, normalized):
    assert sql_type(given) == normalized


def test_password_must_come_from_environment():
    with pytest.raises(ValidationError) as error:
        make_target(auth={"method": "sql", "username": "u", "password": "s3cret!"})
    assert "password_env" in str(error.value)
    assert "s3cret!" not in str(error.value)
    with pytest.raises(ValidationError):
        make_target(auth={"method": "sql", "username": "u", "password_env": "NOT A NAME"})
    auth = make_target(auth={"method": "sql", "username": "u", "password_env": "SQL_PASSWORD"}).auth
    assert auth.password_env == "SQL_PASSWORD"
    assert make_target(auth={"method": "entra"}).auth.method == "entra"
    assert make_target(auth={"method": "integrated"}).auth.method == "integrated"


def test_password_refused_through_the_loader(tmp_path):
    from tdsp_deploy.errors import ManifestError
    from tdsp_deploy.manifest.loader import load_manifest

    (tmp_path / "model.onnx").write_bytes((IRIS / "model" / "model.onnx").read_bytes())
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n")
    (tmp_path / "deploy.yaml").write_text(
        "name: iris\nmodel: {path: model.onnx, flavor: onnx}\nscoring: {script: score.py}\n"
        "target:\n  kind: sqlserver\n  server: db\n  database: d\n"
        "  auth: {method: sql, username: u, password: '${PW}'}\n"
        "  inputs: [{name: x, type: float}]\n  outputs: [{name: y, type: float}]\n"
    )
    with pytest.raises(ManifestError) as error:
        load_manifest(
            tmp_path / "deploy.yaml", targets=(LocalTarget, SqlServerTarget), environ={"PW": "hunter2"}
        )
    assert "password_env" in error.value.message
    assert "hunter2" not in error.value.message


# --- the scoring script in the sp_execute_external_script harness ---------------------------


def test_onnx_script_answers_like_the_model():
    import onnxruntime as ort

    target = make_target()
    payload, file_name = model_payload(IRIS / "model", "onnx")
    assert file_name == "model.onnx"
    script = generate_script("onnx", target.inputs, target.outputs, model_file_name=file_name)
    rows = iris_rows()

    out = run_external_script(script, rows, one_route(payload, "3"), result_sets=result_sets(target))

    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {session.get_inputs()[0].name: rows.to_numpy(np.float32)})
    assert list(out.columns) == ["label", "p_setosa", "p_versicolor", "p_virginica", "model_version"]
    assert out["label"].tolist() == labels.tolist()
    np.testing.assert_array_equal(
        out[[f"p_{c}" for c in CLASSES]].to_numpy(), probabilities.astype(np.float64)
    )
    assert set(out["model_version"]) == {"3"}


@pytest.fixture(scope="module")
def sklearn_model():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    X = pd.DataFrame(iris.data, columns=FEATURES)
    return LogisticRegression(max_iter=1000, random_state=0).fit(X, iris.target_names[iris.target])


def test_sklearn_script_answers_like_the_model(sklearn_model):
    target = make_target()
    payload = pickle.dumps(sklearn_model)
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    rows = iris_rows()

    out = run_external_script(script, rows, one_route(payload, "7"), result_sets=result_sets(target))

    assert out["label"].tolist() == sklearn_model.predict(rows).tolist()
    np.testing.assert_array_equal(
        out[[f"p_{c}" for c in CLASSES]].to_numpy(), sklearn_model.predict_proba(rows)
    )
    assert set(out["model_version"]) == {"7"}


# The scikit-learn prediction code as generated before the labels were mapped after both model
# calls (and by one comparison per class): the script must still answer exactly as it did.
_EARLIER_SKLEARN_PREDICT = """

def _blocks(model, features):
    blocks = [_labels(model, numpy.asarray(model.predict(features))).reshape(len(features), -1)]
    if len(OUTPUTS) > blocks[0].shape[1] and hasattr(model, "predict_proba"):
        blocks.append(numpy.asarray(model.predict_proba(features)).reshape(len(features), -1))
    return blocks


def _labels(model, labels):
    classes = getattr(model, "classes_", None)
    if labels.dtype.kind != "U" or not isinstance(classes, numpy.ndarray):
        return labels
    if classes.dtype.kind != "U" or classes.ndim != 1 or not len(classes):
        return labels
    position = numpy.minimum(numpy.searchsorted(classes, labels), len(classes) - 1)
    if not (classes[position] == labels).all():
        return labels
    return classes.astype(object)[position]
"""


def _earlier_script(script: str) -> str:
    start = script.index("\n\ndef _blocks(model, features):")
    end = script.index("\n\ndef _predict(model, features, version):")
    return script[:start] + _EARLIER_SKLEARN_PREDICT + script[end:]


class StrayLabels:
    """A classifier whose predict() answers a label that is not among its classes_."""

    classes_ = np.array(["no", "yes"])

    def predict(self, features):
        return np.where(features.iloc[:, 0].to_numpy() > 6, "maybe", "no")

    def predict_proba(self, features):
        high = (features.iloc[:, 0].to_numpy() > 6).astype(float)
        return np.column_stack([1 - high, high])


def _labelled_models(sklearn_model):
    from sklearn.linear_model import LinearRegression
    from sklearn.tree import DecisionTreeClassifier

    rows = random_rows(600, seed=3)
    bucket = np.digitize(rows["petal_length"], np.linspace(1, 7, 19))  # 20 classes: the search path
    prefixes = np.array(["a", "ab", "abc"])[bucket % 3]  # labels that are prefixes of each other
    return {
        "iris": sklearn_model,
        "integers": DecisionTreeClassifier(random_state=0).fit(rows, bucket),
        "twenty": DecisionTreeClassifier(random_state=0).fit(rows, np.char.add("class_", bucket.astype(str))),
        "prefixes": DecisionTreeClassifier(random_state=0, max_depth=3).fit(rows, prefixes),
        "stray": StrayLabels(),
        "regression": LinearRegression().fit(rows, rows["petal_width"] * 2),
    }


@pytest.mark.parametrize("kind", ["iris", "integers", "twenty", "prefixes", "stray", "regression"])
def test_sklearn_script_answers_as_the_earlier_script(sklearn_model, kind):
    model = _labelled_models(sklearn_model)[kind]
    outputs = [{"name": "label", "type": "nvarchar(16)"}]
    if hasattr(model, "predict_proba"):
        outputs += [{"name": f"p{i}", "type": "float"} for i in range(len(model.classes_))]
    target = make_target(outputs=outputs)
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    earlier = _earlier_script(script)
    assert earlier != script and "def _labels" in earlier
    rows = random_rows(5_000, seed=5)
    payload = pickle.dumps(model)
    for params in (
        one_route(payload, "1"),
        routed(("blue", "1", 60, payload, "s"), ("green", "2", 40, pickle.dumps(sklearn_model), "s")),
    ):
        answers = [
            run_external_script_with_outputs(text, rows, params, output_params=["request_log"])
            for text in (script, earlier)
        ]
        (now, now_log), (before, before_log) = answers
        pd.testing.assert_frame_equal(now, before, check_exact=True)
        # the same Python types row by row, not only equal values
        assert [type(v) for v in now["label"]] == [type(v) for v in before["label"]]
        strip = [
            [{k: v for k, v in e.items() if k != "latency_ms"} for e in json.loads(log["request_log"])]
            for log in (now_log, before_log)
        ]
        assert strip[0] == strip[1]
        if kind in ("iris", "twenty", "prefixes") and len(strip[0]) == 1:
            # one route: every row's label is one of a few strings, not a string of its own
            assert now["label"].dtype == object and len({id(v) for v in now["label"]}) <= len(model.classes_)


def test_sklearn_joblib_and_user_predict(sklearn_model, tmp_path):
    import io

    import joblib

    buffer = io.BytesIO()
    joblib.dump(sklearn_model, buffer)
    target = make_target(outputs=[{"name": "label", "type": "nvarchar(16)"}])
    user_code = (
        "def predict(model, df):\n"
        "    return pandas.DataFrame({'label': [s.upper() for s in model.predict(df)]})\n"
    )
    script = generate_script(
        "sklearn", target.inputs, target.outputs, model_file_name="m.joblib", user_code=user_code
    )
    rows = iris_rows(20)
    out = run_external_script(
        script, rows, one_route(buffer.getvalue(), "1"), result_sets=result_sets(target)
    )
    assert out["label"].tolist() == [s.upper() for s in sklearn_model.predict(rows)]


def test_row_prelude_scores_one_row(sklearn_model):
    target = make_target()
    script = row_prelude(target.inputs) + generate_script(
        "sklearn", target.inputs, target.outputs, model_file_name="model.pkl"
    )
    row = iris_rows(1)
    params = {**one_route(pickle.dumps(sklearn_model), "7"), **row.iloc[0].to_dict()}
    out = run_external_script(script, None, params, result_sets=result_sets(target))
    assert out["label"].tolist() == sklearn_model.predict(row).tolist()


def test_zero_rows_give_an_empty_result_set_with_the_declared_columns(sklearn_model):
    target = make_target()
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    empty = iris_rows(3).iloc[:0]

    out, outputs = run_external_script_with_outputs(
        script,
        empty,
        one_route(pickle.dumps(sklearn_model), "7"),
        result_sets=result_sets(target),
        output_params=["request_log"],
    )

    assert list(out.columns) == ["label", "p_setosa", "p_versicolor", "p_virginica", "model_version"]
    assert len(out) == 0
    assert json.loads(outputs["request_log"]) == [
        {
            "slot": "blue",
            "version": "7",
            "row_count": 0,
            "status": 200,
            "latency_ms": pytest.approx(0, abs=1e3),
        }
    ]
    # the model is still loaded: a payload that does not unpickle fails the (zero-row) probe, and
    # the script hands its traceback to the procedure (which THROWs it) with the declared columns
    out, outputs = run_external_script_with_outputs(
        script,
        empty,
        one_route(b"not a pickle", "7"),
        result_sets=result_sets(target),
        output_params=["script_error", "request_log"],
    )
    assert re.search("npickling|pickle", outputs["script_error"]) and "Traceback" in outputs["script_error"]
    assert len(out) == 0 and outputs["request_log"] == "[]"


def _two_versions(sklearn_model):
    from sklearn.dummy import DummyClassifier

    rows = iris_rows(150)
    # the treatment answers one class only: which version served a row shows in its answer
    constant = DummyClassifier(strategy="constant", constant="virginica").fit(rows, ["virginica"] * len(rows))
    return pickle.dumps(sklearn_model), pickle.dumps(constant)


def random_rows(n, seed=11) -> pd.DataFrame:
    values = np.random.default_rng(seed).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(n, 4)).round(2)
    return pd.DataFrame(values, columns=FEATURES)


def test_a_split_sends_each_row_by_its_key_hash_close_to_the_weights(sklearn_model):
    from tdsp_deploy.backends.local.routes import key_fraction

    control, treatment = _two_versions(sklearn_model)
    target = make_target(outputs=[{"name": "label", "type": "nvarchar(16)"}])
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    rows = random_rows(20_000)
    params = routed(("blue", "1", 70, control, "exp1"), ("green", "2", 30, treatment, "exp1"))

    out, outputs = run_external_script_with_outputs(
        script, rows, params, result_sets=result_sets(target), output_params=["request_log"]
    )

    served = out["model_version"].to_numpy()
    assert abs((served == "2").mean() - 0.30) < 0.02  # 6 standard deviations for 20,000 rows
    # each row answered by its own version's model, in the order the rows came
    assert (out["label"][served == "2"] == "virginica").all()
    control_rows = rows[served == "1"]
    assert out["label"][served == "1"].tolist() == sklearn_model.predict(control_rows).tolist()
    # the hash is the local router's sticky-key hash of the row's input values
    for index in (0, 1, 2, 17, 999):
        key = "|".join(str(v) for v in rows.iloc[index])
        expected = "1" if key_fraction(b"exp1", key.encode()) * 100 < 70 else "2"
        assert served[index] == expected
    # deterministic: the same rows, the same versions; another salt, another assignment
    again = run_external_script(script, rows, params, result_sets=result_sets(target))
    assert (again["model_version"].to_numpy() == served).all()
    other = routed(("blue", "1", 70, control, "exp2"), ("green", "2", 30, treatment, "exp2"))
    reshuffled = run_external_script(script, rows, other, result_sets=result_sets(target))["model_version"]
    assert (reshuffled.to_numpy() != served).mean() > 0.2
    # the request log: one entry per slot, with the row numbers each one served
    log = json.loads(outputs["request_log"])
    assert [(e["slot"], e["version"], e["status"]) for e in log] == [("blue", "1", 200), ("green", "2", 200)]
    assert sum(e["row_count"] for e in log) == len(rows)
    assert sorted(log[0]["row_keys"] + log[1]["row_keys"]) == list(range(len(rows)))


def test_an_ab_key_keeps_every_row_of_a_key_on_one_slot(sklearn_model):
    control, treatment = _two_versions(sklearn_model)
    target = make_target(outputs=[{"name": "label", "type": "nvarchar(16)"}], ab_key="sepal_length")
    script = generate_script(
        "sklearn", target.inputs, target.outputs, model_file_name="model.pkl", ab_key="sepal_length"
    )
    rows = random_rows(5000)
    params = routed(("blue", "1", 50, control), ("green", "2", 50, treatment))

    out, outputs = run_external_script_with_outputs(
        script, rows, params, result_sets=result_sets(target), output_params=["request_log"]
    )

    per_key = pd.DataFrame({"key": rows["sepal_length"], "version": out["model_version"]})
    assert per_key.groupby("key")["version"].nunique().max() == 1
    assert 0.4 < (out["model_version"] == "2").mean() < 0.6
    log = json.loads(outputs["request_log"])
    assert sorted(k for e in log for k in e["row_keys"]) == sorted(rows["sepal_length"].astype(str))


def test_under_a_split_a_failing_version_answers_null_and_is_logged_500(sklearn_model):
    control, _ = _two_versions(sklearn_model)
    target = make_target(outputs=[{"name": "label", "type": "nvarchar(16)"}])
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    rows = random_rows(400)
    # the treatment unpickles, but is not a model: predict() fails on it
    params = routed(("blue", "1", 50, control), ("green", "2", 50, pickle.dumps({"not": "a model"})))

    out, outputs = run_external_script_with_outputs(
        script, rows, params, result_sets=result_sets(target), output_params=["request_log"]
    )

    served = out["model_version"]
    assert out["label"][served == "2"].isna().all() and out["label"][served == "1"].notna().all()
    log = {e["slot"]: e for e in json.loads(outputs["request_log"])}
    assert log["blue"]["status"] == 200 and log["green"]["status"] == 500
    assert "AttributeError" in log["green"]["message"]


def test_mlflow_script_answers_like_the_model(sklearn_model, tmp_path):
    import mlflow.sklearn as mlflow_sklearn  # the test extra installs mlflow-skinny (and skops)

    # requirements given: mlflow would otherwise infer them in a subprocess
    mlflow_sklearn.save_model(sklearn_model, tmp_path / "mlflow-model", pip_requirements=["scikit-learn"])
    payload, name = model_payload(tmp_path / "mlflow-model", "mlflow")
    assert name == "mlflow-model"
    target = make_target(outputs=[{"name": "label", "type": "nvarchar(16)"}])
    script = generate_script("mlflow", target.inputs, target.outputs, model_file_name=name)
    rows = iris_rows()

    out = run_external_script(script, rows, one_route(payload, "5"), result_sets=result_sets(target))

    assert out["label"].tolist() == sklearn_model.predict(rows).tolist()
    assert set(out["model_version"]) == {"5"}


def test_script_is_deterministic():
    target = make_target()
    one = generate_script("onnx", target.inputs, target.outputs, model_file_name="model.onnx")
    assert one == generate_script("onnx", target.inputs, target.outputs, model_file_name="model.onnx")
    compile(generate_script("mlflow", target.inputs, target.outputs, model_file_name="m"), "mlflow", "exec")


def test_harness_says_no_like_the_server():
    rows = iris_rows(3)
    with pytest.raises(ExternalScriptError) as error:
        run_external_script("x = 1\n", rows, {}, result_sets=[("y", "float")])
    assert error.value.number == 11536
    with pytest.raises(ExternalScriptError) as error:
        run_external_script("OutputDataSet = InputDataSet\n", rows, {}, result_sets=[("y", "float")])
    assert error.value.number == 11537
    with pytest.raises(ExternalScriptError) as error:
        run_external_script("raise RuntimeError('boom')\n", rows, {})
    assert error.value.number == 39004 and "Msg 39004" in str(error.value) and "boom" in str(error.value)
    with pytest.raises(ExternalScriptError) as error:
        script = "import pandas\nOutputDataSet = pandas.DataFrame({'s': ['toolong']})\n"
        run_external_script(script, rows, {}, result_sets=[("s", "nvarchar(3)")])
    assert error.value.number == 2628
    with pytest.raises(ExternalScriptError) as error:
        run_external_script("OutputDataSet = [1]\n", rows, {}, result_sets=[("y", "float")])
    assert error.value.number == 39004


def test_probe_python_script_runs():
    out = run_external_script(
        tsql.PROBE_PYTHON_SCRIPT,
        None,
        {"libraries": "numpy, no-such-lib-xyz"},
        result_sets=[("name", "nvarchar(256)"), ("version", "nvarchar(128)")],
    )
    assert out["name"].tolist() == ["python", "numpy", "no-such-lib-xyz"]
    assert out["version"][1] == np.__version__ and out["version"][2] is None


# --- T-SQL ----------------------------------------------------------------------------------


def rendered(tmp_path):
    manifest = make_manifest()
    target = manifest.target
    script = generate_script("onnx", target.inputs, target.outputs, model_file_name="model.onnx")
    paths = tsql.render_tsql(target, manifest, script, make_lock(), tmp_path)
    return manifest, paths


def all_statements() -> dict[str, str]:
    target = make_target()
    return {
        "probe_configuration": tsql.probe_configuration(),
        "probe_permission": tsql.probe_permission(),
        "probe_python": tsql.probe_python(),
        **{s.name: s.sql for s in tsql.deployment_statements(target, make_manifest(), "pass\n")},
        "set_weight": sql_rows.set_weight(tsql.tables(target)),
        "set_salt": sql_rows.set_salt(tsql.tables(target)),
        "restore_slot": sql_rows.restore_slot(tsql.tables(target)),
    }


def test_render_writes_numbered_files_and_the_payload(tmp_path):
    _, paths = rendered(tmp_path)
    names = [p.name for p in paths]
    assert names == [
        "01-create_model_table.sql",
        "02-create_traffic_table.sql",
        "03-create_request_log_table.sql",
        "04-insert_model.sql",
        "05-create_procedure.sql",
        "06-create_row_procedure.sql",
        "07-assign_slot.sql",
        "08-refresh_active.sql",
        "model.bin",
        "parameters.json",
    ]
    assert (tmp_path / "model.bin").read_bytes() == (IRIS / "model" / "model.onnx").read_bytes()


def test_golden_tsql(tmp_path):
    _, paths = rendered(tmp_path)
    files = {p.name: p.read_text() for p in paths if p.suffix == ".sql"}
    files.update(
        {
            f"probe_{k}.sql": v
            for k, v in {
                "configuration": tsql.probe_configuration(),
                "permission": tsql.probe_permission(),
                "python": tsql.probe_python(),
            }.items()
        }
    )
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (GOLDEN / name).write_text(text)
    missing = sorted(set(files) - {p.name for p in GOLDEN.glob("*.sql")})
    assert not missing, f"no golden file for {missing}; run with UPDATE_GOLDEN=1"
    stale = sorted({p.name for p in GOLDEN.glob("*.sql")} - set(files))
    assert not stale, f"golden files no statement writes any more: {stale}"
    for name, text in files.items():
        assert text == (GOLDEN / name).read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1)"


def test_manifest_values_are_parameters_not_text(tmp_path):
    import json

    manifest, paths = rendered(tmp_path)
    for path in paths:
        if path.suffix == ".sql":
            text = path.read_text()
            assert PLANTED_MODEL_NAME not in text, path.name
            assert "sql.example.com" not in text and "deployer" not in text
    parameters = json.loads((tmp_path / "parameters.json").read_text())
    # the rows' key is the procedure's name; the model's name is a parameter of the insert only
    assert parameters["04-insert_model.sql"][:2] == [
        {"name": "endpoint", "value": manifest.target.procedure_name(manifest.name)},
        {"name": "name", "value": PLANTED_MODEL_NAME},
    ]
    assert parameters["07-assign_slot.sql"] == [
        {"name": "endpoint", "value": manifest.target.procedure_name(manifest.name)},
        {"name": "slot", "value": "blue"},
        {"name": "version", "value": "3"},
    ]
    assert [p["name"] for p in parameters["04-insert_model.sql"]] == list(tsql.INSERT_PARAMETERS)
    assert tsql.insert_model(manifest.target).count("?") == 7


def test_script_literal_doubles_quotes():
    literal = tsql.script_literal("print('it''s')\n")
    assert literal == "N'print(''it''''s'')\n'"
    procedure = tsql.create_or_alter_procedure(
        make_target(), make_manifest(), "x = 'a'; y = \"'); DROP --\"\n"
    )
    assert "x = ''a''; y = \"''); DROP --\"" in procedure


# What sqlglot's T-SQL dialect parses, statement by statement. It does not know EXEC ...
# WITH RESULT SETS, so the two procedures are refused there; their other parts are parsed on
# their own below. (It also reads THROW as an alias, so a parse proves the syntax around it,
# and that every table is where it should be, not THROW itself.)
SQLGLOT_PARSES = {
    "probe_configuration": True,
    "probe_permission": True,
    "probe_python": True,
    "create_model_table": True,
    "create_traffic_table": True,
    "create_request_log_table": True,
    "insert_model": True,
    "create_procedure": False,
    "create_row_procedure": False,
    "assign_slot": True,
    "refresh_active": True,
    "set_weight": True,
    "set_salt": True,
    "restore_slot": True,
}


def _parsed_tables(text):
    import sqlglot
    from sqlglot import exp

    statements = [s for s in sqlglot.parse(text, read="tsql", error_level=sqlglot.ErrorLevel.RAISE) if s]
    assert statements
    assert not any(isinstance(node, exp.Command) for s in statements for node in s.walk())
    return {f"{t.db}.{t.name}" for s in statements for t in s.find_all(exp.Table)}


def test_every_statement_is_listed_for_sqlglot():
    assert set(SQLGLOT_PARSES) == set(all_statements())


@pytest.mark.parametrize("name", sorted(SQLGLOT_PARSES))
def test_sqlglot_parses_what_it_supports(name):
    sqlglot = pytest.importorskip("sqlglot")
    import re

    text = all_statements()[name].replace("?", "NULL")
    if not SQLGLOT_PARSES[name]:
        with pytest.raises(sqlglot.errors.ParseError, match="WITH"):
            sqlglot.parse(text, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
        return
    tables = _parsed_tables(text)
    named = {
        ".".join(part.strip("[]") for part in t.split("."))
        for t in re.findall(r"\[\w+\]\.\[\w+\]", re.sub(r"N'[^']*'", "", text))
    }
    assert named <= tables, f"{name}: sqlglot lost {named - tables}"


def test_sqlglot_parses_the_procedures_around_the_script_call():
    pytest.importorskip("sqlglot")
    target = make_target()
    assert {"dbo.tdsp_traffic", "dbo.tdsp_models"} <= _parsed_tables(tsql._route(target, "iris"))
    assert "dbo.tdsp_requests" in _parsed_tables(tsql._log_requests(target))


def test_sqlglot_tokenizes_everything():
    # Every statement at least tokenizes: quotes balance, the script literal ends where it should.
    pytest.importorskip("sqlglot")
    from sqlglot.dialects.tsql import TSQL

    for name, text in all_statements().items():
        tokens = TSQL().tokenize(text)
        assert tokens, name
