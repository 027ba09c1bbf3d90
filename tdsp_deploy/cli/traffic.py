"""Commands on the traffic split: traffic (show or set), rollback (to the split before)."""

from __future__ import annotations

from typing import Annotated

import typer

from tdsp_deploy.cli.context import Command
from tdsp_deploy.cli.options import LockTimeoutOption, ManifestArgument, with_context
from tdsp_deploy.cli.splits import check_capabilities, show_split
from tdsp_deploy.errors import UsageError


@with_context
def traffic(
    ctx: Command,
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
) -> None:
    """Show or set the traffic split and the mirrored share; every change is kept for rollback."""
    from tdsp_deploy.pipeline import change_traffic, current_split
    from tdsp_deploy.traffic import TrafficSplit, parse_assignments, validate

    backend, current = ctx.deployed()
    split = current_split(current)
    if assignments or mirror is not None:
        live = parse_assignments(assignments, option="traffic") if assignments else split.live
        mirrored = parse_assignments(mirror, option="--mirror") if mirror is not None else split.mirror
        split = TrafficSplit(live, {name: weight for name, weight in mirrored.items() if weight})
        check_capabilities(backend, split)
        validate(split, [s.name for s in current.slots])
        with backend.lock(timeout=lock_timeout):
            change_traffic(backend, current, split, "traffic")
        split = current_split(backend.status())
    show_split(ctx, split, changed=bool(assignments or mirror is not None))


@with_context
def rollback(
    ctx: Command,
    manifest: ManifestArgument,
    lock_timeout: LockTimeoutOption = 600.0,
) -> None:
    """Return traffic to the split it had before the last change."""
    from tdsp_deploy.pipeline import change_traffic, current_split
    from tdsp_deploy.traffic import TrafficHistory, validate

    backend, current = ctx.deployed()
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
    show_split(ctx, current_split(backend.status()), changed=True)
