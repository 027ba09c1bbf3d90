"""`tdsp-deploy rollout status|pause|resume|abort|promote MANIFEST`: a staged rollout after
`push` started it.

Cheap to import (the CLI registers it at start-up): everything heavy loads inside the
commands. A rollout whose walker is alive (a `push` still following it, or `push --detach`'s
background process) is asked to pause, abort or promote through its state and acts at its
next look; one whose walker died is acted on here, under the endpoint lock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tdsp_deploy.cli.context import Command
from tdsp_deploy.cli.options import LockTimeoutOption, ManifestArgument, with_context
from tdsp_deploy.cli.rollout_events import event_printer, write_json_line
from tdsp_deploy.errors import UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend
    from tdsp_deploy.rollout.state import RolloutState, RolloutStore

rollout_app = typer.Typer(
    help="Staged rollouts (rollout.steps): status, pause, resume, abort, promote.", no_args_is_help=True
)

JsonLinesOption = Annotated[
    bool, typer.Option("--json-lines", help="Print each look and decision as one JSON line on stdout.")
]


def _deployed(ctx: Command) -> tuple[Backend, RolloutStore]:
    from tdsp_deploy.rollout import store_for

    backend, _ = ctx.deployed()
    return backend, store_for(backend)


def _current(store: RolloutStore) -> RolloutState:
    state = store.read()
    if state is None:
        raise UsageError(
            "this endpoint has no rollout",
            hint="start one with `tdsp-deploy push` and rollout.steps in the manifest",
        )
    return state


def _show(ctx: Command, state: RolloutState, *, json_lines: bool = False) -> None:
    summary = state.summary()
    if json_lines:
        write_json_line(ctx.env, {"event": "result", **summary})
        return

    def human() -> list[str]:
        from tdsp_deploy.rollout.report import status_lines

        return list(status_lines(state))

    ctx.answer(summary, human)


@rollout_app.command()
@with_context
def status(
    ctx: Command,
    manifest: ManifestArgument,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write the rollout's HTML report there.", show_default=False),
    ] = None,
) -> None:
    """Where the rollout is: its step, the last look at the guardrails, and how it ended."""
    _, store = _deployed(ctx)
    remote = store.read_remote() if store.read() is None and hasattr(store, "read_remote") else None
    # a rollout walked from another machine: what the endpoint's tag says (status only; the
    # other commands need the whole state, which stays with the machine that walks it)
    state = remote if remote is not None else _current(store)
    if report is not None:
        from tdsp_deploy.rollout.report import write_report

        write_report(state, report)
        if not ctx.env.json_mode:
            ctx.env.say(f"report written to {report}")
    _show(ctx, state)


@rollout_app.command()
@with_context
def resume(
    ctx: Command,
    manifest: ManifestArgument,
    json_lines: JsonLinesOption = False,
    lock_timeout: LockTimeoutOption = 600.0,
) -> None:
    """Continue a paused rollout, or one whose command was killed, from the step it was in."""
    from tdsp_deploy.rollout import walk

    backend, store = _deployed(ctx)
    with backend.lock(timeout=lock_timeout), ctx.env.progress() as progress:
        state = _current(store)
        if state.finished:
            raise UsageError(
                f"the rollout of '{state.deployment}' has ended ({state.status})", hint="push a new version"
            )
        store.take_request()  # a request left for a walker that is gone is stale
        state = walk(backend, state, on_event=event_printer(ctx.env, json_lines, progress))
    _show(ctx, state, json_lines=json_lines)


def _ask(ctx: Command, request: str, lock_timeout: float) -> None:
    from tdsp_deploy.rollout.machine import Walker

    backend, store = _deployed(ctx)
    state = _current(store)
    if state.finished:
        raise UsageError(f"the rollout of '{state.deployment}' has ended ({state.status})")
    if state.walker_alive():
        store.ask(request)
        state = _wait_for_walker(store, state)
    else:
        with backend.lock(timeout=lock_timeout):
            state = _current(store)
            if not state.finished:
                Walker(backend, store, source=None)._act_on(state, request)  # type: ignore[arg-type]
    _show(ctx, state)


def _wait_for_walker(store: RolloutStore, asked: RolloutState) -> RolloutState:
    """The walker acts at its next look: wait for that (a few looks at most)."""
    deadline = time.monotonic() + 3 * float(asked.guardrails.get("check_every", 10.0)) + 30
    while time.monotonic() < deadline:
        state = _current(store)
        if state.status != asked.status or state.finished:
            return state
        time.sleep(0.2)
    raise UsageError(
        "the rollout's walker has not acted on the request yet",
        hint="it acts at its next look; check with `tdsp-deploy rollout status`",
    )


def _request_command(request: str, help_text: str) -> None:
    """Register `rollout <request>`: the three requests to a rollout share their options."""

    @with_context
    def command(ctx: Command, manifest: ManifestArgument, lock_timeout: LockTimeoutOption = 600.0) -> None:
        _ask(ctx, request, lock_timeout)

    command.__doc__ = help_text
    rollout_app.command(name=request)(command)


_request_command("pause", "Stop moving traffic; the split stays as it is until `rollout resume`.")
_request_command("abort", "End the rollout: traffic back to the split it started from (the control at 100%).")
_request_command("promote", "End the rollout now: the new deployment takes all the traffic.")
