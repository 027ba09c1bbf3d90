"""What ``validate`` checks of a manifest for the local target before anything runs, and what
the deployment's environment is built from.

Beside the local backend's package rather than in it: importing the package imports the
backend and its target schema (pydantic), and the quick check of ``validate``
(manifest/quick.py, cli/validation.py) runs these same checks without either. They read the
manifest and its target by attribute only, so a validated model and the quick check's plain
record of the same manifest give the same answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def preflight(manifest: Any) -> list[str]:
    """Warnings for a manifest whose target is the local one (``manifest.target``)."""
    from tdsp_deploy.environment import check_environment

    target = manifest.target
    warnings = []
    if target.host not in LOOPBACK_HOSTS:
        warnings.append(
            f"target.host {target.host} lets other machines reach the endpoint (the key still "
            "guards it); use 127.0.0.1 unless that is what you want"
        )
    liveness, timeout_ms = target.liveness_probe, target.request_timeout_ms
    silence = liveness.period * liveness.failure_threshold  # a busy worker answers no probe meanwhile
    if silence < timeout_ms / 1000:
        warnings.append(
            f"target.liveness_probe gives up on a slot after {silence} s without an answer, less "
            f"than target.request_timeout_ms ({timeout_ms} ms): a slot busy with one long request "
            "may be restarted; raise period or failure_threshold"
        )
    environment = manifest.environment
    if environment.isolation == "shared":
        # Slots run in this Python environment: say where it differs from the manifest's.
        return warnings + check_environment(environment)
    if declared(environment, manifest.model.path) is None:
        warnings.append(
            "the manifest declares no environment (environment.requirements or conda_file): the "
            "deployment runs in this CLI's Python environment, and Azure ML will need one"
        )
    return warnings  # isolated: built from the file alone at push (validate resolves nothing)


def declared(
    environment: object, model_path: Path | None
) -> tuple[Path | None, Path | None, str | None] | None:
    """(requirements file, conda file, Python version) the deployment's environment is built
    from: the manifest's, else, for an MLflow model, the model's own (as Azure ML's no-code
    deployments do); None when neither declares one. Reads no package index (validate uses it)."""
    requirements = getattr(environment, "requirements", None)
    conda_file = getattr(environment, "conda_file", None)
    python = getattr(environment, "python", None)
    if requirements or conda_file:
        return (
            Path(requirements) if requirements else None,
            Path(conda_file) if conda_file else None,
            python,
        )
    if model_path is None:
        return None
    from tdsp_deploy.mlflow_model import model_environment

    carried = model_environment(Path(model_path))
    if carried is None:
        return None
    return carried.requirements, carried.conda_file, python or carried.python
