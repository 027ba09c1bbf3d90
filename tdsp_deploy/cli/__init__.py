"""The command line: parse, call one pipeline or backend function, render.

``console`` runs it (``main``, and ``run``, the console script); ``commands`` holds the
command tree; ``context`` is what every command starts from (its Environment, and the
manifest, registry and backend, each made once); one module per command group
(``manifests``, ``deploy``, ``endpoint``, ``traffic``, ``batch``, ``ab``, ``rollout``);
``build`` builds only the part of the tree an invocation uses.
"""

from tdsp_deploy.cli.commands import app
from tdsp_deploy.cli.console import main, run

__all__ = ["app", "main", "run"]
