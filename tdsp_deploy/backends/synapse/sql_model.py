"""The ONNX payload a push stores in the model table, proven before anything is deployed.

- ``model.flavor: onnx``: the file is taken as it is;
- ``model.flavor: sklearn``: the pickled (or joblib) model is converted with skl2onnx to one
  input and one output per column (sql_onnx_convert), then checked for parity with the
  original on the smoke test's sample rows (onnx_parity);
- mlflow: refused (PREDICT runs ONNX only).

Either way the graph must pass PREDICT's rules (sql_predict_rules). Nothing here touches the
pool: errors surface before the first statement is sent.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tdsp_deploy.backends.synapse.onnx_parity import ParityReport, check_parity
from tdsp_deploy.backends.synapse.sql_predict_rules import _Column, check_columns, check_model
from tdsp_deploy.errors import PluginError, UsageError


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    payload: bytes  # the ONNX bytes, exactly as inserted
    source: str  # "onnx" (taken as is) or "sklearn" (converted here)
    file_name: str  # the model file in the package
    parity: ParityReport | None  # None for an ONNX file (there is no other model to compare with)


def prepare_model(
    model_path: Path,
    flavor: str | None,
    inputs: Sequence[_Column],
    outputs: Sequence[_Column],
    *,
    sample_rows: Sequence[Sequence[Any]] | None,
    tolerance: float,
) -> PreparedModel:
    """The payload for ``model_path`` (the model file, or a folder holding one), checked."""
    for module in ("onnx", "onnxruntime", *(("skl2onnx",) if flavor == "sklearn" else ())):
        _require(module)
    import onnx

    from tdsp_deploy.backends.sql.payload import model_payload

    check_columns(inputs, outputs)
    if flavor not in ("sklearn", "onnx"):
        raise UsageError(
            f"PREDICT in a dedicated SQL pool runs ONNX models; model.flavor is {flavor or 'not set'}",
            hint="set model.flavor: onnx (an .onnx file) or sklearn (a .pkl/.joblib file, converted to ONNX "
            "at package time); an MLflow model can be exported with mlflow.onnx",
        )
    try:
        raw, file_name = model_payload(model_path, flavor)
    except ValueError as exc:
        raise UsageError(str(exc), hint="point model.path at the model file") from None
    if flavor == "onnx":
        try:
            graph = onnx.load_from_string(raw)
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
            raise UsageError(
                f"{file_name} is not an ONNX model: {exc}", hint="export the model to ONNX"
            ) from None
        check_model(graph, inputs, outputs, flavor=flavor)
        return PreparedModel(raw, "onnx", file_name, None)
    from tdsp_deploy.backends.synapse.sql_onnx_convert import sklearn_to_onnx

    estimator = load_sklearn(raw, file_name)
    if not sample_rows:
        raise UsageError(
            "converting a scikit-learn model to ONNX needs sample rows to prove the conversion",
            hint="give smoke_test.request with a few rows of target.inputs",
        )
    payload = sklearn_to_onnx(estimator, inputs, outputs)
    check_model(onnx.load_from_string(payload), inputs, outputs, flavor=flavor)
    report = check_parity(estimator, payload, inputs, outputs, sample_rows, tolerance=tolerance)
    return PreparedModel(payload, "sklearn", file_name, report)


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise PluginError(
            f"the synapse target's sql mode needs {module}, which is not installed",
            hint="pip install 'tdsp-deploy[synapse]'",
        )


def load_sklearn(raw: bytes, file_name: str) -> Any:
    """The estimator from its pickle (or joblib) bytes: the user's own model file."""
    try:
        if file_name.endswith(".joblib"):
            import joblib

            return joblib.load(io.BytesIO(raw))
        import pickle

        return pickle.loads(raw)
    except Exception as exc:  # unpickling raises whatever the pickled classes raise
        raise UsageError(
            f"could not load the scikit-learn model {file_name}: {type(exc).__name__}: {exc}",
            hint="load it with the scikit-learn version it was saved with, or export it to ONNX yourself",
        ) from None
