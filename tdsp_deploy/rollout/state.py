"""A staged rollout's state, persisted beside the endpoint's (``rollouts/<kind>/<name>.json``
under the state home), so that it outlives the command that walks it.

Written atomically (a temporary file renamed over the old one): a CLI killed at any moment
leaves either the previous state or the next, never half of one. Commands that only ask the
walker to do something (``rollout pause``, ``abort``, ``promote``) leave a request file
beside it; the walker takes it at its next check. A walker that died leaves ``running`` with a ``walker`` pid
that is no longer alive, which ``status`` shows and ``rollout resume`` takes over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tdsp_deploy import paths
from tdsp_deploy.errors import BackendError, UsageError

# What a rollout can be doing, and where it can end.
RUNNING, PAUSED = "running", "paused"
PROMOTED, ROLLED_BACK, ABORTED, STOPPED = "promoted", "rolled_back", "aborted", "stopped"
FINISHED = (PROMOTED, ROLLED_BACK, ABORTED, STOPPED)
REQUESTS = ("pause", "abort", "promote")
MAX_CHECKS_KEPT = 5000  # the report's time series; older checks are thinned out


@dataclasses.dataclass
class RolloutState:
    endpoint: str
    kind: str
    deployment: str  # the new deployment
    control: str | None  # the deployment it replaces (None on a first push)
    steps: list[dict[str, Any]]  # [{"traffic": 5, "bake": 600.0}, ..., {"traffic": 100, "bake": None}]
    guardrails: dict[str, Any]
    before: dict[str, Any]  # the split before the rollout: {"traffic": {...}, "mirror": {...}}
    status: str = RUNNING
    step: int = 0  # index into steps
    step_started_at: float | None = None
    started_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)
    request: str | None = None  # the last request acted on
    walker: int | None = None  # pid of the process walking it
    decision: dict[str, Any] | None = None  # how it ended, with the evidence
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    steps_passed: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def current_traffic(self) -> int:
        return int(self.steps[self.step]["traffic"])

    def split_at(self, index: int) -> dict[str, int]:
        """The live split of step ``index`` (-1: the split before the rollout)."""
        if index < 0:
            return dict(self.before["traffic"])
        share = int(self.steps[index]["traffic"])
        if share >= 100 or self.control is None:
            return {self.deployment: 100}
        return {self.deployment: share, self.control: 100 - share}

    def walker_alive(self) -> bool:
        if self.walker is None:
            return False
        try:
            os.kill(self.walker, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, Any]:
        """What ``rollout status`` shows: the state without the time series."""
        doc = {k: v for k, v in self.to_json().items() if k != "checks"}
        doc["walker_alive"] = self.walker_alive() if not self.finished else False
        doc["last_check"] = self.checks[-1] if self.checks else None
        doc["traffic_now"] = self.split_at(self.step) if self.status in (RUNNING, PAUSED) else None
        return doc


class RolloutStore:
    """The one state file of an endpoint's rollout."""

    def __init__(self, kind: str, endpoint: str, home: Path | None = None):
        self.path = (home or paths.state_home()) / "rollouts" / kind / f"{endpoint}.json"

    def read(self) -> RolloutState | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise BackendError(
                f"the rollout state {self.path} is unreadable: {exc}",
                hint="remove the file to forget the rollout (the traffic split stays as it is)",
            ) from exc
        known = {field.name for field in dataclasses.fields(RolloutState)}
        return RolloutState(**{k: v for k, v in doc.items() if k in known})

    def write(self, state: RolloutState) -> None:
        state.updated_at = time.time()
        if len(state.checks) > MAX_CHECKS_KEPT:
            state.checks = state.checks[::2]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(state.to_json(), handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @property
    def request_path(self) -> Path:
        return self.path.with_suffix(".request")

    def ask(self, request: str) -> RolloutState:
        """Leave a request for the walker (pause, abort, promote) in a file of its own, so
        that the walker's writes of the state never race with it; it acts at its next check."""
        state = self.read()
        if state is None or state.finished:
            raise UsageError(
                f"endpoint '{self.path.stem}' has no rollout in progress",
                hint="start one with `tdsp-deploy push` and rollout.steps in the manifest",
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.request_path.with_suffix(".request.tmp")
        temporary.write_text(request, encoding="utf-8")
        os.replace(temporary, self.request_path)
        return state

    def take_request(self) -> str | None:
        """The request left for the walker, removed as it is taken."""
        try:
            request = self.request_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        self.request_path.unlink(missing_ok=True)
        return request if request in REQUESTS else None
