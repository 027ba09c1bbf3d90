"""Commands on a manifest that touch no target: init, validate, schema, import."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from tdsp_deploy.cli import validation
from tdsp_deploy.cli.context import Command
from tdsp_deploy.cli.options import ManifestArgument, with_context
from tdsp_deploy.errors import UsageError

# What `import` writes as placeholders when it is not told the workspace, with stand-ins that
# pass the target's checks, so that the rest of an imported manifest can be validated.
WORKSPACE_STAND_INS = {
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
    "AZURE_RESOURCE_GROUP": "unset-resource-group",
    "AZURE_ML_WORKSPACE": "unset-workspace",
}


def _kinds() -> list[str]:
    from tdsp_deploy.backends.registry import Registry

    return Registry.discover().kinds


@with_context
def init(
    ctx: Command,
    directory: Annotated[Path, typer.Argument(help="Where to write the starter project.")] = Path("."),
    name: Annotated[str | None, typer.Option(help="Endpoint name (default: from the folder name).")] = None,
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="local | azureml | sqlserver | synapse (the starter's target).",
            autocompletion=_kinds,
        ),
    ] = "local",
    flavor: Annotated[
        str | None,
        typer.Option(
            help="sklearn | onnx | mlflow (default: a model needing no library; tabular targets: sklearn).",
            autocompletion=lambda: ["sklearn", "onnx", "mlflow"],
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")] = False,
) -> None:
    """Write a commented starter manifest, score.py, model and sample request for a target."""
    from tdsp_deploy.manifest.schema import manifest_json_schema
    from tdsp_deploy.starter import write_starter

    models, _ = ctx.registry.target_models()
    schema_text = json.dumps(manifest_json_schema(models), indent=2, sort_keys=True) + "\n"
    created, endpoint = write_starter(
        _templates_dir(),
        directory,
        name=name,
        force=force,
        target=target,
        flavor=flavor,
        schema_text=schema_text,
    )
    manifest = directory / "deploy.yaml"
    ctx.answer(
        {"created": [str(p) for p in created], "name": endpoint, "target": target},
        [
            *(f"created {path}" for path in created),
            f"next: tdsp-deploy validate {manifest} && tdsp-deploy push {manifest}",
        ],
    )


def _templates_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_templates"
    return packaged if packaged.is_dir() else package.parent / "templates"


@with_context
def validate(ctx: Command, manifest: ManifestArgument) -> None:
    """Check a manifest without deploying anything (and without importing your code)."""
    validation.validate(ctx, manifest)


@with_context
def schema(
    ctx: Command,
    reference: Annotated[
        bool, typer.Option("--reference", help="The Markdown manifest reference instead of the JSON Schema.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the manifest's JSON Schema (for editors: yaml-language-server), or its reference."""
    from tdsp_deploy.manifest.reference import markdown_reference
    from tdsp_deploy.manifest.schema import manifest_json_schema

    models, warnings = ctx.registry.target_models()
    ctx.warn(warnings)
    document = manifest_json_schema(models)
    if reference:
        text = markdown_reference(document)
    else:
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output is not None:
        _write_text(output, text)
        ctx.answer(
            {"path": str(output), "format": "markdown" if reference else "json-schema"}, f"wrote {output}"
        )
    else:
        ctx.answer({"reference": text} if reference else document, lambda: ctx.env.write_data(text))


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


@with_context
def import_command(
    ctx: Command,
    endpoint: Annotated[
        Path, typer.Argument(help="az ml endpoint YAML (managedOnlineEndpoint).", show_default=False)
    ],
    deployments: Annotated[
        list[Path],
        typer.Argument(
            help="az ml deployment YAML (managedOnlineDeployment); a second one becomes a canary.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="The manifest to write (- for stdout); with several deployments, a folder."
        ),
    ] = Path("deploy.yaml"),
    target: Annotated[
        str, typer.Option("--target", help="azureml, or local for a rehearsal on this machine.")
    ] = "azureml",
    request: Annotated[
        Path | None,
        typer.Option("--request", help="Sample request for the smoke test (default: found beside the YAML)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the manifest if it exists.")] = False,
    subscription_id: Annotated[str | None, typer.Option(help="Default: ${AZURE_SUBSCRIPTION_ID}.")] = None,
    resource_group: Annotated[str | None, typer.Option(help="Default: ${AZURE_RESOURCE_GROUP}.")] = None,
    workspace: Annotated[str | None, typer.Option(help="Default: ${AZURE_ML_WORKSPACE}.")] = None,
) -> None:
    """Turn an existing az ml endpoint + deployment YAML pair (or several deployments) into manifests."""
    run_import = ctx.registry.importer("azureml")
    run_import(
        ctx.env,
        endpoint,
        deployments,
        output,
        target=target,
        request=request,
        force=force,
        workspace_settings={
            "subscription_id": subscription_id,
            "resource_group": resource_group,
            "workspace": workspace,
        },
        check=lambda path: ctx.load(path, environ={**WORKSPACE_STAND_INS, **os.environ}),
    )
