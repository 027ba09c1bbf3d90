"""`tdsp-deploy run`: a batch-scoring job on demand (for schedulers and CI).

``--local`` runs the very same job on a local Spark with local paths: the fast loop before
the cluster. Without it, the job is submitted to the target's Spark pool and scores with the
deployed model versions, split by the endpoint's traffic. Batch targets only.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from tdsp_deploy.cli.context import Command
from tdsp_deploy.cli.options import DeploymentOption, ManifestArgument, with_context
from tdsp_deploy.errors import UsageError

FormatOption = Annotated[
    str | None,
    typer.Option(
        help="parquet | csv | delta (default: by the path's extension; parquet).", show_default=False
    ),
]


@with_context
def run_command(
    ctx: Command,
    manifest: ManifestArgument,
    input: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            help="Rows to score: a path or a table (default: target.input).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Where scored rows go (default: target.output).", show_default=False
        ),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Run on a local Spark (local[*]) with local paths.")
    ] = False,
    input_format: FormatOption = None,
    output_format: FormatOption = None,
    deployment: DeploymentOption = None,
    master: Annotated[str, typer.Option(help="Spark master for --local.")] = "local[*]",
) -> None:
    """Run a batch-scoring job: read the input, score every row, write the output."""
    loaded = ctx.loaded
    source = _location(input, input_format, "--input")
    sink = _location(output, output_format, "--output")
    with ctx.env.progress() as progress:
        backend = ctx.backend(progress)
        if not backend.capabilities.batch_jobs:
            raise UsageError(
                f"`run` is for batch targets; the {backend.kind} target serves requests",
                hint="use `tdsp-deploy invoke` to score with it",
            )
        if local and deployment:
            raise UsageError("--deployment names a deployed slot; --local runs the manifest's own model")
        result: dict[str, Any] = backend.run_job(source, sink, local=local, slot=deployment, master=master)
    ctx.answer(
        {"endpoint": loaded.manifest.name, "local": local, **result},
        f"scored {result.get('rows', '?')} rows into {result.get('output', '?')}",
    )


def _location(text: str | None, format: str | None, option: str) -> Any:
    """The option as a DataLocation: a local path is taken from the current folder."""
    if text is None:
        if format is not None:
            raise UsageError(f"{option}-format needs {option}")
        return None
    from pydantic import ValidationError

    from tdsp_deploy.backends.synapse.target import DataLocation, location_from_text

    place: dict[str, Any] = location_from_text(text)
    if "path" in place and not text.startswith("abfss://"):
        place["path"] = os.path.abspath(text)
    if format is not None:
        place["format"] = format
    try:
        return DataLocation.model_validate(place)
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        raise UsageError(f"{option} {text}: {problems}") from None
