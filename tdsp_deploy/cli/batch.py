"""`tdsp-deploy run`: a batch-scoring job on demand (for schedulers and CI).

``--local`` runs the very same job on a local Spark with local paths: the fast loop before
the cluster. Without it, the job is submitted to the target's Spark pool and scores with the
deployed model versions, split by the endpoint's traffic. Batch targets only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from tdsp_deploy.cli.context import Command
from tdsp_deploy.cli.options import DeploymentOption, ManifestArgument, with_context
from tdsp_deploy.errors import UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend

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
    for text, format, option in ((input, input_format, "--input"), (output, output_format, "--output")):
        if text is None and format is not None:
            raise UsageError(f"{option}-format needs {option}")
    with ctx.env.progress() as progress:
        backend = ctx.backend(progress)
        if not backend.capabilities.batch_jobs:
            raise UsageError(
                f"`run` is for batch targets; the {backend.kind} target serves requests",
                hint="use `tdsp-deploy invoke` to score with it",
            )
        source = _location(backend, input, input_format, "--input")
        sink = _location(backend, output, output_format, "--output")
        if local and deployment:
            raise UsageError("--deployment names a deployed slot; --local runs the manifest's own model")
        result: dict[str, Any] = backend.run_job(source, sink, local=local, slot=deployment, master=master)
    ctx.answer(
        {"endpoint": loaded.manifest.name, "local": local, **result},
        f"scored {result.get('rows', '?')} rows into {result.get('output', '?')}",
    )


def _location(backend: Backend, text: str | None, format: str | None, option: str) -> Any:
    """The option as the location the target's jobs take (none when it is not given)."""
    if text is None:
        return None
    try:
        return backend.job_location(text, format)
    except ValueError as exc:
        raise UsageError(f"{option} {text}: {exc}") from None
