"""MLflow models: read the MLmodel file, check requests against its signature, and generate the
entry script that serves it where no scoring script is given.

An MLflow model is a folder with an ``MLmodel`` file (YAML) that names its flavors and, when
it was logged with one, its signature: the input columns (or tensors) and outputs with their
types. Reading it needs only PyYAML, so ``validate`` stays fast; mlflow itself is imported only
by the generated script, in the deployment.

The generated script follows the Azure ML entry-script contract (init/run) and takes the
request format Azure ML's no-code MLflow deployments take, so one request works on the local
target and on Azure ML alike::

    {"input_data": {"columns": ["x1", "x2"], "index": [0], "data": [[1.0, 2.0]]}}   a DataFrame, split
    {"input_data": [[1.0, 2.0], ...]}                                             a tensor (or rows)
    {"input_data": {"a": [...], "b": [...]}}                                      named tensors
    optional: "params": {...}                                                     passed to predict()
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

MLMODEL = "MLmodel"
GENERATED_SCRIPT = "score.py"

#: MLflow column types -> SQL Server types, for targets that need typed columns
SQL_TYPES = {
    "double": "float",
    "float": "real",
    "long": "bigint",
    "integer": "int",
    "boolean": "bit",
    "string": "nvarchar(max)",
    "datetime": "datetime2",
}
_NUMERIC = frozenset({"double", "float", "long", "integer"})


class MLmodelError(ValueError):
    """The folder is not a usable MLflow model; the message says why."""


@dataclasses.dataclass(frozen=True)
class Column:
    name: str | None
    type: str  # MLflow's: double, long, string, ... ("tensor" for tensor specs)
    required: bool = True


@dataclasses.dataclass(frozen=True)
class MLflowModel:
    path: Path
    flavors: tuple[str, ...]
    inputs: tuple[Column, ...] | None  # None: the model has no signature
    outputs: tuple[Column, ...] | None
    tensor_inputs: bool

    @property
    def column_names(self) -> list[str] | None:
        if not self.inputs or self.tensor_inputs or any(c.name is None for c in self.inputs):
            return None
        return [c.name for c in self.inputs if c.name is not None]


def read_mlmodel(model_path: Path) -> MLflowModel:
    """The MLmodel of the folder ``model_path``; MLmodelError when it is not an MLflow model."""
    path = Path(model_path)
    file = path / MLMODEL
    if not path.is_dir() or not file.is_file():
        raise MLmodelError(f"an MLflow model is a folder with an {MLMODEL} file; {path} has none")
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MLmodelError(f"{file} cannot be read: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("flavors"), dict):
        raise MLmodelError(f"{file} names no flavors: it is not an MLmodel file")
    flavors = tuple(sorted(document["flavors"]))
    if "python_function" not in flavors:
        raise MLmodelError(
            f"{file} has no python_function flavor (it has {', '.join(flavors)}); only pyfunc models "
            "can be served without a script"
        )
    signature = document.get("signature") or {}
    inputs, tensor_inputs = _spec(signature.get("inputs"), file, "inputs")
    outputs, _ = _spec(signature.get("outputs"), file, "outputs")
    return MLflowModel(path, flavors, inputs, outputs, tensor_inputs)


def _spec(text: Any, file: Path, which: str) -> tuple[tuple[Column, ...] | None, bool]:
    if text is None:
        return None, False
    try:
        specs = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise MLmodelError(f"{file}: signature.{which} is not JSON") from None
    if not isinstance(specs, list):
        raise MLmodelError(f"{file}: signature.{which} is not a list of columns")
    columns = []
    tensor = False
    for spec in specs:
        if not isinstance(spec, dict):
            raise MLmodelError(f"{file}: signature.{which} holds {spec!r}, not a column")
        tensor = tensor or spec.get("type") == "tensor"
        columns.append(Column(spec.get("name"), str(spec.get("type")), bool(spec.get("required", True))))
    return tuple(columns), tensor


# -- the model's own environment ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelEnvironment:
    """What an MLflow model says it needs: a conda file or a pip requirements file, and the
    Python version it was saved with (None when it names none)."""

    conda_file: Path | None
    requirements: Path | None
    python: str | None


def model_environment(model_path: Path) -> ModelEnvironment | None:
    """The environment an MLflow model folder carries, as Azure ML's no-code deployments use
    it: the conda file the pyfunc flavor names (``env``, by default ``conda.yaml``), else its
    ``requirements.txt``; None when ``model_path`` is no MLflow model or carries neither."""
    path = Path(model_path)
    file = path / MLMODEL
    if not path.is_dir() or not file.is_file():
        return None
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    pyfunc = (document.get("flavors") or {}).get("python_function") if isinstance(document, dict) else None
    if not isinstance(pyfunc, dict):
        return None
    named = pyfunc.get("env")
    conda_name = named.get("conda") if isinstance(named, dict) else named
    conda = _inside(path, str(conda_name or "conda.yaml"))
    requirements = _inside(path, "requirements.txt")
    python = _python_env_version(path) or (
        str(pyfunc["python_version"]) if pyfunc.get("python_version") else None
    )
    if conda is not None:
        return ModelEnvironment(conda, None, python)
    if requirements is not None:
        return ModelEnvironment(None, requirements, python)
    return None


def _inside(folder: Path, name: str) -> Path | None:
    candidate = (folder / name).resolve()
    if not candidate.is_file() or not candidate.is_relative_to(folder.resolve()):
        return None  # the MLmodel may not send us outside the model's own folder
    return candidate


def _python_env_version(folder: Path) -> str | None:
    """``python:`` of the model's python_env.yaml (what MLflow's virtualenv manager uses)."""
    try:
        document = yaml.safe_load((folder / "python_env.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    version = document.get("python") if isinstance(document, dict) else None
    return str(version) if version else None


# -- the smoke-test request against the signature ---------------------------------------------------
def request_problems(model: MLflowModel, request: Any) -> list[str]:
    """What is wrong with ``request`` (parsed JSON) for this model, in Azure ML's format."""
    if not isinstance(request, dict) or "input_data" not in request:
        return ['an MLflow model takes requests like {"input_data": {"columns": [...], "data": [[...]]}}']
    data = request["input_data"]
    names = model.column_names
    if names is None:
        return []  # no column signature: the model itself is the judge
    if isinstance(data, dict) and "data" in data:
        columns = data.get("columns")
        rows = data["data"]
        if not isinstance(columns, list):
            return [f"input_data.columns is missing; the signature has columns {', '.join(names)}"]
        required = [c.name for c in model.inputs or () if c.required and c.name is not None]
        missing = [name for name in required if name not in columns]
        unknown = [name for name in columns if name not in names]
        problems = []
        if missing:
            problems.append(
                f"input_data.columns lacks {', '.join(missing)} (the model's signature needs them)"
            )
        if unknown:
            problems.append(f"input_data.columns has {', '.join(unknown)}, which the signature does not know")
        return problems + _row_problems(model, rows, [str(c) for c in columns])
    if isinstance(data, list):
        return _row_problems(model, data, names)
    return []


