"""The command line: parse, call one pipeline or backend function, render.

``main(argv, env)`` runs the CLI in-process and returns the exit code; tests call it with
their own Environment. It is the only place that prints errors: every TdspError renders
itself (message, hint, log tail), other exceptions become exit 1 with a one-line message,
and a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tdsp_deploy import __version__
from tdsp_deploy.cli_options import (
    DebugOption,
    DeploymentOption,
    JsonOption,
    LockTimeoutOption,
    ManifestArgument,
)
from tdsp_deploy.errors import EndpointNotFound, ExitCode, TdspError, UsageError
from tdsp_deploy.output import Environment

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend, EndpointStatus, Progress
    from tdsp_deploy.backends.registry import Registry
    from tdsp_deploy.manifest import LoadedManifest

app = typer.Typer(
    name="tdsp-deploy",
    help="Deploy a model from one YAML manifest: package, deploy, smoke-test, shift traffic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# What `import` writes as placeholders when it is not told the workspace, with stand-ins that
# pass the target's checks, so that the rest of an imported manifest can be validated.
WORKSPACE_STAND_INS = {
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
    "AZURE_RESOURCE_GROUP": "unset-resource-group",
    "AZURE_ML_WORKSPACE": "unset-workspace",
}

_ENV: contextvars.ContextVar[Environment] = contextvars.ContextVar("tdsp_deploy_env")

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


def _env(json_mode: bool, debug: bool) -> Environment:
    env = _ENV.get()
    env.json_mode = env.json_mode or json_mode
    env.debug = env.debug or debug
    return env


def _version(value: bool) -> None:
    if value:
        _ENV.get().write_data(f"tdsp-deploy {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Deploy a model from one YAML manifest: package, deploy, smoke-test, shift traffic."""


# -- helpers ------------------------------------------------------------------------------------
def _registry() -> Registry:
    from tdsp_deploy.backends.registry import Registry

    return Registry.discover()


def _load(
    path: Path, env: Environment, registry: Registry | None = None, environ: dict[str, str] | None = None
) -> LoadedManifest:
    from tdsp_deploy.manifest import load_manifest

    registry = registry or _registry()

    def target_models(kind: str | None) -> Any:
        # Only the backend of the kind the manifest names is loaded (None: it does not say
        # plainly, and all are, so that the loader's error can list them).
        models, warnings = registry.target_models(only=kind)
        for warning in warnings:
            env.say(f"warning: {warning}", style="yellow")
        return models

    loaded = load_manifest(path, targets=target_models, environ=environ)
    env.add_secrets(loaded.secrets)  # from here on, nothing printed shows them
    return loaded


def _load_checked(path: Path, env: Environment) -> LoadedManifest:
    """Load the manifest and run the checks that need no backend; warnings go to stderr."""
    from tdsp_deploy.manifest import check_manifest

    loaded = _load(path, env)
    for warning in check_manifest(loaded):
        env.say(f"warning: {warning}", style="yellow")
    return loaded


def _backend(loaded: LoadedManifest, progress: Progress | None = None) -> Backend:
    from tdsp_deploy.backends.base import no_progress

    return _registry().make_backend(loaded.manifest, progress or no_progress)


def _templates_dir() -> Path:
    packaged = Path(__file__).parent / "_templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


