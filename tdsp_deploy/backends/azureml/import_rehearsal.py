"""What `tdsp-deploy import` adds to the az ml mapping: the local target as a rehearsal of the
Azure ML one, a smoke test from the sample request that sits beside the YAML, and placeholders
caught before azure-ai-ml reads the files (whose message would not say what to change).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tdsp_deploy.errors import UsageError

SAMPLE_REQUESTS = ("sample-request.json", "sample-data.json")
_PLACEHOLDER = re.compile(r"<([A-Za-z_][A-Za-z0-9_ -]{0,40})>")
# What the local target has its own equivalent for; every other target key is Azure's alone.
_LOCAL_PROBE_KEYS = ("initial_delay", "period", "timeout", "failure_threshold")


def check_placeholders(path: Path, *, given: tuple[str, ...] = ()) -> None:
    """Refuse YAML that still holds a sample's ``<endpoint_name>``-style placeholder, except in
    the keys ``given`` otherwise (a deployment's endpoint_name, when the endpoint is given)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return  # the loader says what is wrong with the file
    for number, line in enumerate(lines, start=1):
        value = line.split("#", 1)[0]
        found = _PLACEHOLDER.search(value)
        if found and ":" in value:
            key = value.split(":", 1)[0].strip() or "a value"
            if key in given:
                continue
            raise UsageError(
                f"{path}:{number}: {key}: '{found.group(0)}' is a placeholder of the sample",
                hint=f"replace {found.group(0)} with a real value (e.g. a name of 3-32 characters of a-z, 0-9, '-')",
            )


def local_target(azure_target: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The local target that rehearses ``azure_target``: its request timeout and liveness
    probe carry over; what only Azure has is dropped, each key named in one warning."""
    target: dict[str, Any] = {"kind": "local"}
    dropped = []
    for key, value in azure_target.items():
        if key == "kind":
            continue
        if key == "request_settings" and isinstance(value, dict):
            if "request_timeout_ms" in value:
                target["request_timeout_ms"] = value["request_timeout_ms"]
            dropped += [f"request_settings.{k}" for k in value if k != "request_timeout_ms"]
        elif key == "liveness_probe" and isinstance(value, dict):
            target["liveness_probe"] = {k: v for k, v in value.items() if k in _LOCAL_PROBE_KEYS}
            dropped += [f"liveness_probe.{k}" for k in value if k not in _LOCAL_PROBE_KEYS]
        else:
            dropped.append(key)
    if dropped:
        warnings.append(
            f"target: Azure-only settings not used by the local target: {', '.join(sorted(dropped))}"
        )
    return target


def is_endpoint_name(argument: Path) -> bool:
    """An endpoint given by name (as ``az ml online-endpoint create -n NAME``), not by YAML."""
    from tdsp_deploy.manifest.model import ENDPOINT_NAME

    return (
        not argument.exists() and argument.suffix == "" and bool(re.fullmatch(ENDPOINT_NAME, str(argument)))
    )


def registered_model_beside(reference: str, folder: Path, warnings: list[str]) -> dict[str, str] | None:
    """A registered model (``azureml:NAME:VERSION``) that a model YAML beside the deployment
    defines (as a sample registers it with ``az ml model create -f model.yml`` first): its
    local path (absolute), name and version, as the manifest's model section."""
    import yaml

    match = re.fullmatch(r"(?:azureml:)?([A-Za-z0-9_.-]+)[:@]([A-Za-z0-9_.-]+)", reference)
    if match is None:
        return None
    name, version = match.groups()
    for candidate in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]):
        try:
            document = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(document, dict) or document.get("name") != name or not document.get("path"):
            continue
        if "endpoint_name" in document or "model" in document:
            continue  # a deployment, not a model
        path = str(document["path"]).strip()
        warnings.append(
            f"model: 'azureml:{name}:{version}' is the model {candidate.name} defines (path: {path}); "
            "its local files are deployed"
        )
        return {"path": str(candidate.parent / path), "name": name, "version": version}
    return None


def smoke_test(
    request: Path | None, beside: list[Path], out_dir: Path, warnings: list[str], names: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """A smoke test from ``request`` or a sample request found beside the YAML files: one of
    ``SAMPLE_REQUESTS``, else ``sample-request-<word>.json`` for a word of ``names`` (the
    deployment's name and file name: sklearn-deployment.yaml takes sample-request-sklearn.json)."""
    found = request
    words = {w for name in names for w in re.split(r"[-_.]", name.lower()) if w}
    if found is None:
        for folder in beside:
            for name in SAMPLE_REQUESTS:
                if (folder / name).is_file():
                    found = folder / name
                    break
            else:
                for candidate in sorted(folder.glob("sample-request-*.json")):
                    if candidate.stem.removeprefix("sample-request-").lower() in words:
                        found = candidate
                        break
            if found is not None:
                break
    if found is None:
        warnings.append(
            "smoke_test: no sample request found beside the YAML (sample-request.json, "
            "sample-data.json); give one with --request, or each push gives traffic untested"
        )
        return None
    if not found.is_file():
        raise UsageError(f"--request {found}: no such file")
    resolved = found.resolve()
    shown = resolved.relative_to(out_dir).as_posix() if resolved.is_relative_to(out_dir) else str(resolved)
    return {"request": shown}
