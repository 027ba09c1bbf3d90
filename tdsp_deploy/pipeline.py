"""Push and test, step by step, for any backend.

validate -> package -> deploy the slot with 0% traffic -> wait until healthy -> smoke test
pinned to the slot -> traffic per rollout -> verify. Any failure after the slot exists rolls
back: traffic returns to what it was, the failed slot goes (unless keep_failed), the tail of
its log rides on the error, and the error's exit code says which step failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from tdsp_deploy import interrupts, paths
from tdsp_deploy.backends.base import Backend, EndpointStatus, Progress, ProgressEvent, no_progress
from tdsp_deploy.errors import DeploymentFailed, Interrupted, TdspError, UsageError
from tdsp_deploy.manifest import LoadedManifest, check_manifest
from tdsp_deploy.manifest.model import RolloutSection
from tdsp_deploy.packaging import build_package
from tdsp_deploy.smoke import SmokeReport, run_smoke_test
from tdsp_deploy.traffic import TrafficHistory, TrafficSplit

SLOT_PAIR = ("blue", "green")
LOG_TAIL_LINES = 30


@dataclasses.dataclass
class PushResult:
    endpoint: str
    kind: str
    deployment: str
    scoring_uri: str | None
    package_id: str
    model_version: str
    unchanged: bool
    traffic: dict[str, int]
    smoke: SmokeReport | None
    warnings: list[str]
    rollout: dict[str, Any] | None = None  # a staged rollout's state (rollout.steps)

    def to_json(self) -> dict[str, Any]:
        # every field as it is, in declaration order; the smoke report as its own JSON, and no
        # "rollout" key at all unless a staged rollout ran
        doc = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        doc["smoke"] = self.smoke.to_json() if self.smoke else None
        if self.rollout is None:
            del doc["rollout"]
        return doc


def choose_slot(status: EndpointStatus, rollout: RolloutSection) -> str:
    """The manifest's slot, or the one of blue/green that does not take the traffic."""
    if rollout.deployment:
        return rollout.deployment
    live = status.live_slot()
    if live is None:
        return SLOT_PAIR[0]
    return SLOT_PAIR[1] if live.name == SLOT_PAIR[0] else SLOT_PAIR[0]


def planned_traffic(status: EndpointStatus, slot: str, rollout: RolloutSection) -> TrafficSplit | None:
    """The split after the push, or None to leave traffic as it is (``traffic: 0`` stages).

    ``traffic`` percent goes to ``slot`` and the rest to the slot that had the most;
    ``mirror`` percent of live traffic is copied to ``slot``, live traffic unchanged.
    """
    if rollout.mirror > 0:
        return TrafficSplit(dict(status.traffic), {slot: rollout.mirror})
    if rollout.traffic == 0 or rollout.staged_steps():  # staged: the rollout sets each step
        return None
    others = [s for s in status.slots if s.name != slot and s.traffic > 0]
    if rollout.traffic == 100 or not others:
        live = {slot: 100}
    else:
        previous = max(others, key=lambda s: s.traffic)
        live = {slot: rollout.traffic, previous.name: 100 - rollout.traffic}
    # a mirror elsewhere stays; one on a slot that now takes live traffic cannot
    mirror = {name: weight for name, weight in status.mirror.items() if name not in live}
    return TrafficSplit(live, mirror)


def current_split(status: EndpointStatus) -> TrafficSplit:
    return TrafficSplit(dict(status.traffic), dict(status.mirror))


def change_traffic(backend: Backend, status: EndpointStatus, split: TrafficSplit, reason: str) -> None:
    """Set a split and record it in the endpoint's history (the split before it too, the
    first time, so that a rollback can return to it)."""
    history = TrafficHistory(backend.kind, status.name)
    if not history.entries() and status.exists and status.slots:
        history.record(current_split(status), "observed")
    backend.set_traffic(split.live, split.mirror)
    history.record(split, reason)