# -- commands -----------------------------------------------------------------------------------
@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write the starter project.")] = Path("."),
    name: Annotated[str | None, typer.Option(help="Endpoint name (default: from the folder name).")] = None,
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="local | azureml | sqlserver | synapse (the starter's target).",
            autocompletion=lambda: _registry().kinds,
        ),
    ] = "local",
    flavor: Annotated[
        str | None,
        typer.Option(
            help="sklearn | onnx | mlflow (default: a model needing no library; tabular targets: sklearn).",
            autocompletion=lambda: ["sklearn", "onnx", "mlflow"],
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")] = False,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Write a commented starter manifest, score.py, model and sample request for a target."""
    from tdsp_deploy.manifest.schema import manifest_json_schema
    from tdsp_deploy.starter import write_starter

    env = _env(json_out, debug)
    models, _ = _registry().target_models()
    schema_text = json.dumps(manifest_json_schema(models), indent=2, sort_keys=True) + "\n"
    created, endpoint = write_starter(
        _templates_dir(),
        directory,
        name=name,
        force=force,
        target=target,
        flavor=flavor,
        schema_text=schema_text,
    )
    if env.json_mode:
        env.emit_json({"created": [str(p) for p in created], "name": endpoint, "target": target})
        return
    for path in created:
        env.say(f"created {path}")
    manifest = directory / "deploy.yaml"
    env.say(f"next: tdsp-deploy validate {manifest} && tdsp-deploy push {manifest}")


@app.command()
def validate(manifest: ManifestArgument, json_out: JsonOption = False, debug: DebugOption = False) -> None:
    """Check a manifest without deploying anything (and without importing your code)."""
    from tdsp_deploy.errors import PluginError
    from tdsp_deploy.manifest import check_manifest

    env = _env(json_out, debug)
    registry = _registry()
    loaded = _load(manifest, env, registry)
    warnings = check_manifest(loaded)
    kind = loaded.manifest.target.kind  # type: ignore[attr-defined]
    try:
        warnings += registry.make_backend(loaded.manifest).preflight()
        from tdsp_deploy.rollout import validation_warnings

        warnings += validation_warnings(loaded.manifest)
    except PluginError as exc:
        warnings.append(f"{exc.message}; {exc.hint}")
    if env.json_mode:
        env.emit_json(
            {
                "valid": True,
                "manifest": str(manifest),
                "name": loaded.manifest.name,
                "target": kind,
                "warnings": warnings,
            }
        )
        return
    for warning in warnings:
        env.say(f"warning: {warning}", style="yellow")
    env.say(f"{manifest} is valid: endpoint '{loaded.manifest.name}', target {kind}", style="green")


@app.command()
def schema(
    reference: Annotated[
        bool, typer.Option("--reference", help="The Markdown manifest reference instead of the JSON Schema.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Print the manifest's JSON Schema (for editors: yaml-language-server), or its reference."""
    from tdsp_deploy.manifest.reference import markdown_reference
    from tdsp_deploy.manifest.schema import manifest_json_schema

    env = _env(json_out, debug)
    models, warnings = _registry().target_models()
    for warning in warnings:
        env.say(f"warning: {warning}", style="yellow")
    document = manifest_json_schema(models)
    if reference:
        text = markdown_reference(document)
    else:
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output is not None:
        _write_text(output, text)
        if env.json_mode:
            env.emit_json({"path": str(output), "format": "markdown" if reference else "json-schema"})
        else:
            env.say(f"wrote {output}")
    elif env.json_mode:
        env.emit_json({"reference": text} if reference else document)
    else:
        env.write_data(text)


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


@app.command("import")
def import_command(
    endpoint: Annotated[
        Path, typer.Argument(help="az ml endpoint YAML (managedOnlineEndpoint).", show_default=False)
    ],
    deployments: Annotated[
        list[Path],
        typer.Argument(
            help="az ml deployment YAML (managedOnlineDeployment); a second one becomes a canary.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The manifest to write (- for stdout); with several deployments, a folder."),
    ] = Path("deploy.yaml"),
    target: Annotated[
        str, typer.Option("--target", help="azureml, or local for a rehearsal on this machine.")
    ] = "azureml",
    request: Annotated[
        Path | None, typer.Option("--request", help="Sample request for the smoke test (default: found beside the YAML).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the manifest if it exists.")] = False,
    subscription_id: Annotated[str | None, typer.Option(help="Default: ${AZURE_SUBSCRIPTION_ID}.")] = None,
    resource_group: Annotated[str | None, typer.Option(help="Default: ${AZURE_RESOURCE_GROUP}.")] = None,
    workspace: Annotated[str | None, typer.Option(help="Default: ${AZURE_ML_WORKSPACE}.")] = None,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Turn an existing az ml endpoint + deployment YAML pair (or several deployments) into manifests."""
    from tdsp_deploy.backends.azureml.import_command import run_import

    env = _env(json_out, debug)
    run_import(
        env,
        endpoint,
        deployments,
        output,
        target=target,
        request=request,
        force=force,
        workspace_settings={
            "subscription_id": subscription_id,
            "resource_group": resource_group,
            "workspace": workspace,
        },
        check=lambda path: _load(path, env, environ={**WORKSPACE_STAND_INS, **os.environ}),
    )


@app.command()
def package(
    manifest: ManifestArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the archive.")] = Path("dist"),
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Build the deterministic package (archive + sha256 lock) that a push deploys."""
    from tdsp_deploy.packaging import build_package

    env = _env(json_out, debug)
    loaded = _load_checked(manifest, env)
    with env.progress() as progress:
        built = build_package(loaded.manifest, output, progress=progress)
    document = {
        "path": str(built.path),
        "package_id": built.package_id,
        "model_version": built.lock.model_version,
        "files": len(built.lock.files),
        "bytes": built.path.stat().st_size,
        "reused": built.reused,
    }
    if env.json_mode:
        env.emit_json(document)
        return
    state = "unchanged" if built.reused else "built"
    env.say(
        f"{state} {built.path} (package {built.package_id[:12]}, model version {built.lock.model_version})"
    )


@app.command()
def render(
    manifest: ManifestArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into.", show_default=False)],
    ci: CiOption = False,
    summary: SummaryOption = None,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Write, offline, exactly what a push would send or start: reviewable in a pull request."""
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package
    from tdsp_deploy.secrets import redact_files

    env = _env(json_out, debug)
    loaded = _load_checked(manifest, env)
    with env.progress() as progress:
        built = build_package(loaded.manifest, paths.package_store(), progress=progress)
        backend = _backend(loaded, progress)
        output.mkdir(parents=True, exist_ok=True)
        lock_path = output / "package.json"
        lock_path.write_text(json.dumps(built.lock.to_json(), indent=2, sort_keys=True) + "\n")
        files = [lock_path, *backend.render(built, output)]
        redact_files(files, loaded.secrets)
    from tdsp_deploy import ci_summary

    summary_to = ci_summary.summary_target(summary, ci, env.environ)
    if summary_to is not None:
        markdown = ci_summary.render_markdown(str(manifest), files, built.package_id)
        ci_summary.write_summary(summary_to, markdown)
    if env.json_mode:
        env.emit_json({"files": [str(f) for f in files], "package_id": built.package_id})
        return
    for path in files:
        env.say(f"wrote {path}")


@app.command()
def push(
    manifest: ManifestArgument,
    keep_failed: Annotated[
        bool,
        typer.Option(
            "--keep-failed", help="Keep a failed deployment for debugging (traffic still restored)."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Deploy although the target's pre-flight check refuses (e.g. SQL Server's Python "
            "libraries differ from the ones the model was pickled with); warns instead.",
        ),
    ] = False,
    lock_timeout: LockTimeoutOption = 600.0,
    ci: CiOption = False,
    summary: SummaryOption = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Leave a staged rollout (rollout.steps) to a background process.")
    ] = False,
    json_lines: Annotated[
        bool, typer.Option("--json-lines", help="A staged rollout's looks as JSON lines on stdout.")
    ] = False,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Package, deploy, smoke-test and shift traffic; roll back on any failure."""
    from tdsp_deploy.ci_summary import PushRecorder, summary_target
    from tdsp_deploy.pipeline import push as run_push

    env = _env(json_out, debug)
    with PushRecorder(summary_target(summary, ci, env.environ), str(manifest), env.redact) as recorder:
        loaded = _load(manifest, env)
        with env.progress() as progress:
            backend = _backend(loaded, progress)
            result = run_push(
                loaded,
                backend,
                progress=progress,
                keep_failed=keep_failed,
                lock_timeout=lock_timeout,
                force=force,
                detach=detach,
                on_rollout_event=_rollout_events(env, json_lines),
            )
        recorder.done(result.to_json())
    if env.json_mode:
        env.emit_json(result.to_json())
        return
    from tdsp_deploy import render_text

    sample = loaded.manifest.smoke_test.request if loaded.manifest.smoke_test else None
    render_text.push_summary(env, result, manifest, sample)


@app.command()
def status(
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
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> int:
    """Show slots, health, versions, traffic and the scoring URI. Exit 4 when a slot with
    traffic is not healthy, 3 when the endpoint does not exist."""
    from tdsp_deploy import status_view

    env = _env(json_out, debug)
    if all_endpoints == (manifest is not None):
        raise UsageError("give a manifest or --all (not both)", hint="e.g. tdsp-deploy status deploy.yaml")
    if all_endpoints:
        backends = status_view.local_backends()
    else:
        assert manifest is not None
        loaded = _load(manifest, env)
        backends = [_backend(loaded)]
        current = _existing(backends[0].status(), manifest)
        if not watch:
            if env.json_mode:
                env.emit_json(current.to_json())
            else:
                from tdsp_deploy import render_text

                render_text.status_table(env, current)
                for line in status_view.restart_lines(current):
                    env.say(line)
            return _health_exit_code(env, current)
    watchers = [status_view.EndpointWatcher(backend) for backend in backends]

    def take() -> list[status_view.EndpointSnapshot]:
        return [watcher.snapshot() for watcher in watchers]

    def health(snapshots: list[status_view.EndpointSnapshot]) -> int:
        return max([0, *(_health_exit_code(env, s.status) for s in snapshots)])

    if watch:
        return status_view.watch(env, take, interval=interval, count=count, health=health)
    snapshots = take()
    if env.json_mode:
        env.emit_json({"endpoints": [s.to_json() for s in snapshots]})
    elif snapshots:
        env.say(status_view.headline(snapshots))
        env.console().print(status_view.table(env, snapshots))
    else:
        env.say("no endpoint is deployed on the local target")
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


@app.command()
def traffic(
    manifest: ManifestArgument,
    assignments: Annotated[
        list[str] | None,
        typer.Argument(help="Live split, e.g. blue=90 green=10 (unnamed slots get 0).", show_default=False),
    ] = None,
    mirror: Annotated[
        list[str] | None,
        typer.Option("--mirror", help="Copy a share of live traffic, e.g. green=10 (0 stops)."),
    ] = None,
    lock_timeout: LockTimeoutOption = 600.0,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show or set the traffic split and the mirrored share; every change is kept for rollback."""
    from tdsp_deploy.pipeline import change_traffic, current_split
    from tdsp_deploy.traffic import TrafficSplit, parse_assignments, validate

    env, _, backend, current = _deployed(manifest, json_out, debug)
    split = current_split(current)
    if assignments or mirror is not None:
        live = parse_assignments(assignments, option="traffic") if assignments else split.live
        mirrored = parse_assignments(mirror, option="--mirror") if mirror is not None else split.mirror
        split = TrafficSplit(live, {name: weight for name, weight in mirrored.items() if weight})
        _check_capabilities(backend, split)
        validate(split, [s.name for s in current.slots])
        with backend.lock(timeout=lock_timeout):
            change_traffic(backend, current, split, "traffic")
        split = current_split(backend.status())
    _show_split(env, split, changed=bool(assignments or mirror is not None))


@app.command()
def rollback(
    manifest: ManifestArgument,
    lock_timeout: LockTimeoutOption = 600.0,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Return traffic to the split it had before the last change."""
    from tdsp_deploy.pipeline import change_traffic, current_split
    from tdsp_deploy.traffic import TrafficHistory, validate

    env, _, backend, current = _deployed(manifest, json_out, debug)
    previous = TrafficHistory(backend.kind, current.name).previous()
    if previous is None:
        raise UsageError(
            f"endpoint '{current.name}' has no earlier traffic split to return to",
            hint="set one with `tdsp-deploy traffic MANIFEST blue=100`",
        )
    try:
        validate(previous, [s.name for s in current.slots])
    except UsageError as exc:
        raise UsageError(f"cannot return to {previous.describe()}: {exc.message}", hint=exc.hint) from None
    with backend.lock(timeout=lock_timeout):
        change_traffic(backend, current, previous, "rollback")
    _show_split(env, current_split(backend.status()), changed=True)


def _deployed(
    manifest: Path, json_out: bool, debug: bool
) -> tuple[Environment, LoadedManifest, Backend, EndpointStatus]:
    """What a command on a deployed endpoint starts from; EndpointNotFound when there is none."""
    env = _env(json_out, debug)
    loaded = _load(manifest, env)
    backend = _backend(loaded)
    return env, loaded, backend, _existing(backend.status(), manifest)


def _existing(current: EndpointStatus, manifest: Path) -> EndpointStatus:
    if not current.exists:
        raise EndpointNotFound(
            f"endpoint '{current.name}' is not deployed on the {current.kind} target",
            hint=f"deploy it with `tdsp-deploy push {manifest}`",
        )
    return current


def _check_capabilities(backend: Backend, split: Any) -> None:
    if sum(1 for weight in split.live.values() if weight) > 1 and not backend.capabilities.weighted_traffic:
        raise UsageError(
            f"the {backend.kind} target cannot split live traffic", hint="give one deployment 100"
        )
    if split.mirror and not backend.capabilities.mirror:
        raise UsageError(f"the {backend.kind} target cannot mirror traffic", hint="leave out --mirror")


def _show_split(env: Environment, split: Any, *, changed: bool) -> None:
    if env.json_mode:
        env.emit_json(split.to_json())
    else:
        env.say(("traffic now: " if changed else "traffic: ") + split.describe())


@app.command()
def invoke(
    manifest: ManifestArgument,
    request: Annotated[Path, typer.Option("--request", "-r", help="Request body file ('-' for stdin).")],
    deployment: DeploymentOption = None,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Send one request to the endpoint and print the answer."""
    from tdsp_deploy.errors import BackendError

    env = _env(json_out, debug)
    loaded = _load(manifest, env)
    body = _read_request(request)
    result = _backend(loaded).invoke(body, slot=deployment)
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
    if env.json_mode:
        env.emit_json(
            {
                "response": response,
                "status": result.status,
                "deployment": result.deployment,
                "elapsed_ms": round(result.elapsed_ms, 3),
            }
        )
        return
    env.say(f"HTTP {result.status} from {result.deployment or '?'} in {result.elapsed_ms:.1f} ms")
    env.write_data(json.dumps(response, indent=2) if not isinstance(response, str) else response)


def _read_request(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the request file {path}: {exc.strerror}") from exc


@app.command("test")
def test_command(
    manifest: ManifestArgument,
    deployment: DeploymentOption = None,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Re-run the manifest's smoke test (answers + latency) against what is deployed."""
    from tdsp_deploy.pipeline import test_deployment

    env = _env(json_out, debug)
    loaded = _load(manifest, env)
    with env.progress() as progress:
        report = test_deployment(loaded, _backend(loaded, progress), deployment=deployment, progress=progress)
    if env.json_mode:
        env.emit_json(report.to_json())
        return
    from tdsp_deploy import render_text

    render_text.smoke_table(env, report)


@app.command()
def logs(
    manifest: ManifestArgument,
    deployment: DeploymentOption = None,
    tail: Annotated[int | None, typer.Option("--tail", "--lines", help="Only the last N lines.")] = 200,
    failed: Annotated[
        bool, typer.Option("--failed", help="The log of the latest failed (rolled back) deployment.")
    ] = False,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show a deployment's server log (default: the one with the most traffic)."""
    env = _env(json_out, debug)
    loaded = _load(manifest, env)
    backend = _backend(loaded)
    if failed:
        slot = deployment or ""  # "": the latest failure, whichever deployment it was
        text = backend.failed_logs(slot, tail=tail)
    else:
        slot = deployment or _default_slot(backend.status())
        text = backend.logs(slot, tail=tail)
    if env.json_mode:
        env.emit_json({"deployment": slot, "lines": text.splitlines()})
    else:
        env.write_data(text)


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


@app.command()
def credentials(
    manifest: ManifestArgument,
    regenerate: Annotated[
        bool, typer.Option("--regenerate", help="Replace both keys; the old ones are refused from then on.")
    ] = False,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Print the endpoint's keys (the one command that shows a secret, because you asked)."""
    env = _env(json_out, debug)
    loaded = _load(manifest, env)
    backend = _backend(loaded)
    if regenerate:
        with backend.lock():
            backend.regenerate_keys()
    keys = backend.credentials()
    if env.json_mode:
        env.emit_json({"primary_key": keys["primary_key"], "secondary_key": keys["secondary_key"]})
    else:
        env.write_data(f"primary_key: {keys['primary_key']}\nsecondary_key: {keys['secondary_key']}")


@app.command()
def delete(
    manifest: ManifestArgument,
    deployment: DeploymentOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    lock_timeout: LockTimeoutOption = 600.0,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Stop and remove the endpoint (or one deployment with --deployment) and its state."""
    env = _env(json_out, debug)
    loaded = _load(manifest, env)
    backend = _backend(loaded)
    what = (
        f"deployment '{deployment}' of endpoint '{loaded.manifest.name}'"
        if deployment
        else (f"endpoint '{loaded.manifest.name}' and every deployment in it")
    )
    if not backend.status().exists:
        if env.json_mode:
            env.emit_json({"deleted": False, "endpoint": loaded.manifest.name, "deployment": deployment})
        else:
            env.say(f"endpoint '{loaded.manifest.name}' does not exist; nothing to delete")
        return
    if not yes:
        if not env.interactive:
            raise UsageError(f"refusing to delete {what} without confirmation", hint="pass --yes")
        if not typer.confirm(f"Delete {what}?", err=True):
            raise typer.Exit(int(ExitCode.INTERRUPTED))
    with backend.lock(timeout=lock_timeout):
        backend.delete(deployment)
    if env.json_mode:
        env.emit_json({"deleted": True, "endpoint": loaded.manifest.name, "deployment": deployment})
    else:
        env.say(f"deleted {what}")


def _register_ab() -> None:
    from tdsp_deploy.cli_ab import ab_app

    app.add_typer(ab_app, name="ab")


_register_ab()


def _rollout_events(env: Environment, json_lines: bool) -> Any:
    """A staged rollout's looks: JSON lines when asked, else (None) the push's progress display."""
    from tdsp_deploy.cli_rollout import event_printer

    return event_printer(env, json_lines) if json_lines else None


def _register_rollout() -> None:
    from tdsp_deploy.cli_rollout import register

    register(app)


_register_rollout()


def _register_run() -> None:
    from tdsp_deploy.cli_run import register

    register(app)


_register_run()


# -- entry points ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None, env: Environment | None = None) -> int:
    """Run the CLI; return the exit code."""
    env = env or Environment()
    args = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that even a usage error answers in JSON when asked to.
    env.json_mode = "--json" in args
    env.debug = "--debug" in args
    token = _ENV.set(env)
    previous_sigterm = _sigterm_interrupts()
    held: dict[int, Any] = {}
    try:
        from tdsp_deploy.cli_build import click_command

        command = click_command(app, args, "tdsp-deploy")
        with _streams(env):
            result = command.main(args=args, prog_name="tdsp-deploy", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        held = _hold_interrupts()
        return _render_error(env, _interrupted())
    except typer.TyperException as exc:  # the command line itself is wrong
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tdsp-deploy`: help was the answer
            env.write_data(exc.format_message())
            return 0
        error = UsageError(
            exc.format_message(), hint="see `tdsp-deploy --help` or `tdsp-deploy COMMAND --help`"
        )
        return _render_error(env, error)
    except TdspError as exc:
        return _render_error(env, exc)
    except KeyboardInterrupt:
        held = _hold_interrupts()
        return _render_error(env, _interrupted())
    except Exception as exc:  # the last line of defence: no traceback unless asked
        if env.debug:
            env.write_error_text(traceback.format_exc())
        error = TdspError(
            f"unexpected error: {type(exc).__name__}: {exc}",
            hint="rerun with --debug for the traceback, and report it if it looks like a bug",
        )
        return _render_error(env, error)
    finally:
        _ENV.reset(token)
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _sigterm_interrupts() -> Any:
    """SIGTERM (a CI job cancelled, `kill`) gets the same care as Ctrl-C: a push in progress
    rolls back and the command exits 130. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _hold_interrupts() -> dict[int, Any]:
    """While an interrupted command says so and exits 130, further Ctrl-C or SIGTERM (the
    second of two Ctrl-C, a CI cancellation's SIGTERM after its SIGINT) are ignored: one landing
    there used to escape as a KeyboardInterrupt and end the process by SIGINT instead of 130.
    Returns the handlers to put back (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}


def _streams(env: Environment) -> contextlib.AbstractContextManager[object]:
    """Help and parser messages are printed by typer to sys.stdout/stderr: send them to the
    environment's streams (a no-op for the real console)."""
    stack = contextlib.ExitStack()
    if env.stdout is not sys.stdout:
        stack.enter_context(contextlib.redirect_stdout(env.stdout))
    if env.stderr is not sys.stderr:
        stack.enter_context(contextlib.redirect_stderr(env.stderr))
    return stack


def _interrupted() -> TdspError:
    from tdsp_deploy.errors import Interrupted

    return Interrupted("interrupted")


def _render_error(env: Environment, error: TdspError) -> int:
    if env.debug and error.__cause__ is not None:
        env.write_error_text("".join(traceback.format_exception(error)))
    if env.json_mode:
        env.emit_json(error.to_json())
    else:
        from tdsp_deploy import render_text

        render_text.error(env, error)
    return int(error.exit_code)


def run() -> None:
    """The console script."""
    try:
        code = main()
    except KeyboardInterrupt:  # a Ctrl-C after main() put its handlers back, before the exit
        code = int(ExitCode.INTERRUPTED)
    sys.exit(code)