def _row_problems(model: MLflowModel, rows: Any, columns: list[str]) -> list[str]:
    if not isinstance(rows, list):
        return ["input_data.data must be a list of rows"]
    types = {c.name: c.type for c in model.inputs or ()}
    for number, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            return [f"row {number} must hold {len(columns)} values ({', '.join(columns)})"]
        for name, value in zip(columns, row, strict=True):
            kind = types.get(name)
            if kind in _NUMERIC and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return [f"row {number}: {name} must be a number ({kind}), got {json.dumps(value)}"]
    return []


def sql_columns(model: MLflowModel) -> tuple[list[dict[str, str]], list[dict[str, str]]] | None:
    """The signature as typed columns (inputs, outputs) for tabular targets; None without one."""
    names = model.column_names
    if names is None or model.inputs is None:
        return None
    inputs = [
        {"name": c.name, "type": SQL_TYPES.get(c.type, "nvarchar(max)")} for c in model.inputs if c.name
    ]
    outputs = []
    for index, column in enumerate(model.outputs or (Column(None, "double"),)):
        name = column.name or ("prediction" if index == 0 else f"prediction_{index}")
        kind = SQL_TYPES.get(column.type, "float") if column.type != "tensor" else "float"
        outputs.append({"name": name, "type": kind})
    return inputs, outputs


