"""The sqlserver target's generated artefacts: schema, scoring script, T-SQL.

The scoring script is run with the exact ``sp_execute_external_script`` contract
(tests/sqlserver_harness.py) and must answer like the model called directly. The T-SQL is
compared with golden files (``UPDATE_GOLDEN=1 pytest ...`` rewrites them) and parsed by sqlglot.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tdsp_deploy.backends.sqlserver import tsql
from tdsp_deploy.backends.sqlserver.script import generate_script, model_payload, row_prelude
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget, quote_identifier, sql_type
from tdsp_deploy.manifest.model import LocalTarget, manifest_class
from tdsp_deploy.packaging.lock import LockedModel, PackageLock
from tests.sqlserver_harness import ExternalScriptError, run_external_script

ROOT = Path(__file__).resolve().parent.parent
IRIS = ROOT / "examples" / "iris"
GOLDEN = Path(__file__).parent / "golden" / "sqlserver"
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
        package_id="1" * 64, name="iris", model=model, script="code/score.py", environment=None,
        files=(), tool={"name": "tdsp-deploy"}, python="3.11", libraries={},
    )


def iris_rows(n=100) -> pd.DataFrame:
    from sklearn.datasets import load_iris

    data = load_iris().data
    rows = np.random.default_rng(7).choice(len(data), size=n, replace=False)
    return pd.DataFrame(data[rows], columns=FEATURES)


def result_sets(target: SqlServerTarget):
    return [(c.name, c.type) for c in target.outputs] + [("model_version", "nvarchar(64)")]


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
    [("FLOAT", "float"), ("nvarchar( max )", "nvarchar(max)"), ("decimal(10, 2)", "decimal(10,2)"),
     ("varchar(8000)", "varchar(8000)"), ("numeric(5)", "decimal(5,0)"), ("datetime2", "datetime2")],
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
        load_manifest(tmp_path / "deploy.yaml", targets=(LocalTarget, SqlServerTarget), environ={"PW": "hunter2"})
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

    out = run_external_script(script, rows, {"@model_bytes": payload, "@model_version": "3"},
                              result_sets=result_sets(target))

    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {session.get_inputs()[0].name: rows.to_numpy(np.float32)})
    assert list(out.columns) == ["label", "p_setosa", "p_versicolor", "p_virginica", "model_version"]
    assert out["label"].tolist() == labels.tolist()
    np.testing.assert_array_equal(out[[f"p_{c}" for c in CLASSES]].to_numpy(), probabilities.astype(np.float64))
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

    out = run_external_script(script, rows, {"model_bytes": payload, "model_version": "7"},
                              result_sets=result_sets(target))

    assert out["label"].tolist() == sklearn_model.predict(rows).tolist()
    np.testing.assert_array_equal(out[[f"p_{c}" for c in CLASSES]].to_numpy(), sklearn_model.predict_proba(rows))
    assert set(out["model_version"]) == {"7"}


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
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="m.joblib",
                             user_code=user_code)
    rows = iris_rows(20)
    out = run_external_script(script, rows, {"model_bytes": buffer.getvalue(), "model_version": "1"},
                              result_sets=result_sets(target))
    assert out["label"].tolist() == [s.upper() for s in sklearn_model.predict(rows)]


def test_row_prelude_scores_one_row(sklearn_model):
    target = make_target()
    script = row_prelude(target.inputs) + generate_script(
        "sklearn", target.inputs, target.outputs, model_file_name="model.pkl"
    )
    row = iris_rows(1)
    params = {"model_bytes": pickle.dumps(sklearn_model), "model_version": "7", **row.iloc[0].to_dict()}
    out = run_external_script(script, None, params, result_sets=result_sets(target))
    assert out["label"].tolist() == sklearn_model.predict(row).tolist()


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
    out = run_external_script(tsql.PROBE_PYTHON_SCRIPT, None, {"libraries": "numpy, no-such-lib-xyz"},
                              result_sets=[("name", "nvarchar(256)"), ("version", "nvarchar(128)")])
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
        "activate_version": tsql.activate_version(target),
    }


def test_render_writes_numbered_files_and_the_payload(tmp_path):
    _, paths = rendered(tmp_path)
    names = [p.name for p in paths]
    assert names == [
        "01-create_model_table.sql", "02-insert_model.sql", "03-create_procedure.sql",
        "04-create_row_procedure.sql", "05-bind_model_name.sql", "06-activate_version.sql",
        "model.bin", "parameters.json",
    ]
    assert (tmp_path / "model.bin").read_bytes() == (IRIS / "model" / "model.onnx").read_bytes()


def test_golden_tsql(tmp_path):
    _, paths = rendered(tmp_path)
    files = {p.name: p.read_text() for p in paths if p.suffix == ".sql"}
    files.update({f"probe_{k}.sql": v for k, v in
                  {"configuration": tsql.probe_configuration(), "permission": tsql.probe_permission(),
                   "python": tsql.probe_python()}.items()})
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (GOLDEN / name).write_text(text)
    missing = sorted(set(files) - {p.name for p in GOLDEN.glob("*.sql")})
    assert not missing, f"no golden file for {missing}; run with UPDATE_GOLDEN=1"
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
    assert parameters["02-insert_model.sql"][0] == {"name": "name", "value": PLANTED_MODEL_NAME}
    assert parameters["05-bind_model_name.sql"] == [{"name": "name", "value": PLANTED_MODEL_NAME}]
    assert [p["name"] for p in parameters["02-insert_model.sql"]] == list(tsql.INSERT_PARAMETERS)
    assert tsql.insert_model(manifest.target).count("?") == 6


def test_script_literal_doubles_quotes():
    literal = tsql.script_literal("print('it''s')\n")
    assert literal == "N'print(''it''''s'')\n'"
    procedure = tsql.create_or_alter_procedure(make_target(), make_manifest(), "x = 'a'; y = \"'); DROP --\"\n")
    assert "x = ''a''; y = \"''); DROP --\"" in procedure


# sqlglot's T-SQL dialect parses these; it does not know CREATE PROCEDURE bodies with
# THROW / EXEC ... WITH RESULT SETS (it falls back to an opaque command), checked below.
PARSED_BY_SQLGLOT = ["probe_configuration", "probe_permission", "create_model_table", "activate_version"]


@pytest.mark.parametrize("name", PARSED_BY_SQLGLOT)
def test_sqlglot_parses(name):
    sqlglot = pytest.importorskip("sqlglot")
    from sqlglot import exp

    text = all_statements()[name].replace("?", "NULL")
    statements = [s for s in sqlglot.parse(text, read="tsql", error_level=sqlglot.ErrorLevel.RAISE) if s]
    assert statements
    assert not any(isinstance(s, exp.Command) for s in statements), [type(s) for s in statements]


def test_sqlglot_tokenizes_everything():
    # Every statement at least tokenizes: quotes balance, the script literal ends where it should.
    sqlglot = pytest.importorskip("sqlglot")
    from sqlglot.dialects.tsql import TSQL

    for name, text in all_statements().items():
        tokens = TSQL().tokenize(text)
        assert tokens, name
