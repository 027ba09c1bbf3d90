"""The synapse target's sql mode, the T-SQL: rendered files against golden files
(``UPDATE_GOLDEN=1 pytest ...`` rewrites them), parsed by sqlglot's T-SQL dialect where it
can, and no manifest value in any statement's text."""

from __future__ import annotations

import json
import os
import pickle
import re

import onnx
import pytest

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.sql import rows as sql_rows
from tdsp_deploy.backends.sql import schema
from tdsp_deploy.backends.sql.requests import scoring_call
from tdsp_deploy.backends.synapse import predict_tsql, sql_calls
from tdsp_deploy.backends.synapse.sql_model import prepare_model
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.manifest.model import manifest_class
from tdsp_deploy.packaging.lock import LockedModel, PackageLock
from tests import paths

GOLDEN = paths.DATA / "golden" / "synapse"
IRIS = paths.EXAMPLES / "iris"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
PLANTED_MODEL_NAME = "Zq9-planted.model_name-7x"  # may travel only as a parameter


def make_manifest():
    cls = manifest_class((LocalTarget, SynapseTarget))
    raw = {
        "name": "iris",
        "model": {"path": "model/", "name": PLANTED_MODEL_NAME, "version": "3", "flavor": "sklearn"},
        "scoring": {"code": "src/", "script": "score.py"},
        "target": {
            "kind": "synapse",
            "workspace": "contoso-ml",
            "mode": "sql",
            "server": "contoso-ml.sql.azuresynapse.net",
            "database": "scoring",
            "auth": {"method": "entra"},
            "inputs": [{"name": n, "type": "float"} for n in FEATURES],
            "outputs": [{"name": "species", "type": "nvarchar(16)"}]
            + [{"name": f"p_{c}", "type": "float"} for c in CLASSES],
        },
    }
    return cls.model_validate(raw, context={"base_dir": IRIS})


def make_lock() -> PackageLock:
    model = LockedModel(name=PLANTED_MODEL_NAME, version="3", path="model/model.pkl", sha256="0" * 64)
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


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> bytes:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    model = LogisticRegression(max_iter=1000, random_state=0).fit(iris.data, iris.target_names[iris.target])
    path = tmp_path_factory.mktemp("model") / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    target = make_manifest().target
    return prepare_model(
        path, "sklearn", target.inputs, target.outputs, sample_rows=iris.data[:5].tolist(), tolerance=1e-6
    ).payload


@pytest.fixture
def rendered(tmp_path, payload):
    manifest = make_manifest()
    return predict_tsql.render_tsql(
        manifest.target, manifest, make_lock(), payload, tmp_path, source="sklearn"
    )


def statements() -> dict[str, str]:
    manifest = make_manifest()
    target = manifest.target
    found = {s.name: s.sql for s in predict_tsql.deployment_statements(target, "iris", target.outputs)}
    found["scoring_batch"] = scoring_call(
        predict_tsql.qualified_procedure(target, "iris"),
        sql_calls.INPUT_ARGUMENT,
        sql_calls.input_rows(target, [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 5.0, 1.5]]),
        None,
        None,
    )[0]
    found["drop_procedure"] = predict_tsql.drop_procedure(target, "iris")
    found["drop_table_if_empty"] = predict_tsql.drop_table_if_empty(target)
    found["delete_version"] = sql_rows.delete_version(predict_tsql.tables(target))
    found["list_versions"] = sql_rows.list_versions(predict_tsql.tables(target))
    found["list_slots"] = sql_rows.list_slots(predict_tsql.tables(target))
    found["delete_slot"] = sql_rows.delete_slot(predict_tsql.tables(target))
    found["read_requests"] = schema.read_requests(predict_tsql.tables(target), 5000)
    found["failed_requests"] = predict_tsql.failed_requests()
    found["set_weight"] = sql_rows.set_weight(predict_tsql.tables(target))
    found["set_salt"] = sql_rows.set_salt(predict_tsql.tables(target))
    found["restore_slot"] = sql_rows.restore_slot(predict_tsql.tables(target))
    return found


def test_render_writes_the_statements_in_execution_order_and_the_payload_as_inserted(
    rendered, payload, tmp_path
):
    assert [p.name for p in rendered] == [
        "01-create_model_table.sql",
        "02-create_traffic_table.sql",
        "03-create_request_log_table.sql",
        "04-create_procedure_stub.sql",
        "05-insert_model.sql",
        "06-assign_slot.sql",
        "07-refresh_active.sql",
        "08-alter_procedure.sql",
        "model.onnx",
        "parameters.json",
        "score-example.sql",
    ]
    assert (tmp_path / "model.onnx").read_bytes() == payload
    assert [i.name for i in onnx.load(tmp_path / "model.onnx").graph.input] == FEATURES
    parameters = json.loads((tmp_path / "parameters.json").read_text())
    assert parameters["one_transaction"] == [
        "05-insert_model.sql",
        "06-assign_slot.sql",
        "07-refresh_active.sql",
    ]
    insert = parameters["statements"]["05-insert_model.sql"]
    assert [p["name"] for p in insert] == list(predict_tsql.INSERT_PARAMETERS)
    assert {p["name"]: p["value"] for p in insert}["name"] == PLANTED_MODEL_NAME
    assert {p["name"]: p["value"] for p in insert}["payload"] == "model.onnx"


