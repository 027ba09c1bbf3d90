"""Staged rollouts: after the smoke test, traffic moves to the new deployment step by step,
each step baking while its live metrics are judged against the guardrails (always-valid
sequential statistics), and the rollout promotes, rolls back, or stops by itself.

``begin`` is what ``push`` calls (inside the endpoint lock); ``walk`` continues a rollout
(``push``, ``rollout resume``); ``detach`` hands the walk to a background process
(``push --detach``). The state machine is in ``machine``, the persisted state in ``state``,
the metrics per target in ``sources``, the judging in ``guardrails``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.rollout.state import RUNNING, RolloutState, RolloutStore

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend, EndpointStatus
    from tdsp_deploy.manifest import LoadedManifest
    from tdsp_deploy.manifest.model import RolloutSection

Event = dict[str, Any]


def staged(rollout: RolloutSection) -> bool:
    return bool(rollout.staged_steps())


def check_supported(backend: Backend, rollout: RolloutSection) -> None:
    """Refuse, before anything is deployed, a staged rollout the target cannot watch or split."""
    from tdsp_deploy.errors import UsageError
    from tdsp_deploy.rollout.sources import REPORTED_METRICS, unreported

    if not staged(rollout):
        return
    if not backend.capabilities.weighted_traffic or backend.kind not in REPORTED_METRICS:
        raise UsageError(
            f"the {backend.kind} target cannot carry out a staged rollout (rollout.steps):"
            + (
                " it cannot split live traffic"
                if not backend.capabilities.weighted_traffic
                else " it reports no live metrics yet"
            ),
            hint="use rollout.traffic to move the traffic in one step",
        )
    if getattr(backend.target, "request_log", True) is False:  # SQL targets: the log is the source
        raise UsageError(
            "a staged rollout reads the request log, and target.request_log is off",
            hint="set target.request_log: true, or use rollout.traffic to move the traffic in one step",
        )
    missing = unreported(backend.kind, (rollout.guardrails.model_dump() if rollout.guardrails else {}))
    if missing:
        raise UsageError(
            f"the {backend.kind} target cannot report the metric of rollout.guardrails.{', '.join(missing)}",
            hint="remove those guardrails for this target",
        )


def validation_warnings(manifest: Any) -> list[str]:
    """What ``validate`` says about a staged rollout on the manifest's target."""
    rollout = manifest.rollout
    if not staged(rollout):
        return []
    from tdsp_deploy.rollout.sources import REPORTED_METRICS, unreported  # not for the common case

    kind = manifest.target.kind
    if kind not in REPORTED_METRICS:
        return [
            f"rollout.steps: the {kind} target reports no live metrics to a staged rollout yet;"
            " push will refuse it"
        ]
    guardrails = rollout.guardrails.model_dump() if rollout.guardrails else {}
    return [
        f"rollout.guardrails.{name}: the {kind} target cannot report this metric; push will refuse it"
        for name in unreported(kind, guardrails)
    ]


def plan(loaded: LoadedManifest, backend: Backend, deployment: str, before: EndpointStatus) -> RolloutState:
    """A new rollout of ``deployment`` over the endpoint as it was before the push."""
    from tdsp_deploy.manifest.model import RolloutGuardrails

    rollout = loaded.manifest.rollout
    live = before.live_slot()
    control = live.name if live is not None and live.name != deployment else None
    steps = [{"traffic": s.traffic, "bake": s.bake} for s in rollout.staged_steps()]
    if control is None:  # nothing to compare with nor to fall back on: all traffic at once
        steps = [{"traffic": 100, "bake": None}]
    guardrails = (rollout.guardrails or RolloutGuardrails()).model_dump(mode="json")
    return RolloutState(
        endpoint=loaded.manifest.name,
        kind=backend.kind,
        deployment=deployment,
        control=control,
        steps=steps,
        guardrails=guardrails,
        before={"traffic": dict(before.traffic), "mirror": dict(before.mirror)},
    )


def store_for(backend: Backend) -> RolloutStore:
    """The rollout's state file; on a target whose endpoints keep tags (Azure ML), the
    endpoint's ``tdsp-rollout`` tag too, so that another machine sees the rollout."""
    if hasattr(backend, "write_endpoint_tags"):
        from tdsp_deploy.rollout.tags import TaggedStore

        return TaggedStore(backend)
    return RolloutStore(backend.kind, backend.manifest.name)


def refuse_if_in_progress(store: RolloutStore) -> None:
    from tdsp_deploy.errors import UsageError

    current = store.read()
    if current is not None and not current.finished:
        raise UsageError(
            f"endpoint '{current.endpoint}' has a rollout in progress ({current.status}, step"
            f" {current.step + 1} of {len(current.steps)})",
            hint="finish it first: `tdsp-deploy rollout resume|promote|abort MANIFEST`",
        )


def walk(backend: Backend, state: RolloutState, *, on_event: Callable[[Event], None]) -> RolloutState:
    """Walk the rollout to its end or a pause; the caller holds the endpoint lock."""
    from tdsp_deploy.rollout.machine import Walker
    from tdsp_deploy.rollout.sources import metric_source

    return Walker(backend, store_for(backend), metric_source(backend), on_event=on_event).run(state)


def detach(manifest_file: Path, store: RolloutStore) -> int:
    """Start ``rollout resume`` in a process of its own session (it outlives this one and
    the terminal), its events as JSON lines in a log beside the state; return its pid."""
    log = store.path.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tdsp_deploy", "rollout", "resume", str(manifest_file), "--json-lines"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


__all__ = ["RUNNING", "RolloutState", "RolloutStore", "detach", "plan", "staged", "walk"]