def push(
    loaded: LoadedManifest,
    backend: Backend,
    *,
    progress: Progress = no_progress,
    keep_failed: bool = False,
    lock_timeout: float = 600.0,
    force: bool = False,
    detach: bool = False,
    on_rollout_event: Any = None,
) -> PushResult:
    """``detach``: a staged rollout continues in a background process once it has begun;
    ``on_rollout_event`` hears each of its looks (see tdsp_deploy.rollout)."""
    manifest = loaded.manifest
    warnings = check_manifest(loaded) + backend.preflight()
    if force:
        warnings.append(_allow_forced(backend))
    _check_rollout_supported(backend, manifest.rollout)
    staged = bool(manifest.rollout.staged_steps())
    if staged:
        from tdsp_deploy import rollout as staged_rollout

        staged_rollout.check_supported(backend, manifest.rollout)
    for warning in warnings:
        progress(ProgressEvent(step="validate", message=f"warning: {warning}"))
    package = build_package(manifest, paths.package_store(), progress=progress)
    progress(
        ProgressEvent(
            step="package",
            message=f"package {package.package_id[:12]} " + ("(unchanged)" if package.reused else "built"),
        )
    )
    with backend.lock(timeout=lock_timeout):
        for repaired in backend.repair():
            progress(ProgressEvent(step="repair", message=repaired))
            warnings.append(repaired)
        before = backend.status()
        config_id = backend.config_id(package)
        current = _already_deployed(before, config_id, manifest.rollout)
        if current is not None:
            progress(
                ProgressEvent(step="push", message=f"'{current}' already runs this package; nothing to do")
            )
            return _result(loaded, backend, current, package, unchanged=True, smoke=None, warnings=warnings)
        slot = choose_slot(before, manifest.rollout)
        if staged:
            staged_rollout.refuse_if_in_progress(staged_rollout.store_for(backend))
        # A second Ctrl-C (or a CI cancellation's SIGTERM after its SIGINT) must not cut the
        # rollback the first one started: that left the new slot's server running, unrecorded.
        again = ProgressEvent(step="rollback", message="interrupted again: the rollback finishes first")
        with interrupts.first_only(on_repeat=lambda: progress(again)):
            smoke = _deploy_and_roll_back_on_failure(
                loaded,
                backend,
                slot,
                package,
                before,
                progress=progress,
                keep_failed=keep_failed,
                warnings=warnings,
            )
        state = None
        if staged:
            state = _begin_rollout(loaded, backend, slot, before, detach, on_rollout_event, progress)
    result = _result(loaded, backend, slot, package, unchanged=False, smoke=smoke, warnings=warnings)
    result.rollout = state
    return result


def _begin_rollout(
    loaded: LoadedManifest,
    backend: Backend,
    slot: str,
    before: EndpointStatus,
    detach: bool,
    on_event: Any,
    progress: Progress,
) -> dict[str, Any]:
    """The smoke test passed: walk the staged rollout here, or leave it to a background
    process (``detach``), which takes the endpoint lock once this push lets go of it."""
    from tdsp_deploy import rollout as staged_rollout

    state = staged_rollout.plan(loaded, backend, slot, before)
    store = staged_rollout.store_for(backend)
    store.write(state)
    if detach:
        pid = staged_rollout.detach(loaded.file, store)
        progress(ProgressEvent(step="rollout", message=f"rollout continues in the background (pid {pid})"))
        return {**state.summary(), "walker": pid}

    def heard(event: dict[str, Any]) -> None:
        if on_event is not None:
            on_event(event)
        else:
            progress(ProgressEvent(step="rollout", message=str(event.get("message", event["event"]))))

    return staged_rollout.walk(backend, state, on_event=heard).summary()


def _allow_forced(backend: Backend) -> str:
    """--force: a target whose pre-flight refusals may be overridden (SQL Server: a library
    mismatch that may break unpickling) then warns instead."""
    if not backend.capabilities.forceable_preflight:
        return f"--force has no effect on the {backend.kind} target"
    backend.force = True
    return "--force: pre-flight refusals become warnings"


def _check_rollout_supported(backend: Backend, rollout: RolloutSection) -> None:
    """Refuse, before anything changes, a rollout the target cannot carry out."""
    if rollout.mirror > 0 and not backend.capabilities.mirror:
        raise UsageError(
            f"the {backend.kind} target cannot mirror traffic (rollout.mirror: {rollout.mirror})",
            hint="set rollout.mirror to 0",
        )
    if 0 < rollout.traffic < 100 and not backend.capabilities.weighted_traffic:
        raise UsageError(
            f"the {backend.kind} target cannot split traffic (rollout.traffic: {rollout.traffic})",
            hint="use rollout.traffic 100 (switch) or 0 (stage only)",
        )


def _already_deployed(status: EndpointStatus, config_id: str, rollout: RolloutSection) -> str | None:
    """A healthy slot that runs exactly this configuration with the traffic the manifest asks for."""
    for slot in status.slots:
        if slot.config_id != config_id or slot.state != "healthy":
            continue
        if rollout.deployment and slot.name != rollout.deployment:
            continue
        if rollout.staged_steps() and slot.traffic == 0:
            continue  # a staged rollout that was rolled back or aborted: pushing again retries it
        wanted = planned_traffic(status, slot.name, rollout)
        if wanted is None or wanted.normalized(status.traffic) == current_split(status).normalized(
            status.traffic
        ):
            return slot.name
    return None


