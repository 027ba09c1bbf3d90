"""How the endpoint's background processes (the router, the supervisor) begin: the one
argument they are started with, and their log lines, which go to the log file the CLI opened
as their standard error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def start(argv: list[str] | None, name: str, argument: str) -> Path:
    """The one argument of ``python -m tdsp_deploy.backends.local.<name> ARGUMENT``, once
    logging is set up; exit 2 with the usage when it is not given exactly once."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m tdsp_deploy.backends.local.{name} {argument}", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s {name}: %(message)s", stream=sys.stderr
    )
    return Path(args[0])
