"""Commands on a deployed endpoint: status, invoke, test, logs, credentials, delete."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tdsp_deploy.cli.context import Command, existing
from tdsp_deploy.cli.options import (
    DeploymentOption,
    LockTimeoutOption,
    ManifestArgument,
    with_context,
)
from tdsp_deploy.errors import EndpointNotFound, ExitCode, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import EndpointStatus
    from tdsp_deploy.output import Environment

FailedOption = Annotated[
    bool, typer.Option("--failed", help="The log of the latest failed (rolled back) deployment.")
]
RegenerateOption = Annotated[
    bool, typer.Option("--regenerate", help="Replace both keys; the old ones are refused from then on.")
]


@with_context
def status(
    ctx: Command,
    manifest: Annotated[
        Path | None,
        typer.Argument(help="The manifest, e.g. deploy.yaml (not with --all).", show_default=False),
    ] = None,
    all_endpoints: Annotated[
        bool, typer.Option("--all", help="Every endpoint deployed on this machine's local target.")
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Refresh until Ctrl-C (off a terminal or with --json: a JSON line each time).",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    count: Annotated[int | None, typer.Option("--count", min=1, hidden=True)] = None,
) -> int:
    """Show slots, health, versions, traffic and the scoring URI. Exit 4 when a slot with
    traffic is not healthy, 3 when the endpoint does not exist."""
    from tdsp_deploy import status_view

    env = ctx.env
    if all_endpoints == (manifest is not None):
        raise UsageError("give a manifest or --all (not both)", hint="e.g. tdsp-deploy status deploy.yaml")
    if all_endpoints:
        backends = status_view.local_backends()
    else:
        backends = [ctx.backend()]
        current = existing(backends[0].status(), manifest)
        if not watch:

            def human() -> None:
                from tdsp_deploy import render_text

                render_text.status_table(env, current)
                for line in status_view.restart_lines(current):
                    env.say(line)

            ctx.answer(current.to_json(), human)
            return _health_exit_code(env, current)
    watchers = [status_view.EndpointWatcher(backend) for backend in backends]

    def take() -> list[status_view.EndpointSnapshot]:
        return [watcher.snapshot() for watcher in watchers]

    def health(snapshots: list[status_view.EndpointSnapshot]) -> int:
        return max([0, *(_health_exit_code(env, s.status) for s in snapshots)])

    if watch:
        return status_view.watch(env, take, interval=interval, count=count, health=health)
    snapshots = take()

    def table() -> None:
        if snapshots:
            env.say(status_view.headline(snapshots))
            env.console().print(status_view.table(env, snapshots))
        else:
            env.say("no endpoint is deployed on the local target")

    ctx.answer({"endpoints": [s.to_json() for s in snapshots]}, table)
    return health(snapshots)


def _health_exit_code(env: Environment, current: EndpointStatus) -> int:
    failing = [s.name for s in current.slots if s.traffic > 0 and s.state != "healthy"]
    router = current.details.get("router", {})
    if router.get("state") == "stopped":
        failing.append("router")
    if failing:
        env.say(f"not healthy: {', '.join(failing)}", style="red")
        return int(ExitCode.DEPLOYMENT_FAILED)
    return 0


@with_context
def invoke(
    ctx: Command,
    manifest: ManifestArgument,
    request: Annotated[Path, typer.Option("--request", "-r", help="Request body file ('-' for stdin).")],
    deployment: DeploymentOption = None,
) -> None:
    """Send one request to the endpoint and print the answer."""
    from tdsp_deploy.errors import BackendError

    ctx.loaded  # noqa: B018 - a bad manifest is reported before the request file
    body = _read_request(request)
    result = ctx.backend().invoke(body, slot=deployment)
    try:
        response: Any = result.json()
    except ValueError:
        response = result.body.decode("utf-8", "replace")
    if not 200 <= result.status < 300:
        message = response.get("message", response) if isinstance(response, dict) else response
        raise BackendError(
            f"the endpoint answered HTTP {result.status}: {message}",
            hint="for a 500, the model raised: see `tdsp-deploy logs`",
            details={"status": result.status, "deployment": result.deployment, "response": response},
        )

    def human() -> None:
        ctx.env.say(f"HTTP {result.status} from {result.deployment or '?'} in {result.elapsed_ms:.1f} ms")
        ctx.env.write_data(json.dumps(response, indent=2) if not isinstance(response, str) else response)

    ctx.answer(
        {
            "response": response,
            "status": result.status,
            "deployment": result.deployment,
            "elapsed_ms": round(result.elapsed_ms, 3),
        },
        human,
    )


def _read_request(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the request file {path}: {exc.strerror}") from exc


@with_context
def test_command(
    ctx: Command,
    manifest: ManifestArgument,
    deployment: DeploymentOption = None,
) -> None:
    """Re-run the manifest's smoke test (answers + latency) against what is deployed."""
    from tdsp_deploy.pipeline import test_deployment

    with ctx.env.progress() as progress:
        report = test_deployment(ctx.loaded, ctx.backend(progress), deployment=deployment, progress=progress)

    def human() -> None:
        from tdsp_deploy import render_text

        render_text.smoke_table(ctx.env, report)

    ctx.answer(report.to_json(), human)


