"""Progress events: how a slow step (packaging, a deployment, a smoke test) tells the user
what it is doing without knowing who listens. The CLI renders them; a backend or the packager
only calls the ``Progress`` callback it was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["Progress", "ProgressEvent", "no_progress"]


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """One thing worth telling the user while a slow step runs."""

    step: str  # "package", "deploy", "health", "smoke", "latency", "traffic", "rollback", ...
    message: str
    elapsed: float | None = None  # seconds spent in this step so far
    timeout: float | None = None  # seconds allowed for it, when bounded
    done: int | None = None  # units completed (requests, bytes, ...)
    total: int | None = None


Progress = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The progress callback for callers that do not want to hear."""
