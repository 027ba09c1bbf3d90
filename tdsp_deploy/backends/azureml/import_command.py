"""`tdsp-deploy import`: write one manifest per az ml deployment (or all of them to stdout),
each checked by loading it as a push would."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tdsp_deploy.errors import UsageError

TARGETS = ("azureml", "local")
HEADER = "# Imported from az ml YAML by `tdsp-deploy import`; check it with `tdsp-deploy validate`.\n"


def run_import(
    env: Any,
    endpoint: Path,
    deployments: list[Path],
    output: Path,
    *,
    target: str,
    request: Path | None,
    force: bool,
    workspace_settings: dict[str, str | None],
    check: Callable[[Path], object],
) -> None:
    """Import ``deployments`` of ``endpoint``; ``check`` loads a written manifest."""
    from tdsp_deploy.backends.azureml.importer import import_az_ml

    if target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, not '{target}'")
    to_stdout = str(output) == "-"
    paths = _outputs(output, deployments, to_stdout)
    documents, warnings = [], []
    for index, (deployment, path) in enumerate(zip(deployments, paths, strict=True)):
        if not to_stdout and path.exists() and not force:
            raise UsageError(f"{path} exists already", hint="pass --force to overwrite it, or choose -o")
        document, told = import_az_ml(
            endpoint,
            deployment,
            path.parent.resolve(),
            target_kind=target,
            request=request,
            **workspace_settings,
        )
        if index > 0:
            _as_canary(document, told)
        documents.append(document)
        warnings += [f"{deployment.name}: {warning}" if len(deployments) > 1 else warning for warning in told]
    texts = [HEADER + yaml.safe_dump(document, sort_keys=False) for document in documents]
    for text, path in zip(texts, paths, strict=True):
        _check(text, path, check, to_stdout)
    if to_stdout:
        env.write_data("---\n".join(texts).rstrip("\n"))
    else:
        for text, path in zip(texts, paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if env.json_mode and not to_stdout:
        env.emit_json({"manifests": [str(p) for p in paths], "manifest": str(paths[0]), "warnings": warnings})
        return
    for warning in warnings:
        env.say(f"warning: {warning}", style="yellow")
    if not to_stdout:
        first = paths[0]
        env.say(f"wrote {', '.join(str(p) for p in paths)}; next: tdsp-deploy validate {first}")


def _outputs(output: Path, deployments: list[Path], to_stdout: bool) -> list[Path]:
    if to_stdout:
        return [Path.cwd() / f"deploy-{d.stem}.yaml" for d in deployments]
    if len(deployments) == 1:
        return [output]
    folder = output.parent if output.suffix in (".yaml", ".yml") else output
    return [folder / f"deploy-{d.stem.removesuffix('-deployment')}.yaml" for d in deployments]


def _as_canary(document: dict[str, Any], warnings: list[str]) -> None:
    """A deployment after the first rolls out beside it: its share of the endpoint's traffic
    when the endpoint YAML gives one, else staged with none."""
    rollout = document.setdefault("rollout", {})
    if "traffic" not in rollout and "mirror" not in rollout:
        rollout["traffic"] = 0
        warnings.append(
            f"rollout: the endpoint YAML gives '{rollout.get('deployment', 'this deployment')}' no traffic; "
            "it is staged (traffic: 0) beside the first; raise rollout.traffic to make it a canary"
        )


def _check(text: str, path: Path, check: Callable[[Path], object], to_stdout: bool) -> None:
    """What is written must load as a manifest (paths resolved from where it is written)."""
    probe = path if not to_stdout else path.with_name(f".{path.name}.check")
    if not to_stdout and path.exists():
        probe = path.with_name(f".{path.name}.check")
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(text)
    try:
        check(probe)
    finally:
        if probe != path:
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()