@with_context
def logs(
    ctx: Command,
    manifest: ManifestArgument,
    deployment: DeploymentOption = None,
    tail: Annotated[int | None, typer.Option("--tail", "--lines", help="Only the last N lines.")] = 200,
    failed: FailedOption = False,
) -> None:
    """Show a deployment's server log (default: the one with the most traffic)."""
    backend = ctx.backend()
    if failed:
        slot = deployment or ""  # "": the latest failure, whichever deployment it was
        text = backend.failed_logs(slot, tail=tail)
    else:
        slot = deployment or _default_slot(backend.status())
        text = backend.logs(slot, tail=tail)
    ctx.answer({"deployment": slot, "lines": text.splitlines()}, lambda: ctx.env.write_data(text))


def _default_slot(current: EndpointStatus) -> str:
    if not current.exists:
        raise EndpointNotFound(
            f"endpoint '{current.name}' is not deployed", hint="run `tdsp-deploy push` first"
        )
    live = current.live_slot()
    if live is not None:
        return live.name
    if len(current.slots) == 1:
        return current.slots[0].name
    names = ", ".join(s.name for s in current.slots) or "none"
    raise UsageError(
        "no deployment takes traffic; choose one with --deployment", hint=f"deployments: {names}"
    )


@with_context
def credentials(
    ctx: Command,
    manifest: ManifestArgument,
    regenerate: RegenerateOption = False,
) -> None:
    """Print the endpoint's keys (the one command that shows a secret, because you asked)."""
    backend = ctx.backend()
    if regenerate:
        with backend.lock():
            backend.regenerate_keys()
    keys = backend.credentials()
    ctx.answer(
        {"primary_key": keys["primary_key"], "secondary_key": keys["secondary_key"]},
        lambda: ctx.env.write_data(
            f"primary_key: {keys['primary_key']}\nsecondary_key: {keys['secondary_key']}"
        ),
    )


@with_context
def delete(
    ctx: Command,
    manifest: ManifestArgument,
    deployment: DeploymentOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    lock_timeout: LockTimeoutOption = 600.0,
) -> None:
    """Stop and remove the endpoint (or one deployment with --deployment) and its state."""
    name = ctx.loaded.manifest.name
    backend = ctx.backend()
    what = (
        f"deployment '{deployment}' of endpoint '{name}'"
        if deployment
        else (f"endpoint '{name}' and every deployment in it")
    )
    if not backend.status().exists:
        ctx.answer(
            {"deleted": False, "endpoint": name, "deployment": deployment},
            f"endpoint '{name}' does not exist; nothing to delete",
        )
        return
    if not yes:
        if not ctx.env.interactive:
            raise UsageError(f"refusing to delete {what} without confirmation", hint="pass --yes")
        if not typer.confirm(f"Delete {what}?", err=True):
            raise typer.Exit(int(ExitCode.INTERRUPTED))
    with backend.lock(timeout=lock_timeout):
        backend.delete(deployment)
    ctx.answer({"deleted": True, "endpoint": name, "deployment": deployment}, f"deleted {what}")
