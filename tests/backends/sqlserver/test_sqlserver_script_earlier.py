"""The scoring script answers exactly as the script it replaced.

tests/data/golden/sqlserver-script-earlier/ keeps the scikit-learn script as generated before its
costs were cut (issue 21, item 6: the labels matched by character codes, the result frame and
model_version built in one step). Both run with the ``sp_execute_external_script`` contract
(tests/fakes/sqlserver_harness.py) on the same rows, models and routes, and must leave the same
``OutputDataSet`` (values, dtypes, index, the Python type of every label), the same request log
(but for the measured latency) and the same error. The routes take both of the script's paths:
one route with rows, and the general one (a split, no rows, no route at all).
"""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pandas as pd
import pytest

from tdsp_deploy.backends.sqlserver.script import generate_script
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tests import paths
from tests.fakes.sqlserver_harness import run_external_script_with_outputs

EARLIER = paths.DATA / "golden" / "sqlserver-script-earlier"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# the rows' index given back reversed: model_version must follow the user's index as before
USER_CODE = (
    "def predict(model, df):\n"
    "    labels = [str(s).upper() for s in model.predict(df)]\n"
    "    return pandas.DataFrame({'label': labels}, index=df.index[::-1])\n"
)


def earlier_script(script: str, user_code: str | None = None) -> str:
    """The earlier script for the same target: its INPUTS, OUTPUTS and AB_KEY lines are taken
    from ``script`` (generated for the same target), and the user's code put in its place."""
    text = (EARLIER / ("sklearn-user-predict.txt" if user_code else "sklearn.txt")).read_text()
    for name in ("INPUTS", "OUTPUTS", "AB_KEY"):
        now = re.search(rf"^{name} = .*$", script, flags=re.M).group(0)
        before = re.search(rf"^{name} = .*$", text, flags=re.M).group(0)
        text = text.replace(before, now, 1)
    if user_code:
        text = text.replace("# USER CODE\n", user_code.strip("\n") + "\n")
    return text


def rows(n: int, seed: int = 5) -> pd.DataFrame:
    values = np.random.default_rng(seed).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(n, 4)).round(2)
    return pd.DataFrame(values, columns=FEATURES)


def routed(*routes) -> dict:
    """@params for routes given as (slot, version, weight, payload, salt)."""
    bundle = b"".join(len(r[3]).to_bytes(8, "big") + r[3] for r in routes)
    docs = [{"slot": r[0], "version": r[1], "weight": r[2], "salt": r[4]} for r in routes]
    return {"@model_bundle": bundle, "@routes": json.dumps(docs)}


class FixedLabels:
    """A classifier whose predict() answers the given labels (cycled), as the given array: a
    label not among classes_, labels narrower than classes_, or a strided array."""

    def __init__(self, classes, labels, step=1):
        self.classes_, self.labels, self.step = np.array(classes), np.array(labels), step

    def predict(self, features):
        picked = np.resize(self.labels, len(features) * self.step)
        return picked[:: self.step]

    def predict_proba(self, features):
        return np.full((len(features), len(self.classes_)), 1 / len(self.classes_))


def _models() -> dict:
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    train = rows(600, seed=3)
    bucket = np.digitize(train["petal_length"], np.linspace(1, 7, 19))
    names = np.array(["setosa", "versicolor", "virginica"])[bucket % 3]
    unicode = np.array(["größe", "日本語", "\U0001f600 smile", "ab"])[bucket % 4]
    return {
        "iris": LogisticRegression(max_iter=1000, random_state=0).fit(train, names),
        "integers": DecisionTreeClassifier(random_state=0).fit(train, bucket),
        "twenty": DecisionTreeClassifier(random_state=0).fit(
            train, np.char.add("class_", bucket.astype(str))
        ),
        "prefixes": DecisionTreeClassifier(random_state=0, max_depth=3).fit(
            train, np.array(["a", "ab", "abc"])[bucket % 3]
        ),
        "unicode": DecisionTreeClassifier(random_state=0).fit(train, unicode),
        "no_single_place": DecisionTreeClassifier(random_state=0).fit(
            train, np.array(["ab", "ba", "aa"])[bucket % 3]
        ),
        "stray": FixedLabels(["no", "yes"], ["no", "maybe", "yes"]),
        "stray_past_table": FixedLabels(["a", "b"], ["a", "\u0100"]),
        "narrower": FixedLabels(["a", "bb", "cccccc"], ["a", "bb"]),
        "strided": FixedLabels(["no", "yes"], ["no", "yes", "yes"], step=3),
        "regression": LinearRegression().fit(train, train["petal_width"] * 2),
    }


MODELS = _models()


def _target(model, ab_key=None) -> SqlServerTarget:
    outputs = [{"name": "label", "type": "nvarchar(16)"}]
    if hasattr(model, "predict_proba"):
        outputs += [{"name": f"p{i}", "type": "float"} for i in range(len(model.classes_))]
    return SqlServerTarget.model_validate(
        {
            "kind": "sqlserver",
            "server": "sql.example.com",
            "database": "scoring",
            "auth": {"method": "sql", "username": "deployer", "password_env": "SQL_PASSWORD"},
            "inputs": [{"name": n, "type": "float"} for n in FEATURES],
            "outputs": outputs,
            **({"ab_key": ab_key} if ab_key else {}),
        }
    )


