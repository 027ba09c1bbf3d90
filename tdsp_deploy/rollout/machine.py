"""The staged rollout's state machine: set a step's traffic, watch it bake, then move on, roll
back, or stop for want of evidence.

    running --(step passes)--> running (next step) --(last step, 100%)--> promoted
    running --(a guardrail breached)--> rolled_back    traffic back to the split before the
                                                       rollout; exit 9
    running --(max_bake without min_requests)--> stopped   split left as it is; exit 8
    running --(rollout pause)--> paused --(rollout resume)--> running
    running|paused --(rollout abort)--> aborted        traffic back to the split before
    running|paused --(rollout promote)--> promoted     the new deployment takes 100%

The state is written after every look, so a walker killed at any point leaves the split of
the step it was in serving and a state that ``rollout resume`` continues from (that step
starts its bake and its evidence again: evidence gathered by a dead walker is not trusted).
The caller holds the endpoint lock: one rollout per endpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from tdsp_deploy.backends.base import Backend
from tdsp_deploy.errors import ExitCode, TdspError
from tdsp_deploy.rollout import guardrails as judge
from tdsp_deploy.rollout.sources import ArmWindow, MetricSource
from tdsp_deploy.rollout.state import (
    ABORTED,
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    STOPPED,
    RolloutState,
    RolloutStore,
)
from tdsp_deploy.traffic import TrafficHistory, TrafficSplit

Event = dict[str, Any]
MIN_MAX_BAKE_S = 600.0


class RolledBack(TdspError, exit_code=ExitCode.ROLLED_BACK, kind="rolled_back"): ...


class NotEnoughEvidence(TdspError, exit_code=ExitCode.AB_INCONCLUSIVE, kind="not_enough_evidence"): ...


def max_bake(state: RolloutState, step: dict[str, Any]) -> float:
    configured = state.guardrails.get("max_bake")
    if configured is not None:
        return max(float(configured), float(step["bake"] or 0))
    return max(3 * float(step["bake"] or 0), MIN_MAX_BAKE_S)


@dataclasses.dataclass
class Walker:
    """Walks one rollout to its end (or to a pause). ``clock`` and ``sleep`` are seams for
    the tests; ``on_event`` hears every look and every decision."""

    backend: Backend
    store: RolloutStore
    source: MetricSource
    on_event: Callable[[Event], None] = dataclasses.field(default=lambda event: None, kw_only=True)
    clock: Callable[[], float] = dataclasses.field(default=time.time, kw_only=True)
    sleep: Callable[[float], None] = dataclasses.field(default=time.sleep, kw_only=True)

    def run(self, state: RolloutState) -> RolloutState:
        state.status = RUNNING
        state.walker = os.getpid()
        while not state.finished:
            step = state.steps[state.step]
            self._apply(state, state.split_at(state.step), "rollout")
            if int(step["traffic"]) >= 100:
                return self._finish(state, PROMOTED, {"reason": "every step passed"})
            if not self._bake(state, step):
                return state
        return state

    # -- one step ------------------------------------------------------------------------
    def _bake(self, state: RolloutState, step: dict[str, Any]) -> bool:
        """Watch one step until it passes (True) or the rollout ends or pauses (False)."""
        state.step_started_at = self.clock()
        cursor = self.source.begin()
        self.store.write(state)
        self._event(
            "step", state, message=f"step {state.step + 1}/{len(state.steps)}: {self._describe(state)}"
        )
        interval = float(state.guardrails.get("check_every", 10.0))
        bake, longest = float(step["bake"] or 0), max_bake(state, step)
        minimum = int(state.guardrails.get("min_requests", 200))
        while True:
            self.sleep(interval)
            request = self.store.take_request()
            if request is not None:
                return self._act_on(state, request)
            windows = self.source.read(cursor)
            canary = windows.get(state.deployment, ArmWindow())
            control = windows.get(state.control) if state.control else None
            checks = judge.evaluate(state.guardrails, canary, control)
            elapsed = self.clock() - state.step_started_at
            look = self._record(state, elapsed, canary, control, checks)
            self._event("check", state, message=describe_look(look, len(state.steps)), **look)
            breached = [c for c in checks if c.breached]
            if breached:
                self._apply(state, state.split_at(-1), "rollback")
                first = breached[0]
                self._finish(
                    state, ROLLED_BACK, {"reason": "guardrail breached", "guardrail": first.to_json()}
                )
                raise RolledBack(
                    f"guardrail {first.name} breached at step {state.step + 1} ({state.current_traffic}%):"
                    f" {_value(first.name, first.value)} against a limit of {_value(first.name, first.limit)}"
                    f" ({first.detail}); traffic is back to {TrafficSplit(state.split_at(-1)).describe()}",
                    hint=f"see `tdsp-deploy rollout status` and the logs of '{state.deployment}'",
                    details={"guardrail": first.to_json(), "step": state.step + 1},
                )
            if elapsed >= bake and canary.requests >= minimum:
                state.steps_passed.append({"step": state.step + 1, "traffic": state.current_traffic, **look})
                self._event("passed", state, message=f"step {state.step + 1} passed", **look)
                state.step += 1
                state.step_started_at = None
                self.store.write(state)
                return True
            if elapsed >= longest:
                reason = (
                    f"step {state.step + 1} ({state.current_traffic}%) saw {canary.requests} requests to"
                    f" '{state.deployment}' in {elapsed:.0f} s; it needs {minimum} to pass"
                )
                self._finish(state, STOPPED, {"reason": "not enough evidence", "detail": reason})
                raise NotEnoughEvidence(
                    reason + "; the rollout stopped and the split stays as it is",
                    hint="send more traffic and run `tdsp-deploy rollout resume`, lower"
                    " rollout.guardrails.min_requests, or `tdsp-deploy rollout abort`",
                    details={"step": state.step + 1, "requests": canary.requests, "min_requests": minimum},
                )
            self.store.write(state)

    def _act_on(self, state: RolloutState, request: str) -> bool:
        state.request = request
        if request == "pause":
            state.status = PAUSED
            state.walker = None
            self.store.write(state)
            self._event("paused", state, message=f"paused at step {state.step + 1}; the split stays")
            return False
        if request == "abort":
            self._apply(state, state.split_at(-1), "rollback")
            self._finish(state, ABORTED, {"reason": "aborted"})
            return False
        self._apply(state, {state.deployment: 100}, "rollout")
        self._finish(state, PROMOTED, {"reason": "promoted by request"})
        return False

    # -- helpers ---------------------------------------------------------------------------
    def _apply(self, state: RolloutState, live: dict[str, int], reason: str) -> None:
        current = self.backend.status()
        wanted = TrafficSplit(live, {})
        now = TrafficSplit(dict(current.traffic), dict(current.mirror))
        if wanted.normalized(current.traffic) == now.normalized(current.traffic):
            return
        history = TrafficHistory(self.backend.kind, state.endpoint)
        if not history.entries():
            history.record(now, "observed")
        self.backend.set_traffic(live, {})
        history.record(wanted, reason)
        self._event("traffic", state, message=f"traffic {wanted.describe()}", traffic=live)

    def _finish(self, state: RolloutState, status: str, decision: dict[str, Any]) -> RolloutState:
        state.status = status
        state.walker = None
        state.decision = {**decision, "at": self.clock(), "step": state.step + 1}
        self.store.write(state)
        self._event("finished", state, message=f"rollout {status.replace('_', ' ')}", decision=state.decision)
        return state

    def _record(
        self,
        state: RolloutState,
        elapsed: float,
        canary: ArmWindow,
        control: ArmWindow | None,
        checks: list[judge.GuardrailCheck],
    ) -> dict[str, Any]:
        look = {
            "t": self.clock(),
            "step": state.step + 1,
            "traffic": state.current_traffic,
            "elapsed": round(elapsed, 3),
            "new": _arm(canary),
            "control": _arm(control) if control is not None else None,
            "guardrails": [c.to_json() for c in checks],
        }
        state.checks.append(look)
        return look

    def _event(self, kind: str, state: RolloutState, **fields: Any) -> None:
        self.on_event({"event": kind, "endpoint": state.endpoint, "status": state.status, **fields})

    def _describe(self, state: RolloutState) -> str:
        return TrafficSplit(state.split_at(state.step)).describe()


def describe_look(look: dict[str, Any], steps: int) -> str:
    """One line per look: the step, both deployments' numbers, and the guardrails' state."""

    def arm(name: str, doc: dict[str, Any] | None) -> str:
        if doc is None:
            return ""
        p95 = "-" if doc["p95_ms"] is None else f"{doc['p95_ms']:.1f} ms"
        return f"{name} {doc['requests']} req, {doc['errors']} errors, p95 {p95}"

    parts = [arm("new", look["new"]), arm("control", look["control"])]
    breached = [g["name"] for g in look["guardrails"] if g["breached"]]
    verdict = "BREACHED " + ", ".join(breached) if breached else "ok"
    return (
        f"step {look['step']}/{steps} ({look['traffic']}%) {look['elapsed']:.0f}s: "
        + "; ".join(p for p in parts if p)
        + f" -> {verdict}"
    )


def _arm(window: ArmWindow) -> dict[str, Any]:
    if window.minutes is not None:  # per-minute quantiles only: their mean
        p95, p99 = (_mean(window.minutes.get(q, [])) for q in ("p95", "p99"))
    else:
        counts = window.latency_counts()
        p95, p99 = judge.quantile_ms(counts, 0.95), judge.quantile_ms(counts, 0.99)
    return {
        "requests": window.requests,
        "errors": window.errors,
        "error_rate": window.errors / window.requests if window.requests else None,
        "p95_ms": p95,
        "p99_ms": p99,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name.endswith("_ms"):
        return f"{value:.1f} ms"
    return f"{value:.2%}"
