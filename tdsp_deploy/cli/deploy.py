"""Commands that build and deploy: package, render, push."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tdsp_deploy.cli.context import Command
from tdsp_deploy.cli.options import (
    CiOption,
    LockTimeoutOption,
    ManifestArgument,
    SummaryOption,
    with_context,
)


@with_context
def package(
    ctx: Command,
    manifest: ManifestArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the archive.")] = Path("dist"),
) -> None:
    """Build the deterministic package (archive + sha256 lock) that a push deploys."""
    from tdsp_deploy.packaging import build_package

    loaded = ctx.checked()
    with ctx.env.progress() as progress:
        built = build_package(loaded.manifest, output, progress=progress)
    state = "unchanged" if built.reused else "built"
    ctx.answer(
        {
            "path": str(built.path),
            "package_id": built.package_id,
            "model_version": built.lock.model_version,
            "files": len(built.lock.files),
            "bytes": built.path.stat().st_size,
            "reused": built.reused,
        },
        f"{state} {built.path} (package {built.package_id[:12]}, model version {built.lock.model_version})",
    )


@with_context
def render(
    ctx: Command,
    manifest: ManifestArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into.", show_default=False)],
    ci: CiOption = False,
    summary: SummaryOption = None,
) -> None:
    """Write, offline, exactly what a push would send or start: reviewable in a pull request."""
    from tdsp_deploy import ci_summary, paths
    from tdsp_deploy.packaging import build_package
    from tdsp_deploy.secrets import redact_files

    loaded = ctx.checked()
    with ctx.env.progress() as progress:
        built = build_package(loaded.manifest, paths.package_store(), progress=progress)
        backend = ctx.backend(progress)
        output.mkdir(parents=True, exist_ok=True)
        lock_path = output / "package.json"
        lock_path.write_text(json.dumps(built.lock.to_json(), indent=2, sort_keys=True) + "\n")
        files = [lock_path, *backend.render(built, output)]
        redact_files(files, loaded.secrets)
    summary_to = ci_summary.summary_target(summary, ci, ctx.env.environ)
    if summary_to is not None:
        markdown = ci_summary.render_markdown(str(manifest), files, built.package_id)
        ci_summary.write_summary(summary_to, markdown)
    ctx.answer(
        {"files": [str(f) for f in files], "package_id": built.package_id},
        [f"wrote {path}" for path in files],
    )


@with_context
def push(
    ctx: Command,
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
) -> None:
    """Package, deploy, smoke-test and shift traffic; roll back on any failure."""
    from tdsp_deploy.ci_summary import PushRecorder, summary_target
    from tdsp_deploy.cli.rollout_events import event_printer
    from tdsp_deploy.pipeline import push as run_push

    env = ctx.env
    with PushRecorder(summary_target(summary, ci, env.environ), str(manifest), env.redact) as recorder:
        loaded = ctx.loaded
        with env.progress() as progress:
            result = run_push(
                loaded,
                ctx.backend(progress),
                progress=progress,
                keep_failed=keep_failed,
                lock_timeout=lock_timeout,
                force=force,
                detach=detach,
                # a staged rollout's looks: JSON lines when asked, else the progress display's
                on_rollout_event=event_printer(env, json_lines) if json_lines else None,
            )
        recorder.done(result.to_json())

    def human() -> None:
        from tdsp_deploy import render_text

        sample = loaded.manifest.smoke_test.request if loaded.manifest.smoke_test else None
        render_text.push_summary(env, result, manifest, sample)

    ctx.answer(result.to_json(), human)