def _answers(script: str, earlier: str, data: pd.DataFrame, params: dict) -> None:
    """Run both scripts and assert they left the same things."""
    (now, now_out), (before, before_out) = [
        run_external_script_with_outputs(text, data, params, output_params=["request_log", "script_error"])
        for text in (script, earlier)
    ]
    pd.testing.assert_frame_equal(
        now, before, check_exact=True, check_index_type=True, check_column_type=True
    )
    for column in now.columns:
        if now[column].dtype == object:  # the same Python types row by row, not only equal values
            assert [type(v) for v in now[column]] == [type(v) for v in before[column]], column
    # a failure's traceback names other lines of the script; its last line, the error, is the same
    errors = [
        out["script_error"] and out["script_error"].strip().splitlines()[-1] for out in (now_out, before_out)
    ]
    assert errors[0] == errors[1]
    logs = [json.loads(out["request_log"]) for out in (now_out, before_out)]
    for log in logs:
        for entry in log:
            assert entry.pop("latency_ms") >= 0
    assert logs[0] == logs[1]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_script_answers_as_the_earlier_one_for_every_route(kind):
    model, other = MODELS[kind], MODELS["iris"]
    target = _target(model)
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    earlier = earlier_script(script)
    assert earlier != script
    payload = pickle.dumps(model)
    if hasattr(model, "predict_proba") and len(model.classes_) != len(other.classes_):
        other = model  # the other version must give as many columns
    for data, params in (
        (rows(5_000), routed(("blue", "1", 100, payload, ""))),
        (rows(5_000), routed(("blue", "1", 60, payload, "s"), ("green", "2", 40, pickle.dumps(other), "s"))),
        (rows(3), routed(("blue", "1", 99, payload, "t"), ("green", "2", 1, pickle.dumps(other), "t"))),
        (
            rows(400),
            routed(("blue", "1", 50, payload, "u"), ("green", "2", 50, pickle.dumps({"no": 1}), "u")),
        ),
        (rows(0), routed(("blue", "1", 100, payload, ""))),
        (rows(20), routed()),  # no route at all: the same error
    ):
        _answers(script, earlier, data, params)


def test_the_labels_point_at_the_classes_strings():
    model = MODELS["unicode"]
    target = _target(model)
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    out, _ = run_external_script_with_outputs(
        script, rows(2_000), routed(("blue", "1", 100, pickle.dumps(model), ""))
    )
    assert out["label"].dtype == object and set(out["label"]) == set(model.classes_)
    assert len({id(v) for v in out["label"]}) == len(model.classes_)
    # a label that is not among classes_ leaves every label as the model gave it
    stray = MODELS["stray"]
    target = _target(stray)
    script = generate_script("sklearn", target.inputs, target.outputs, model_file_name="model.pkl")
    out, _ = run_external_script_with_outputs(
        script, rows(30), routed(("blue", "1", 100, pickle.dumps(stray), ""))
    )
    assert out["label"].tolist() == stray.predict(rows(30)).tolist()


def test_an_ab_key_and_the_users_predict_answer_as_before():
    model = MODELS["iris"]
    target = _target(model, ab_key="sepal_length")
    script = generate_script(
        "sklearn", target.inputs, target.outputs, model_file_name="model.pkl", ab_key="sepal_length"
    )
    params = routed(
        ("blue", "1", 50, pickle.dumps(model), "k"), ("green", "2", 50, pickle.dumps(MODELS["stray"]), "k")
    )
    _answers(script, earlier_script(script), rows(2_000), params)
    # one route (the path a call takes without a split): every row's key in the request log
    _answers(script, earlier_script(script), rows(2_000), routed(("blue", "1", 100, pickle.dumps(model), "")))

    target = _target(MODELS["stray"])
    target = SqlServerTarget.model_validate(
        {**target.model_dump(), "outputs": [{"name": "label", "type": "nvarchar(16)"}]}
    )
    script = generate_script(
        "sklearn", target.inputs, target.outputs, model_file_name="m.pkl", user_code=USER_CODE
    )
    earlier = earlier_script(script, USER_CODE)
    assert "def predict(model, df)" in earlier and earlier != script
    broken = pickle.dumps({"not": "a model"})
    for data, params in (
        (rows(300), routed(("blue", "1", 100, pickle.dumps(model), ""))),
        (rows(300), routed(("blue", "1", 70, pickle.dumps(model), "s"), ("green", "2", 30, broken, "s"))),
        (rows(0), routed(("blue", "1", 100, pickle.dumps(model), ""))),
        (rows(30), routed(("blue", "1", 100, broken, ""))),  # the one route fails: a script error
    ):
        _answers(script, earlier, data, params)
