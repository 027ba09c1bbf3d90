"""The synapse target's sql mode, the model side: PREDICT's column and type rules, the
scikit-learn to ONNX conversion (one input per column), its parity check, and PREDICT's column
mapping run with onnxruntime -- compared with the original model on the iris example."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from tdsp_deploy.backends.synapse.onnx_parity import OnnxParityMismatch, check_parity, original_columns
from tdsp_deploy.backends.synapse.sql_model import prepare_model
from tdsp_deploy.backends.synapse.sql_onnx_convert import ConversionFailed, sklearn_to_onnx
from tdsp_deploy.backends.synapse.sql_predict_local import LocalPredict
from tdsp_deploy.backends.synapse.sql_predict_rules import PredictRuleError, check_columns, check_model
from tdsp_deploy.errors import ExitCode, UsageError
from tests import paths
from tests.fakes.synapse_sql_fake import FakeSqlPool, Table

ROOT = paths.ROOT
IRIS = ROOT / "examples" / "iris"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]


def col(name: str, sql_type: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, type=sql_type)


INPUTS = [col(n, "float") for n in FEATURES]
OUTPUTS = [col("species", "nvarchar(16)")] + [col(f"p_{c}", "float") for c in CLASSES]


@pytest.fixture(scope="module")
def iris():
    data = load_iris()
    return pd.DataFrame(data.data, columns=FEATURES), data.target_names[data.target]


@pytest.fixture(scope="module")
def logistic(iris):
    features, labels = iris
    return LogisticRegression(max_iter=1000, random_state=0).fit(features, labels)


def problems_of(error: pytest.ExceptionInfo) -> str:
    return "\n".join(error.value.problems)


# -- the rules ------------------------------------------------------------------------------------
def test_the_iris_example_onnx_with_one_matrix_input_is_refused_with_how_to_fix_it():
    model = onnx.load(IRIS / "model" / "model.onnx")
    with pytest.raises(PredictRuleError) as error:
        check_model(model, INPUTS, OUTPUTS, flavor="onnx")
    assert error.value.exit_code == ExitCode.USAGE
    text = problems_of(error)
    assert "model input X (float [N, 4]) holds 4 columns in one tensor" in text
    assert "one input per column" in text
    for name in FEATURES:
        assert f"target.inputs: {name} is not an input of the model" in text
    assert "model output probabilities (float [N, 3]) is not one column per row" in text
    hint = error.value.hint
    assert "one input per column" in hint and "DoubleTensorType([None, 1])" in hint
    assert "model.flavor: sklearn" in hint  # the conversion offered for a scikit-learn model


@pytest.mark.parametrize(
    ("inputs", "outputs", "words"),
    [
        (
            [col("a", "smallint")],
            [col("y", "float")],
            "a is smallint; PREDICT takes only int, bigint, real, float",
        ),
        ([col("a", "float")], [col("y", "decimal(10,2)")], "declare it as float"),
        ([col("a", "datetime2")], [col("y", "float")], "a number or text made in a view"),
        ([col("a", "bit")], [col("y", "float")], "declare it as int"),
        ([col("a", "float")], [col("A", "float")], "A is also an input"),
    ],
)
def test_columns_outside_predicts_types_are_refused(inputs, outputs, words):
    with pytest.raises(PredictRuleError) as error:
        check_columns(inputs, outputs)
    assert words in problems_of(error)


def test_an_output_named_model_version_is_refused():
    with pytest.raises(PredictRuleError) as error:
        check_columns([col("a", "float")], [col("model_version", "nvarchar(64)")])
    assert "the column the procedure adds" in problems_of(error)


def graph(inputs, outputs, *, zipmap=False):
    """A tiny ONNX graph: each output is an Identity (or Cast) of the first input."""
    values_in = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    nodes, values_out = [], []
    for name, kind, shape in outputs:
        nodes.append(helper.make_node("Cast", [inputs[0][0]], [name], to=kind))
        values_out.append(helper.make_tensor_value_info(name, kind, shape))
    if zipmap:
        values_out.append(
            helper.make_value_info(
                "zip",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(
                        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
                    )
                ),
            )
        )
    return helper.make_model(helper.make_graph(nodes, "g", values_in, values_out))


F, D, I32, I64, S = (
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.STRING,
)


@pytest.mark.parametrize(
    ("inputs", "outputs", "columns_in", "columns_out", "words"),
    [
        (
            [("a", F, [None, 1])],
            [("y", D, [None])],
            [col("a", "float")],
            [col("y", "float")],
            "model input a (float [N, 1]) is fed from a float, which PREDICT passes as double; "
            "declare the column as real",
        ),
        (
            [("A", D, [None, 1])],
            [("y", D, [None])],
            [col("a", "float")],
            [col("y", "float")],
            "model input A is not a column of target.inputs (names must match exactly: a)",
        ),
        (
            [("a", D, [None, 1])],
            [("y", D, [None, 2])],
            [col("a", "float")],
            [col("y", "float")],
            "model output y (double [N, 2]) is not one column per row",
        ),
        (
            [("a", D, [None, 1])],
            [("y", D, [None]), ("z", D, [None])],
            [col("a", "float")],
            [col("y", "float")],
            "model output z is not listed in target.outputs",
        ),
        (
            [("a", D, [None, 1])],
            [("y", D, [None])],
            [col("a", "float")],
            [col("y", "float"), col("w", "float")],
            "target.outputs: w is not an output of the model",
        ),
        (
            [("a", D, [None, 1])],
            [("y", F, [None])],
            [col("a", "float")],
            [col("y", "float")],
            "model output y (float [N]) does not match target.outputs y float; declare it as real",
        ),
        (
            [("a", I64, [None, 1])],
            [("y", D, [None])],
            [col("a", "int")],
            [col("y", "float")],
            "declare the column as bigint",
        ),
        (
            [("a", S, [None, 1])],
            [("y", S, [None])],
            [col("a", "nvarchar(8)")],
            [col("y", "int")],
            "declare it as nvarchar(n)",
        ),
    ],
)
def test_each_mismatch_between_graph_and_columns_is_refused(inputs, outputs, columns_in, columns_out, words):
    with pytest.raises(PredictRuleError) as error:
        check_model(graph(inputs, outputs), columns_in, columns_out, flavor="onnx")
    assert words in problems_of(error)


def test_a_zipmap_output_is_refused_with_the_export_option_that_avoids_it():
    model = graph([("a", D, [None, 1])], [("y", D, [None])], zipmap=True)
    with pytest.raises(PredictRuleError) as error:
        check_model(model, [col("a", "float")], [col("y", "float")], flavor="onnx")
    assert "options={'zipmap': False}" in problems_of(error)


def test_a_graph_that_maps_one_column_each_passes():
    model = graph([("a", D, [None, 1]), ("b", I32, ["N"])], [("y", D, [None]), ("label", S, [None, 1])])
    check_model(
        model,
        [col("a", "float"), col("b", "int")],
        [col("y", "float"), col("label", "varchar(9)")],
        flavor="onnx",
    )


# -- conversion and parity ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["logistic", "tree", "pipeline"])
def test_sklearn_models_convert_to_one_input_and_output_per_column_and_agree(iris, kind):
    features, labels = iris
    model = {
        "logistic": LogisticRegression(max_iter=1000, random_state=0),
        "tree": DecisionTreeClassifier(max_depth=3, random_state=0),
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    }[kind].fit(features if kind != "pipeline" else features.to_numpy(), labels)
    payload = sklearn_to_onnx(model, INPUTS, OUTPUTS)
    assert payload == sklearn_to_onnx(model, INPUTS, OUTPUTS)  # same model, same bytes

    graph_ = onnx.load_from_string(payload)
    check_model(graph_, INPUTS, OUTPUTS, flavor="sklearn")
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph_.graph.input] == [(n, D) for n in FEATURES]
    assert [o.name for o in graph_.graph.output] == ["species", *(f"p_{c}" for c in CLASSES)]

    rows = features.to_numpy().tolist()
    report = check_parity(model, payload, INPUTS, OUTPUTS, rows, tolerance=1e-6)
    assert report.rows == 150 and report.largest_difference < 1e-6


def test_a_regressor_converts_to_its_declared_type(iris):
    features, _ = iris
    model = LinearRegression().fit(features, features["petal_width"] * 2 + 1)
    outputs = [col("score", "real")]
    payload = sklearn_to_onnx(model, INPUTS, outputs)
    out = onnx.load_from_string(payload).graph.output[0]
    assert out.type.tensor_type.elem_type == F
    check_parity(model, payload, INPUTS, outputs, features.to_numpy()[:20].tolist(), tolerance=1e-6)


def test_more_outputs_than_the_model_gives_is_refused(logistic):
    with pytest.raises(ConversionFailed) as error:
        sklearn_to_onnx(logistic, INPUTS, [*OUTPUTS, col("extra", "float")])
    assert (
        "gives 4 output column(s) (label, probabilities[0], probabilities[1], probabilities[2])"
        in error.value.message
    )
    assert "target.outputs lists 5" in error.value.message


def test_parity_fails_with_the_rows_that_differ(iris, logistic):
    features, labels = iris
    other = DecisionTreeClassifier(max_depth=1, random_state=0).fit(features, labels)
    payload = sklearn_to_onnx(other, INPUTS, OUTPUTS)  # not the model we compare with
    rows = features.to_numpy()[[0, 60, 120]].tolist()
    with pytest.raises(OnnxParityMismatch) as error:
        check_parity(logistic, payload, INPUTS, OUTPUTS, rows, tolerance=1e-6)
    assert error.value.exit_code == ExitCode.SMOKE_FAILED
    message = error.value.message
    assert "of 3 sample row(s) differently" in message
    assert "row 2 [6.9, 3.2, 5.7, 2.3]: species: model 'virginica', onnx 'versicolor'" in message
    assert (
        error.value.details["differences"][0]["inputs"] == rows[error.value.details["differences"][0]["row"]]
    )


def test_float32_differences_fail_at_tolerance_zero_and_pass_at_the_manifests(iris):
    features, labels = iris
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(features, labels)
    payload = sklearn_to_onnx(tree, INPUTS, OUTPUTS)  # trees convert in float32
    rows = features.to_numpy()[::10].tolist()
    with pytest.raises(OnnxParityMismatch):
        check_parity(tree, payload, INPUTS, OUTPUTS, rows, tolerance=0.0)
    check_parity(tree, payload, INPUTS, OUTPUTS, rows, tolerance=1e-6)


def test_labels_are_compared_exactly_even_with_a_large_tolerance(iris, logistic):
    features, labels = iris
    payload = sklearn_to_onnx(logistic, INPUTS, OUTPUTS[:1])
    flipped = LogisticRegression(max_iter=1000).fit(features, labels[::-1])
    rows = features.to_numpy()[:5].tolist()
    with pytest.raises(OnnxParityMismatch) as error:
        check_parity(flipped, payload, INPUTS, OUTPUTS[:1], rows, tolerance=10.0)
    assert "species: model" in error.value.message


# -- preparing the payload from a model file ---------------------------------------------------------
def test_prepare_takes_an_onnx_file_as_it_is_and_converts_a_pickle(tmp_path, iris, logistic):
    features, _ = iris
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(logistic))
    rows = features.to_numpy()[:3].tolist()
    prepared = prepare_model(pickled, "sklearn", INPUTS, OUTPUTS, sample_rows=rows, tolerance=1e-6)
    assert prepared.source == "sklearn" and prepared.parity is not None and prepared.parity.rows == 3

    onnx_file = tmp_path / "given.onnx"
    onnx_file.write_bytes(prepared.payload)
    again = prepare_model(onnx_file, "onnx", INPUTS, OUTPUTS, sample_rows=None, tolerance=1e-6)
    assert again.payload == prepared.payload and again.source == "onnx" and again.parity is None


def test_prepare_refuses_mlflow_a_missing_sample_and_an_unloadable_pickle(tmp_path, logistic):
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(logistic))
    with pytest.raises(UsageError, match="runs ONNX models; model.flavor is mlflow"):
        prepare_model(tmp_path, "mlflow", INPUTS, OUTPUTS, sample_rows=[[1, 2, 3, 4]], tolerance=1e-6)
    with pytest.raises(UsageError, match="needs sample rows"):
        prepare_model(pickled, "sklearn", INPUTS, OUTPUTS, sample_rows=None, tolerance=1e-6)
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="could not load the scikit-learn model broken.pkl"):
        prepare_model(broken, "sklearn", INPUTS, OUTPUTS, sample_rows=[[1, 2, 3, 4]], tolerance=1e-6)
    with pytest.raises(PredictRuleError):
        prepare_model(
            IRIS / "model" / "model.onnx", "onnx", INPUTS, OUTPUTS, sample_rows=None, tolerance=1e-6
        )


# -- PREDICT emulated: the fake pool's PREDICT and ours, against the original model -----------------
def test_predict_emulated_on_the_iris_example_answers_like_the_scikit_learn_model(iris):
    """The iris example's model (train.py's logistic regression), converted; PREDICT run by the
    fake pool (its own column mapping) and by LocalPredict must both equal the model's answers."""
    features, labels = iris
    x_train = features.to_numpy(dtype=np.float32)
    model = LogisticRegression(max_iter=1000, random_state=0).fit(x_train, labels)
    payload = sklearn_to_onnx(model, INPUTS, OUTPUTS)
    rows = features.to_numpy().tolist()

    table = Table([(n, "float") for n in FEATURES], [dict(zip(FEATURES, r, strict=True)) for r in rows])
    pooled = FakeSqlPool().predict(payload, table, [(c.name, c.type) for c in OUTPUTS])
    local = LocalPredict(payload, INPUTS, OUTPUTS).score(rows)

    assert [row[4:] for row in pooled] == local  # d.* first, then the WITH columns
    expected = original_columns(model, rows, INPUTS)
    assert [row[0] for row in local] == [str(v) for v in expected[0]]
    probabilities = np.array([row[1:] for row in local])
    assert np.abs(probabilities - np.column_stack(expected[1:])).max() < 1e-9


def test_the_fake_pools_predict_says_no_to_a_matrix_input_and_a_type_mismatch(iris, logistic):
    features, _ = iris
    table = Table(
        [(n, "float") for n in FEATURES], [dict(zip(FEATURES, features.to_numpy()[0], strict=True))]
    )
    from tests.fakes.sqlserver_fake import DatabaseError

    with pytest.raises(DatabaseError, match="each input must be one column"):
        FakeSqlPool().predict(
            (IRIS / "model" / "model.onnx").read_bytes(),
            Table([("X", "real")], [{"X": 1.0}]),
            [("label", "nvarchar(16)")],
        )
    real_inputs = [col(n, "real") for n in FEATURES]
    payload = sklearn_to_onnx(logistic, real_inputs, OUTPUTS)
    with pytest.raises(DatabaseError, match=r"\(float\) does not match the model input type tensor\(float\)"):
        FakeSqlPool().predict(payload, table, [(c.name, c.type) for c in OUTPUTS])
