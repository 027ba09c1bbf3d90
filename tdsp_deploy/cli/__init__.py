"""The command line: parse, call one pipeline or backend function, render.

``console`` runs it (``main``, and ``run``, the console script); ``commands`` holds the
command tree; ``context`` is what every command starts from (its Environment, and the
manifest, registry and backend, each made once); one module per command group
(``manifests``, ``deploy``, ``endpoint``, ``traffic``, ``batch``, ``ab``, ``rollout``);
``build`` builds only the part of the tree an invocation uses.
"""

from typing import Any

from tdsp_deploy.cli.console import main, run

__all__ = ["app", "main", "run"]


def __getattr__(name: str) -> Any:
    # The command tree imports typer and every command group: built when it is asked for,
    # not by `tdsp-deploy validate`, which runs without it (validation.py).
    if name == "app":
        from tdsp_deploy.cli.commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
