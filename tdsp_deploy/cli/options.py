"""Options and arguments that several commands share, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