def fill_columns(raw: dict[str, Any], base_dir: Path) -> None:
    """A manifest (as parsed, before validation) of an MLflow model whose target takes typed
    columns but names none: take ``target.inputs`` / ``outputs`` from the model's signature.
    Anything unexpected leaves the manifest as it is; validation then says what is missing."""
    model, target = raw.get("model"), raw.get("target")
    if not isinstance(model, dict) or model.get("flavor") != "mlflow" or not isinstance(target, dict):
        return
    if target.get("kind") not in COLUMN_TARGETS or ("inputs" in target and "outputs" in target):
        return
    path = model.get("path")
    if not isinstance(path, str):
        return
    try:
        columns = sql_columns(read_mlmodel(base_dir / path))
    except (MLmodelError, OSError):
        return
    if columns is not None:
        target.setdefault("inputs", columns[0])
        target.setdefault("outputs", columns[1])


#: targets whose schema needs typed input and output columns
COLUMN_TARGETS = frozenset({"sqlserver", "synapse"})


# -- the generated entry script ---------------------------------------------------------------------
def entry_script(model_folder: str) -> bytes:
    """score.py serving the MLflow model found at ``$AZUREML_MODEL_DIR/<model_folder>``."""
    return _SCRIPT.replace("@MODEL_FOLDER@", json.dumps(model_folder)).encode("utf-8")


_SCRIPT = '''\
"""Generated by tdsp-deploy for an MLflow model (model.flavor: mlflow, no scoring script).

Serves the model through mlflow.pyfunc, with the request format of Azure ML's no-code MLflow
deployments: {"input_data": {"columns": [...], "index": [...], "data": [[...]]}} (a DataFrame,
split orientation), {"input_data": [[...]]} (a tensor, or rows of the signature's columns) or
{"input_data": {"name": [...]}} (named tensors); "params" is passed to predict().
"""

import json
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd

MODEL_FOLDER = @MODEL_FOLDER@
FLOATS = {"double": "float64", "float": "float32"}
model = None
columns = None  # the signature's input columns, when it has named ones
floats = {}  # column -> dtype: JSON writes 3.0 as 3, which the signature's check refuses for doubles


def init():
    global model, columns, floats
    model = mlflow.pyfunc.load_model(os.path.join(os.environ["AZUREML_MODEL_DIR"], MODEL_FOLDER))
    schema = model.metadata.get_input_schema()
    if schema is not None and not schema.is_tensor_spec() and schema.has_input_names():
        columns = schema.input_names()
        for spec in schema.inputs:
            kind = getattr(spec.type, "name", str(spec.type))
            if kind in FLOATS:
                floats[spec.name] = FLOATS[kind]


def run(raw_data):
    try:
        request = json.loads(raw_data)
    except ValueError:
        raise ValueError("the request is not JSON") from None
    if not isinstance(request, dict) or "input_data" not in request:
        raise ValueError('the request must look like {"input_data": {"columns": [...], "data": [[...]]}}')
    data = request["input_data"]
    if isinstance(data, dict) and "data" in data:
        inputs = pd.DataFrame(data["data"], columns=data.get("columns"), index=data.get("index"))
    elif isinstance(data, dict):
        inputs = {name: np.asarray(value) for name, value in data.items()}
    elif columns is not None:
        inputs = pd.DataFrame(data, columns=columns)
    else:
        inputs = np.asarray(data)
    if isinstance(inputs, pd.DataFrame):
        for name in inputs.columns:
            if name in floats and pd.api.types.is_numeric_dtype(inputs[name]):
                inputs[name] = inputs[name].astype(floats[name])
    params = request.get("params")
    predictions = model.predict(inputs, params=params) if params else model.predict(inputs)
    return _jsonable(predictions)


def _jsonable(predictions):
    if isinstance(predictions, pd.DataFrame):
        return json.loads(predictions.to_json(orient="records"))
    if isinstance(predictions, (pd.Series, np.ndarray)):
        return np.asarray(predictions).tolist()
    return predictions
'''
