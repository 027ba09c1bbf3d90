"""An experiment on a deployed endpoint: what it needs (outcomes per variant), how far it has
come, and starting and ending it (the split, the record, the backend's experiment tag)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tdsp_deploy.errors import UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend
    from tdsp_deploy.experiments import Experiment, ExperimentStore
    from tdsp_deploy.manifest import LoadedManifest
    from tdsp_deploy.traffic import TrafficSplit


def spec_of(loaded: LoadedManifest) -> dict[str, Any]:
    """The manifest's ab section as the experiment records it; UsageError without one."""
    section = loaded.manifest.ab  # type: ignore[attr-defined]
    if section is None:
        raise UsageError(
            f"{loaded.file.name} has no ab section: the experiment needs a metric and its objectives",
            hint="add ab: {minimum_detectable_effect: 0.02, baseline: 0.1, primary_metric: {type: binary}}",
        )
    return section.model_dump(mode="json")  # type: ignore[no-any-return]


def required_sample(spec: dict[str, Any], share: int = 50, mode: str = "split") -> dict[str, int] | None:
    """Outcomes needed per variant (``control``, ``treatment``), planned with the split; None
    when the spec does not say enough to compute it."""
    from tdsp_deploy.ab import decision

    return decision.required_sample(
        spec["primary_metric"]["type"],
        spec.get("baseline"),
        spec["minimum_detectable_effect"],
        spec["alpha"],
        spec["power"],
        share / 100 if mode == "split" else 0.5,
    )


def store_for(backend: Backend) -> ExperimentStore:
    from tdsp_deploy.experiments import ExperimentStore

    return ExperimentStore(backend.kind, backend.manifest.name)


def start(
    backend: Backend,
    traffic: TrafficSplit,
    *,
    mode: str,
    control: str,
    treatment: str,
    share: int,
    spec: dict[str, Any],
) -> Experiment:
    """Record the experiment, tag the backend's request log with it and set ``traffic``
    (``mode`` split: the treatment takes ``share`` percent; mirror: it gets a copy of it)."""
    from tdsp_deploy.pipeline import change_traffic

    plan = required_sample(spec, share if mode == "split" else 50, mode)
    with backend.lock():
        experiment = store_for(backend).start(
            control=control,
            treatment=treatment,
            mode=mode,
            share=share,
            spec=spec,
            required_per_variant=max(plan.values()) if plan else None,
        )
        backend.set_experiment(experiment.id)
        change_traffic(backend, backend.status(), traffic, f"ab start {experiment.id}")
    return experiment


def winner(experiment: Experiment, decision: str) -> str:
    return experiment.treatment if decision == "promote" else experiment.control


def end(backend: Backend, experiment: Experiment, decision: str) -> None:
    """End ``experiment`` with ``decision`` (promote or rollback): the winner takes all traffic."""
    from tdsp_deploy.pipeline import change_traffic
    from tdsp_deploy.traffic import TrafficSplit

    with backend.lock():
        change_traffic(
            backend,
            backend.status(),
            TrafficSplit({winner(experiment, decision): 100}, {}),
            f"ab {decision} {experiment.id}",
        )
        store_for(backend).end(experiment, decision)


def variant_counts(backend: Backend, experiment: Experiment) -> dict[str, int]:
    """Requests each variant served in the experiment: the control's live ones, the
    treatment's live (split) or shadow (mirror) ones; pinned requests are not the experiment's."""
    counts = {experiment.control: 0, experiment.treatment: 0}
    treatment_kind = "shadow" if experiment.mode == "mirror" else "live"
    for record in backend.request_records(experiment.started_at):
        if experiment.ended_at is not None and record["t"] > experiment.ended_at:
            break
        name = record.get("deployment")
        if record.get("pinned") or name not in counts:
            continue
        if (
            name == experiment.control
            and record["kind"] == "live"
            or (name == experiment.treatment and record["kind"] == treatment_kind)
        ):
            counts[name] += 1
    return counts


def progress(backend: Backend, experiment: Experiment) -> dict[str, Any]:
    """The experiment with what it needs, what it has collected, and how far that is."""
    counts = variant_counts(backend, experiment)
    plan = required_sample(experiment.spec, experiment.share, experiment.mode)
    needed = {experiment.control: plan["control"], experiment.treatment: plan["treatment"]} if plan else None
    share = min(counts[name] / n for name, n in needed.items()) if needed else None
    return {
        **experiment.to_json(),
        "required": needed,
        "collected": counts,
        "progress": round(min(share, 1.0), 4) if share is not None else None,
        "elapsed_hours": round(((experiment.ended_at or time.time()) - experiment.started_at) / 3600, 3),
    }