def test_no_manifest_value_is_written_into_any_statement(rendered):
    for path in rendered:
        if path.suffix == ".sql":
            text = path.read_text()
            assert PLANTED_MODEL_NAME not in text and "contoso" not in text, path.name
    assert predict_tsql.insert_model(make_manifest().target).count("?") == len(predict_tsql.INSERT_PARAMETERS)


def test_golden_tsql(rendered):
    files = {p.name: p.read_text() for p in rendered if p.suffix == ".sql"}
    files["scoring_batch.sql"] = statements()["scoring_batch"]
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (GOLDEN / name).write_text(text)
    missing = sorted(set(files) - {p.name for p in GOLDEN.glob("*.sql")})
    assert not missing, f"no golden file for {missing}; run with UPDATE_GOLDEN=1"
    for name, text in files.items():
        assert text == (GOLDEN / name).read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1)"


def test_the_procedure_quotes_the_table_name_it_is_given():
    text = statements()["alter_procedure"]
    assert "QUOTENAME(PARSENAME(@input_table, 1))" in text and "EXEC sp_executesql @query;" in text
    assert "' + @source + N'" in text and "+ @input_table" not in text  # never the raw name


# sqlglot's T-SQL dialect parses these. It reads the procedure (dynamic SQL, THROW), the stub's
# EXEC (N'...') and the DECLARE ... IF ... THROW batches as opaque commands: tokenized below.
PARSED_BY_SQLGLOT = [
    "drop_procedure",
    "delete_version",
    "list_versions",
    "list_slots",
    "delete_slot",
    "read_requests",
    "failed_requests",
]


@pytest.mark.parametrize("name", PARSED_BY_SQLGLOT)
def test_sqlglot_parses(name):
    sqlglot = pytest.importorskip("sqlglot")
    from sqlglot import exp

    text = statements()[name].replace("?", "NULL")
    parsed = [s for s in sqlglot.parse(text, read="tsql", error_level=sqlglot.ErrorLevel.RAISE) if s]
    assert parsed
    assert not any(isinstance(s, exp.Command) for s in parsed), [type(s) for s in parsed]


def test_sqlglot_parses_a_two_slot_query_as_the_procedure_builds_it():
    """The dynamic query of a 70/30 split: one CTE of rows per slot (PREDICT takes a CTE alias,
    not a subquery), one PREDICT per slot, UNION ALL, the label."""
    sqlglot = pytest.importorskip("sqlglot")
    target = make_manifest().target
    ctes = [predict_tsql.route_rows_query(target).format(k=k, source="[dbo].[new_flowers]") for k in (1, 2)]
    selects = [predict_tsql.route_predict_query(target, "iris", target.outputs).format(k=k) for k in (1, 2)]
    query = "WITH " + ",\n".join(ctes) + "\n" + "\nUNION ALL\n".join(selects)
    assert "HASHBYTES('SHA2_256', r.[salt] + N'|' + " in query
    # PREDICT(...) WITH (...) is not in sqlglot's grammar: a table function stands in for it.
    plain = re.sub(
        r"PREDICT\(MODEL = \((.*?)\),\s*DATA = (\[tdsp_rows_\d\]) AS d, RUNTIME = ONNX\)\s*WITH \(.*?\) AS p",
        r"f(\2) AS p",
        query,
        flags=re.S,
    ).replace("d.*", "p.*")
    parsed = sqlglot.parse_one(plain.replace("#tdsp_routes", "tdsp_routes"), read="tsql")
    assert parsed.find(sqlglot.exp.Union) is not None and len(list(parsed.find_all(sqlglot.exp.CTE))) == 2


def test_sqlglot_parses_the_request_log_insert():
    sqlglot = pytest.importorskip("sqlglot")
    target = make_manifest().target.model_copy(update={"ab_key": "sepal_length"})
    query = predict_tsql.request_log_query(target, "iris").format(source="[dbo].[new_flowers]")
    parsed = sqlglot.parse_one(query.replace("#tdsp_routes", "tdsp_routes"), read="tsql")
    assert isinstance(parsed, sqlglot.exp.Insert) and parsed.find(sqlglot.exp.Window) is not None
    assert parsed.find(sqlglot.exp.Group) is not None  # a row per slot that answered
    assert "REPLACE(REPLACE(ISNULL(CONVERT(nvarchar(30), CAST(s.[sepal_length] AS float), 2), N'')" in query


def test_the_key_bucket_is_read_from_the_hash_as_the_local_router_reads_its_fraction():
    text = predict_tsql.bucket_expression(make_manifest().target)
    assert text.startswith("CAST(SUBSTRING(HASHBYTES('SHA2_256', r.[salt] + N'|' + ISNULL(CONVERT(")
    assert text.endswith(", 1, 4) AS bigint) * 100 / CAST(4294967296 AS bigint)")
    assert text.count("CAST(s.[") == 4 and text.count(", 2), N'')") == 4  # the floats: 16 digits


def test_sqlglot_tokenizes_everything():
    pytest.importorskip("sqlglot")
    from sqlglot.dialects.tsql import TSQL

    for name, text in statements().items():
        assert TSQL().tokenize(text), name
