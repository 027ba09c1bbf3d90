"""The command tree: every command and group, in the order `tdsp-deploy --help` lists them.

Each command group lives in a module of its own (manifests, deploy, endpoint, traffic, batch,
ab, rollout) that imports only the context and the shared options and helpers, never
another group; this module is the one that knows them all.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tdsp_deploy import __version__
from tdsp_deploy.cli import batch, deploy, endpoint, manifests, traffic
from tdsp_deploy.cli.ab import ab_app
from tdsp_deploy.cli.context import environment
from tdsp_deploy.cli.rollout import rollout_app

app = typer.Typer(
    name="tdsp-deploy",
    help="Deploy a model from one YAML manifest: package, deploy, smoke-test, shift traffic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        environment().write_data(f"tdsp-deploy {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Deploy a model from one YAML manifest: package, deploy, smoke-test, shift traffic."""


COMMANDS = [
    ("init", manifests.init),
    ("validate", manifests.validate),
    ("schema", manifests.schema),
    ("import", manifests.import_command),
    ("package", deploy.package),
    ("render", deploy.render),
    ("push", deploy.push),
    ("status", endpoint.status),
    ("traffic", traffic.traffic),
    ("rollback", traffic.rollback),
    ("invoke", endpoint.invoke),
    ("test", endpoint.test_command),
    ("logs", endpoint.logs),
    ("credentials", endpoint.credentials),
    ("delete", endpoint.delete),
    ("run", batch.run_command),
]
for name, callback in COMMANDS:
    app.command(name)(callback)
app.add_typer(ab_app, name="ab")
app.add_typer(rollout_app, name="rollout")
