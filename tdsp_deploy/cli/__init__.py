"""The command line: parse, call one pipeline or backend function, render.

``console`` runs it (``main``, and ``console.run``, behind ``run`` here, the console script);
``commands`` holds the command tree; ``context`` is what every command starts from (its
Environment, and the manifest, registry and backend, each made once); one module per command
group (``manifests``, ``deploy``, ``endpoint``, ``traffic``, ``batch``, ``ab``, ``rollout``);
``build`` builds only the part of the tree an invocation uses; ``root_help`` prints
`tdsp-deploy --help` without any of them.
"""

from __future__ import annotations

import sys

# no `typing` here: the root help imports nothing it does not use

__all__ = ["app", "main", "run"]


def run() -> None:
    """The console script: the root help when root_help vouches for it, else the CLI."""
    from tdsp_deploy.cli import root_help

    if root_help.serve(sys.argv[1:]):
        sys.exit(0)
    from tdsp_deploy.cli.console import run as run_console

    run_console()


def __getattr__(name: str) -> object:
    # The command tree imports typer and every command group: built when it is asked for,
    # not by `tdsp-deploy validate`, which runs without it (validation.py), nor by the root
    # help (root_help.py), which runs without the console either.
    if name == "app":
        from tdsp_deploy.cli.commands import app

        return app
    if name == "main":
        from tdsp_deploy.cli.console import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
