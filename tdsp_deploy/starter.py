"""`tdsp-deploy init`: a starter project for one target and model flavor, ready for `validate`.

Templates live in ``templates/starters/``: a commented manifest per target
(``<kind>/deploy.yaml``) and what each flavor adds (``flavors/<flavor>/``: score.py, a sample
request, a model when it can be shipped as a file). Models that depend on the installed
library's version (a scikit-learn pickle, an MLflow model folder) are trained here, on three
numbers, so they load with what is installed. Every starter holds the same linear model,
y = 0.1 + 0.5 x1 - 1.25 x2 + 2 x3, so the answers are the same whatever the flavor.

Nothing is written unless everything can be: files that exist stop the whole starter
(without ``--force``), and a missing library is reported before anything is created.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import shutil
import tempfile
from pathlib import Path

from tdsp_deploy.errors import UsageError

PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
ENDPOINT_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{1,30}[a-z0-9])$")
SCHEMA_FILE = "tdsp-deploy.schema.json"
AZUREML_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"

WEIGHTS = (0.5, -1.25, 2.0)
BIAS = 0.1
FEATURES = ("x1", "x2", "x3")
SAMPLE_ROWS = ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])

#: flavors each target's starter offers; the first is the default. "plain" needs no library.
FLAVORS = {
    "local": ("plain", "sklearn", "onnx", "mlflow"),
    "azureml": ("plain", "sklearn", "onnx", "mlflow"),
    "sqlserver": ("sklearn", "onnx", "mlflow"),
    "synapse": ("sklearn", "onnx", "mlflow"),
}
#: targets that score rows of typed columns rather than HTTP requests
TABULAR = frozenset({"sqlserver", "synapse"})
#: what a flavor's starter needs installed to be written (and to run)
NEEDS = {
    "sklearn": ("scikit-learn", "joblib"),
    "mlflow": ("mlflow-skinny", "scikit-learn", "pandas", "skops"),
}


def endpoint_name_for(directory: Path) -> str:
    """A valid endpoint name from a folder name: lower case, [a-z0-9-], letter first, 3-32 chars."""
    name = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:32].rstrip("-")
    return name if len(name) >= 3 else "my-model"


@dataclasses.dataclass(frozen=True)
class StarterChoice:
    target: str
    flavor: str

    @classmethod
    def of(cls, target: str, flavor: str | None, templates: Path) -> StarterChoice:
        kinds = sorted(p.name for p in (templates / "starters").iterdir() if (p / "deploy.yaml").is_file())
        if target not in kinds:
            raise UsageError(
                f"there is no starter for target '{target}'", hint=f"choose --target from: {', '.join(kinds)}"
            )
        offered = FLAVORS.get(target, ("plain",))
        chosen = flavor or offered[0]
        if chosen not in offered:
            raise UsageError(
                f"the {target} starter has no flavor '{chosen}'",
                hint=f"choose --flavor from: {', '.join(f for f in offered if f != 'plain')}"
                + (" (or none)" if "plain" in offered else ""),
            )
        return cls(target, chosen)


def write_starter(
    templates: Path,
    directory: Path,
    *,
    name: str | None,
    force: bool,
    target: str = "local",
    flavor: str | None = None,
    schema_text: str | None = None,
) -> tuple[list[Path], str]:
    """Write the starter into ``directory``; return the files written and the endpoint name.

    ``schema_text`` (the installed targets' JSON Schema) is written beside the manifest, which
    names it for editors."""
    endpoint = name or endpoint_name_for(directory)
    if not ENDPOINT_NAME.fullmatch(endpoint):
        raise UsageError(
            f"'{endpoint}' is not a valid endpoint name",
            hint="use 3-32 characters: lower-case letters, digits and '-', starting with a letter (--name)",
        )
    choice = StarterChoice.of(target, flavor, templates)
    _check_libraries(choice.flavor)
    with tempfile.TemporaryDirectory() as staging_dir:
        staging = Path(staging_dir)
        _compose(templates / "starters", staging, choice, endpoint)
        if schema_text is not None:
            (staging / SCHEMA_FILE).write_text(schema_text, encoding="utf-8")
        files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
        existing = [str(directory / f) for f in files if (directory / f).exists()]
        if existing and not force:
            raise UsageError(
                f"these files exist already: {', '.join(existing)}", hint="pass --force to overwrite them"
            )
        created = []
        for relative in files:
            destination = directory / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staging / relative, destination)
            created.append(destination)
    return created, endpoint


def _check_libraries(flavor: str) -> None:
    missing = []
    for distribution in NEEDS.get(flavor, ()):
        try:
            importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            if distribution == "mlflow-skinny" and _installed("mlflow"):
                continue
            missing.append(distribution)
    if missing:
        raise UsageError(
            f"the {flavor} starter trains its model with {', '.join(missing)}, which is not installed",
            hint=f"pip install {' '.join(missing)}",
        )


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# -- composing ------------------------------------------------------------------------------------
def _compose(starters: Path, out: Path, choice: StarterChoice, endpoint: str) -> None:
    flavor_dir = starters / "flavors" / choice.flavor
    for source in sorted(flavor_dir.rglob("*")):
        if source.is_file() and "__pycache__" not in source.parts:
            destination = out / source.relative_to(flavor_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    if choice.target == "synapse" and (out / "score.py").is_file():
        # the Spark job calls predict(model, df) for each batch when the scoring module has one
        with open(out / "score.py", "a", encoding="utf-8") as script:
            script.write(BATCH_FUNCTION[choice.flavor])
    if choice.flavor == "sklearn":
        _save_sklearn(out / "model")
    elif choice.flavor == "mlflow":
        _save_mlflow(out / "model")
    if choice.target in TABULAR:
        columns = list(FEATURES)
        (out / "sample-request.json").write_text(
            json.dumps({"columns": columns, "data": list(SAMPLE_ROWS)}) + "\n"
        )
    requirements = _requirements(choice)
    if requirements:
        (out / "requirements.txt").write_text("\n".join(requirements) + "\n")
    values = {
        "name": endpoint,
        "name_identifier": endpoint.replace("-", "_"),
        "model": _model_block(choice),
        "scoring": _scoring_block(choice),
        "requirements": _requirements_line(bool(requirements), choice),
        "image": (
            "  # image: not used: Azure ML runs an MLflow model in the environment its MLmodel describes"
            if choice.flavor == "mlflow"
            else f"  image: {AZUREML_IMAGE}   # base image Azure ML builds on"
        ),
        "inputs": "\n".join(f"    - {{name: {c}, type: float}}" for c in FEATURES),
        "outputs": "    - {name: prediction, type: float}",
    }
    template = (starters / choice.target / "deploy.yaml").read_text(encoding="utf-8")
    (out / "deploy.yaml").write_text(
        PLACEHOLDER.sub(lambda m: values[m.group(1)], template), encoding="utf-8"
    )


def _model_block(choice: StarterChoice) -> str:
    flavor = {
        "plain": None,
        "sklearn": "sklearn               # a scikit-learn estimator saved with joblib",
        "onnx": "onnx                  # an ONNX graph (runs with onnxruntime)",
        "mlflow": "mlflow                # an MLflow model folder (its MLmodel file says how to load it)",
    }[choice.flavor]
    where = (
        "served without a scoring script (the MLmodel file says how)"
        if choice.flavor == "mlflow"
        else "score.py finds it at $AZUREML_MODEL_DIR/model/"
    )
    lines = [
        f"# The trained model: a file or a folder; {where}.",
        "model:",
        "  path: model/",
        *([f"  flavor: {flavor}"] if flavor else []),
        "  # name: my-model            # registered model name (default: the endpoint name)",
        '  # version: "1"              # default: derived from the model\'s content hash',
    ]
    return "\n".join(lines)


def _scoring_block(choice: StarterChoice) -> str:
    if choice.flavor == "mlflow":
        if choice.target == "azureml":
            return (
                "# No scoring section: Azure ML serves an MLflow model itself (no-code deployment),\n"
                '# with requests like {"input_data": {"columns": [...], "data": [[...]]}}.'
            )
        if choice.target == "sqlserver":
            return "# No scoring section: the generated procedure loads the MLflow model with mlflow.pyfunc."
        if choice.target == "synapse":
            return "# No scoring section: the Spark job loads the MLflow model with mlflow.pyfunc."
        return (
            "# No scoring section: an MLflow model is served through mlflow.pyfunc by a generated\n"
            "# entry script that takes Azure ML's request format:\n"
            '#   {"input_data": {"columns": [...], "data": [[...]]}}'
        )
    note = "The Azure ML entry script: init() once, run(raw_data) per request."
    if choice.target == "synapse":
        note = (
            "The Azure ML entry script for the same model, and predict(model, df): the batch\n"
            "# function the Spark job calls for each batch of rows (a pandas DataFrame)."
        )
    if choice.target == "sqlserver":
        note = (
            "The Azure ML entry script for the same model: it serves it over HTTP when this project\n"
            "# is pushed to a local or Azure ML target; SQL Server runs its generated procedure instead."
        )
    return "\n".join(
        [
            f"# {note}",
            "scoring:",
            "  script: score.py",
            "  # code: src/                # folder shipped with the script (default: the script's folder)",
        ]
    )


def _requirements(choice: StarterChoice) -> list[str]:
    lines: list[str] = []
    if choice.flavor == "sklearn":
        lines = [
            f"scikit-learn=={importlib.metadata.version('scikit-learn')}  # a pickle needs this one",
            "joblib",
            "numpy",
        ]
    elif choice.flavor == "onnx":
        lines = ["onnxruntime>=1.17", "numpy>=1.24"]
    elif choice.flavor == "mlflow":
        lines = [
            f"mlflow-skinny=={_mlflow_version()}",
            f"scikit-learn=={importlib.metadata.version('scikit-learn')}",
            "skops  # the format MLflow saves scikit-learn models in (no pickle)",
            "pandas",
        ]
    if choice.target == "azureml" and choice.flavor == "mlflow":
        return []  # no-code deployment: Azure ML reads the model's own requirements
    if choice.target == "azureml":
        lines.append("azureml-inference-server-http  # the server Azure ML runs score.py with")
    return lines


def _requirements_line(present: bool, choice: StarterChoice) -> str:
    if present:
        return "  requirements: requirements.txt     # pip requirements (or conda_file: conda.yaml, not both)"
    return "  # requirements: requirements.txt   # pip requirements (or conda_file: conda.yaml, not both)"


def _mlflow_version() -> str:
    for distribution in ("mlflow-skinny", "mlflow"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise UsageError("mlflow is not installed", hint="pip install mlflow-skinny")


BATCH_FUNCTION = {
    "sklearn": '''

def predict(model, df):
    """Batch scoring on Spark (the synapse target): a pandas DataFrame of input rows in, one
    column per declared output back. Called with the model the job loaded (joblib)."""
    import pandas as pd

    return pd.DataFrame({"prediction": model.predict(df.to_numpy(dtype=float))})
''',
    "onnx": '''

def predict(model, df):
    """Batch scoring on Spark (the synapse target): a pandas DataFrame of input rows in, one
    column per declared output back. ``model`` is the onnxruntime session the job opened."""
    import pandas as pd

    (outputs,) = model.run(None, {model.get_inputs()[0].name: df.to_numpy(dtype=np.float32)})
    return pd.DataFrame({"prediction": outputs[:, 0]})
''',
}


# -- models that must be trained where they will be loaded ------------------------------------------
def _linear_model():  # type: ignore[no-untyped-def]
    """A scikit-learn LinearRegression that is exactly y = BIAS + WEIGHTS . x."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    y = BIAS + x @ np.array(WEIGHTS)
    return LinearRegression().fit(x, y), x, y


def _save_sklearn(model_dir: Path) -> None:
    import joblib

    model, _, _ = _linear_model()
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.pkl")


def _save_mlflow(model_dir: Path) -> None:
    import contextlib
    import io
    import logging

    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.sklearn import save_model

    model, x, y = _linear_model()
    frame = pd.DataFrame(x, columns=list(FEATURES))
    model.fit(frame, y)  # fitted on named columns, so that the signature names them
    signature = infer_signature(frame, model.predict(frame))
    # mlflow prints and logs while it saves; stdout belongs to --json, stderr to our messages
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    # Requirements given, not inferred: inferring them loads the model in another Python.
    requirements = [line.split("  #")[0] for line in _requirements(StarterChoice("local", "mlflow"))]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        save_model(model, str(model_dir), signature=signature, pip_requirements=requirements)
