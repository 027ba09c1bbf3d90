"""A revision's files laid out as Azure ML's managed container lays out a deployment.

In the container, the deployment's code folder sits at ``/var/azureml-app/<its folder name>/``
and the model at ``/var/azureml-app/azureml-models/<model name>/<version>/``, the model's own
folder or file beneath. ``AML_APP_ROOT`` is the folder that holds the entry script,
``AZUREML_ENTRY_SCRIPT`` the script's file name in it, ``AZUREML_MODEL_DIR`` the model's
version folder, and the inference server starts in ``AML_APP_ROOT`` (the inference image's
start script changes into it; ``az ml online-deployment create --local`` builds the same
container). What scripts see follows: sibling modules import (AML_APP_ROOT is on sys.path), a
``swagger2.json``, ``config.json`` or ``logging.json`` at the root of the code folder is the
server's, and files open relative to the working directory.

Here the same tree is ``<revision>/azureml-app/``. The unpacked package's ``code/`` and
``model/`` are moved into it, and links left in their place in the package, through which
the package lock still verifies every file before a restart.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

APP = "azureml-app"
MODELS = "azureml-models"
UNNAMED_CODE = "code"  # the folder of a generated entry script (an MLflow model's)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a deployment's server runs and what it is told, as in Azure ML's container."""

    app_root: Path  # AML_APP_ROOT and the working directory
    entry_script: str  # AZUREML_ENTRY_SCRIPT: the script's name in app_root
    model_dir: Path  # AZUREML_MODEL_DIR

    def variables(self) -> dict[str, str]:
        return {
            "AML_APP_ROOT": str(self.app_root),
            "AZUREML_ENTRY_SCRIPT": self.entry_script,
            "AZUREML_MODEL_DIR": str(self.model_dir),
        }


def code_folder_name(code: Path | None) -> str:
    """The name the code folder has in the container: its own (``onlinescoring`` for
    ``code: ../onlinescoring/``), as ``az ml`` uploads it."""
    name = code.resolve().name if code is not None else ""
    return name if name and name != MODELS else UNNAMED_CODE


def version_folder(version: str) -> str:
    # Azure ML numbers a model's versions 1, 2, ...; a version derived from the content hash
    # is not a number, and the inference server reads a model directory whose last part is not
    # one as a folder of several models (and logs an error): such a model is version 1 here.
    return version if version.isdigit() else "1"


def planned(directory: Path, code_name: str, script: str, model_name: str, version: str) -> Layout:
    """The layout of the revision in ``directory`` (nothing is created)."""
    app = directory / APP
    script_path = Path(script)
    return Layout(
        app_root=app / code_name / script_path.parent,  # pathlib drops the "." of a script at the top
        entry_script=script_path.name,
        model_dir=app / MODELS / model_name / version_folder(version),
    )


def lay_out(directory: Path, code_name: str, script: str, model_name: str, version: str) -> Layout:
    """Move the unpacked package's code and model (``directory/package``) into the container's
    places, leaving links behind. Once done, again (a restart) it keeps the code folder's
    name it was given the first time."""
    package = directory / "package"
    code_link = package / "code"
    if code_link.is_symlink():
        code_name = Path(os.readlink(code_link)).name
    layout = planned(directory, code_name, script, model_name, version)
    code_folder = directory / APP / code_name
    _move_and_link(code_link, code_folder)
    _move_and_link(package / "model", layout.model_dir)
    return layout


def _move_and_link(source: Path, destination: Path) -> None:
    if source.is_symlink():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    source.rename(destination)
    source.symlink_to(os.path.relpath(destination, source.parent))


def app_root_of(directory: Path, environment: dict[str, str] | None) -> Path:
    """Where a revision's server runs: the AML_APP_ROOT it was given; for a revision laid out
    before there was an ``azureml-app`` folder, the package's code folder."""
    given = (environment or {}).get("AML_APP_ROOT")
    return Path(given) if given else directory / "package" / "code"
