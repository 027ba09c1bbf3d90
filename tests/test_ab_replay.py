"""`ab replay`'s comparison: predictions and labels compared as numbers (a classifier that
answers 1.0 for the class 1 is right), whole-numbered regression labels not taken for classes
when the model answers fractions, and the manifest's alpha reaching every test."""

from __future__ import annotations

import numpy as np
import pytest

from tdsp_deploy.replay import compare, is_classification, same_class


def test_float_predictions_equal_integer_labels() -> None:
    labels = [0, 1, 2, 1, 0, 2] * 20
    perfect = [float(y) for y in labels]
    result = compare(labels, perfect, perfect, 0.05)
    assert result["task"] == "classification"
    assert result["control"]["accuracy"] == 1.0 and result["treatment"]["accuracy"] == 1.0
    assert same_class(1.0, 1) and same_class("setosa", "setosa") and not same_class(2.0, 1)


def test_whole_numbered_regression_labels_are_not_classes() -> None:
    rng = np.random.default_rng(1)
    labels = [int(v) for v in rng.integers(0, 10, 200)]  # counts: whole numbers, 10 values
    control = [y + float(rng.normal(0, 1)) for y in labels]
    treatment = [y + float(rng.normal(0, 0.5)) for y in labels]
    assert not is_classification(labels, control + treatment)
    result = compare(labels, control, treatment, 0.05)
    assert result["task"] == "regression" and result["verdict"] == "treatment better"
    assert result["treatment"]["mae"] < result["control"]["mae"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_alpha_reaches_every_test(task: str) -> None:
    rng = np.random.default_rng(2)
    if task == "classification":
        labels = [int(v) for v in rng.integers(0, 2, 300)]
        control = [y if rng.random() < 0.8 else 1 - y for y in labels]
        treatment = [y if rng.random() < 0.85 else 1 - y for y in labels]
    else:
        labels = [float(v) for v in rng.normal(0, 1, 300)]
        control = [y + float(rng.normal(0, 1)) for y in labels]
        treatment = [y + float(rng.normal(0, 1)) for y in labels]
    loose, strict = compare(labels, control, treatment, 0.10), compare(labels, control, treatment, 0.01)
    assert loose["alpha"] == 0.10 and strict["alpha"] == 0.01
    for wide, narrow in zip(strict["tests"], loose["tests"], strict=True):
        assert wide["ci_high"] - wide["ci_low"] > narrow["ci_high"] - narrow["ci_low"]
