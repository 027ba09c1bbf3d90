"""A staged rollout's state mirrored into its endpoint's tags, on targets whose endpoints keep
tags (Azure ML), so that another machine (another state home, no local file) sees it.

The tag ``tdsp-rollout`` holds compact JSON: the plan's id (a digest of the new deployment,
the control and the steps, telling one rollout from the next), the deployments, the steps'
traffic, the step and the status. It is written with an endpoint update only when one of
those changes, not at every look: each update is an operation Azure runs on the endpoint.
Azure keeps at most 256 characters in a tag value, which the steps' list is dropped to stay
under (the step and status still fit).

The local file stays the rollout's whole state (its looks, its evidence); the tag is what a
second machine can know: where the rollout is and how it ended.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tdsp_deploy.backends.base import ProgressEvent
from tdsp_deploy.errors import BackendError, TdspError
from tdsp_deploy.rollout.state import FINISHED, RUNNING, RolloutState, RolloutStore

TAG = "tdsp-rollout"
MAX_TAG_VALUE = 256  # Azure's limit on a tag value


def plan_id(state: RolloutState) -> str:
    plan = [state.deployment, state.control, [int(s["traffic"]) for s in state.steps]]
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:12]


def encode(state: RolloutState) -> str:
    doc: dict[str, Any] = {
        "plan": plan_id(state),
        "new": state.deployment,
        "control": state.control,
        "steps": [int(s["traffic"]) for s in state.steps],
        "step": state.step,
        "status": state.status,
    }
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_TAG_VALUE:
        del doc["steps"]
        doc["n"] = len(state.steps)
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return text


def decode(text: str, kind: str, endpoint: str) -> RolloutState:
    """The rollout a tag describes, as far as a tag can: no looks, no guardrails."""
    try:
        doc = json.loads(text)
        steps = doc["steps"] if "steps" in doc else [0] * int(doc["n"])
        status = str(doc["status"])
        if status not in (RUNNING, "paused", *FINISHED):
            raise ValueError(f"unknown status {status!r}")
        state = RolloutState(
            endpoint=endpoint,
            kind=kind,
            deployment=str(doc["new"]),
            control=doc["control"],
            steps=[{"traffic": int(t), "bake": None} for t in steps],
            guardrails={},
            before={"traffic": {doc["control"]: 100} if doc["control"] else {}, "mirror": {}},
            status=status,
            step=int(doc["step"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(
            f"the endpoint's {TAG} tag is unreadable ({exc})",
            hint=f"remove the {TAG} tag from the endpoint to forget that rollout",
        ) from exc
    state.decision = {"origin": TAG, "reason": f"as the endpoint's {TAG} tag says (plan {doc['plan']})"}
    return state


class TaggedStore(RolloutStore):
    """The local state file, and the endpoint's tag written whenever the step, the status or
    the plan changes. ``backend`` has ``endpoint_tags()`` and ``write_endpoint_tags(tags)``."""

    def __init__(self, backend: Any, home: Path | None = None):
        super().__init__(backend.kind, backend.manifest.name, home)
        self.backend = backend
        self.kind = backend.kind
        self.endpoint = backend.manifest.name
        self._tagged: str | None = None
        self.tag_error: TdspError | None = None  # the last tag write Azure refused, if any

    def write(self, state: RolloutState) -> None:
        super().write(state)
        tag = encode(state)
        if tag == self._tagged:
            return
        if self._tagged is None and self.backend.endpoint_tags().get(TAG) == tag:
            self._tagged = tag  # a resumed walker: the endpoint already says so
            return
        try:
            self.backend.write_endpoint_tags({TAG: tag})
        except TdspError as exc:
            # The tag mirrors the state for other machines; the rollout itself (its traffic,
            # its local state) does not stop for it. Said, and tried again at the next look.
            self.tag_error = exc
            self.backend.progress(
                ProgressEvent(
                    step="rollout",
                    message=f"warning: the endpoint's {TAG} tag was not updated ({exc.message});"
                    " trying again at the next look",
                )
            )
            return
        self.tag_error = None
        self._tagged = tag

    def read_remote(self) -> RolloutState | None:
        """The rollout the endpoint's tag describes (None without the tag)."""
        text = self.backend.endpoint_tags().get(TAG)
        return decode(text, self.kind, self.endpoint) if text else None
