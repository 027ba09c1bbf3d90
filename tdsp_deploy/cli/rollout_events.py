"""How a staged rollout's events are shown, by `push` and by `rollout resume`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tdsp_deploy.output import Environment


def event_printer(env: Environment, json_lines: bool, progress: Any = None):  # type: ignore[no-untyped-def]
    """What a walker's events become: JSON lines on stdout, or the progress display's
    (a live line on a terminal, one line per look off one)."""
    from tdsp_deploy.backends.base import ProgressEvent

    def show(event: dict[str, Any]) -> None:
        if json_lines:
            write_json_line(env, event)
        elif progress is not None:
            progress(ProgressEvent(step="rollout", message=str(event.get("message", event["event"]))))

    return show


def write_json_line(env: Environment, document: dict[str, Any]) -> None:
    env.stdout.write(json.dumps(document, default=str, sort_keys=True) + "\n")
    env.stdout.flush()