def _deploy_and_roll_back_on_failure(
    loaded: LoadedManifest,
    backend: Backend,
    slot: str,
    package: Any,
    before: EndpointStatus,
    *,
    progress: Progress,
    keep_failed: bool,
    warnings: list[str],
) -> SmokeReport | None:
    manifest = loaded.manifest
    replacing = before.slot(slot) is not None
    traffic_changed = False
    progress(ProgressEvent(step="deploy", message=f"deploying {manifest.name}/{slot} with no live traffic"))
    backend.deploy_slot(slot, package)
    try:
        backend.wait_healthy(slot)
        smoke = None
        if manifest.smoke_test is not None:
            progress(ProgressEvent(step="smoke", message=f"smoke test pinned to {slot}"))
            smoke = run_smoke_test(backend.callers, manifest.smoke_test, deployment=slot, progress=progress)
        wanted = planned_traffic(before, slot, manifest.rollout)
        if smoke is None and wanted is not None and wanted.live.get(slot, 0) > 0:
            untested = (
                f"the manifest has no smoke_test: '{slot}' gets {wanted.live[slot]}% of the traffic "
                "without a single request tried; add smoke_test.request (and expect)"
            )
            warnings.append(untested)
            progress(ProgressEvent(step="traffic", message=f"warning: {untested}"))
        if wanted is not None:
            progress(ProgressEvent(step="traffic", message=f"setting {wanted.describe()}"))
            change_traffic(backend, before, wanted, "push")
            traffic_changed = True
            _verify(backend, slot, wanted)
        backend.finalize_slot(slot)
        return smoke
    except (TdspError, KeyboardInterrupt) as failure:
        error = failure if isinstance(failure, TdspError) else Interrupted("push interrupted")
        _roll_back(backend, slot, before, error, traffic_changed, keep_failed and not replacing, progress)
        if error is failure:
            raise
        raise error from None


def _verify(backend: Backend, slot: str, wanted: TrafficSplit) -> None:
    after = backend.status()
    found = after.slot(slot)
    if found is None or found.state != "healthy":
        raise DeploymentFailed(f"deployment '{slot}' is not healthy after the traffic change")
    actual = current_split(after).normalized(after.traffic)
    if actual != wanted.normalized(after.traffic):
        raise DeploymentFailed(
            f"traffic is {actual.describe()} after the change, expected {wanted.describe()}"
        )


def _roll_back(
    backend: Backend,
    slot: str,
    before: EndpointStatus,
    error: TdspError,
    traffic_changed: bool,
    keep_failed: bool,
    progress: Progress,
) -> None:
    progress(ProgressEvent(step="rollback", message=f"rolling back {slot}"))
    steps: list[str] = []
    with contextlib.suppress(TdspError):
        error.details.setdefault("log_tail", backend.logs(slot, tail=LOG_TAIL_LINES))
    try:
        if traffic_changed:
            change_traffic(backend, before, current_split(before), "rollback")
            steps.append("traffic restored")
        if keep_failed:
            steps.append(f"'{slot}' kept for debugging (--keep-failed)")
        else:
            backend.discard_slot(slot)
            steps.append(
                f"'{slot}' " + ("restored to its previous version" if before.slot(slot) else "removed")
            )
        error.details["rolled_back"] = True
    except TdspError as rollback_error:  # never hide the original failure behind this one
        error.details["rolled_back"] = False
        error.details["rollback_error"] = rollback_error.message
        steps.append(f"rollback failed: {rollback_error.message}")
    # The steps ride on the error, which shows them once; not told here as well.
    error.details["rollback"] = steps


def _result(
    loaded: LoadedManifest,
    backend: Backend,
    slot: str,
    package: Any,
    *,
    unchanged: bool,
    smoke: SmokeReport | None,
    warnings: list[str],
) -> PushResult:
    status = backend.status()
    return PushResult(
        endpoint=loaded.manifest.name,
        kind=backend.kind,
        deployment=slot,
        scoring_uri=status.scoring_uri,
        package_id=package.package_id,
        model_version=package.lock.model_version,
        unchanged=unchanged,
        traffic=status.traffic,
        smoke=smoke,
        warnings=warnings,
    )


def test_deployment(
    loaded: LoadedManifest, backend: Backend, *, deployment: str | None, progress: Progress
) -> SmokeReport:
    """Re-run the manifest's smoke test against what is deployed (pinned when ``deployment``)."""
    from tdsp_deploy.errors import EndpointNotFound, UsageError

    smoke_test = loaded.manifest.smoke_test
    if smoke_test is None:
        raise UsageError(
            f"{loaded.file.name} has no smoke_test section",
            hint="add smoke_test.request (and expect) to the manifest",
        )
    status = backend.status()
    if not status.exists:
        raise EndpointNotFound(
            f"endpoint '{status.name}' is not deployed", hint="run `tdsp-deploy push` first"
        )
    return run_smoke_test(backend.callers, smoke_test, deployment=deployment, progress=progress)


# pytest must not collect the function above as a test
test_deployment.__test__ = False  # type: ignore[attr-defined]
