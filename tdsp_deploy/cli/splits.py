"""What the traffic commands and `ab start` share: refusing a split the target cannot carry,
and showing the split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tdsp_deploy.errors import UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend
    from tdsp_deploy.cli.context import Command


def check_capabilities(backend: Backend, split: Any) -> None:
    """UsageError when ``split`` weighs several live deployments, or mirrors, on a target
    that cannot."""
    if sum(1 for weight in split.live.values() if weight) > 1 and not backend.capabilities.weighted_traffic:
        raise UsageError(
            f"the {backend.kind} target cannot split live traffic", hint="give one deployment 100"
        )
    if split.mirror and not backend.capabilities.mirror:
        raise UsageError(f"the {backend.kind} target cannot mirror traffic", hint="leave out --mirror")


def show_split(ctx: Command, split: Any, *, changed: bool) -> None:
    ctx.answer(split.to_json(), ("traffic now: " if changed else "traffic: ") + split.describe())
