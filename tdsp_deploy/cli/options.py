"""Options and arguments that several commands share, defined once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tdsp_deploy.cli.context import Command

Result = TypeVar("Result")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")]
ManifestArgument = Annotated[Path, typer.Argument(help="The manifest, e.g. deploy.yaml.", show_default=False)]
DeploymentOption = Annotated[
    str | None, typer.Option("--deployment", "-d", help="A deployment slot, e.g. blue.", show_default=False)
]
LockTimeoutOption = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for another command changing this endpoint.")
]
CiOption = Annotated[
    bool,
    typer.Option("--ci", help="Write a Markdown summary for the CI page (automatic when CI=true)."),
]
SummaryOption = Annotated[
    Path | None,
    typer.Option(
        "--summary",
        help="Write the Markdown summary to this file (default in CI mode: $GITHUB_STEP_SUMMARY).",
        show_default=False,
    ),
]


def with_context(command: Callable[..., Result]) -> Callable[..., Result]:
    """A command that declares only its own options and takes its ``Command`` as ``ctx``.

    What typer sees is that signature without ``ctx`` and with --json and --debug after the
    command's own options, where every command lists them; the command is called with the
    Command started from its MANIFEST argument (none when it has no such argument).
    """
    signature = inspect.signature(command, eval_str=True)
    own = [param for name, param in signature.parameters.items() if name != "ctx"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False, annotation=hint)
        for name, hint in (("json_out", JsonOption), ("debug", DebugOption))
    ]

    @functools.wraps(command)
    def run(**options: Any) -> Result:
        json_out, debug = options.pop("json_out", False), options.pop("debug", False)
        return command(Command.start(options.get("manifest"), json_out, debug), **options)

    # typer reads both the signature and the type hints: neither may name ctx
    run.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
    run.__annotations__ = {param.name: param.annotation for param in [*own, *shared]}
    run.__annotations__["return"] = signature.return_annotation
    return run
