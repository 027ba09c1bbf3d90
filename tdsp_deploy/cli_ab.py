"""`tdsp-deploy ab ...`: start an A/B experiment, watch it, analyze it, end it.

Thin like the rest of the CLI: traffic changes go through the pipeline's change_traffic
(rules, history), the statistics and the verdict through tdsp_deploy.ab.analysis, the
report through tdsp_deploy.ab.report. scipy and matplotlib load only in `analyze`/`replay`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tdsp_deploy.cli_options import DebugOption, JsonOption, ManifestArgument
from tdsp_deploy.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend
    from tdsp_deploy.experiments import Experiment
    from tdsp_deploy.manifest import LoadedManifest
    from tdsp_deploy.output import Environment

ab_app = typer.Typer(
    help="A/B experiments between two deployments: start, status, analyze, promote, rollback.",
    no_args_is_help=True,
)


def _context(manifest: Path, json_out: bool, debug: bool) -> tuple[Environment, LoadedManifest, Backend]:
    from tdsp_deploy import cli

    env, loaded, backend, _ = cli._deployed(manifest, json_out, debug)
    return env, loaded, backend


def _spec(loaded: LoadedManifest) -> dict[str, Any]:
    section = loaded.manifest.ab
    if section is None:
        raise UsageError(
            f"{loaded.file.name} has no ab section: the experiment needs a metric and its objectives",
            hint="add ab: {minimum_detectable_effect: 0.02, baseline: 0.1, primary_metric: {type: binary}}",
        )
    return section.model_dump(mode="json")


def _store(backend: Backend):  # type: ignore[no-untyped-def]
    from tdsp_deploy.experiments import ExperimentStore

    return ExperimentStore(backend.kind, backend.manifest.name)


def required_sample(spec: dict[str, Any], share: int = 50, mode: str = "split") -> dict[str, int] | None:
    """Outcomes needed per variant (``control``, ``treatment``), planned with the split; None
    when the manifest does not say enough to compute it."""
    from tdsp_deploy.ab import decision

    return decision.required_sample(
        spec["primary_metric"]["type"],
        spec.get("baseline"),
        spec["minimum_detectable_effect"],
        spec["alpha"],
        spec["power"],
        share / 100 if mode == "split" else 0.5,
    )


def required_sample_size(spec: dict[str, Any], share: int = 50, mode: str = "split") -> int | None:
    """The larger variant's requirement (what ``ab start`` records)."""
    plan = required_sample(spec, share, mode)
    return max(plan.values()) if plan else None


@ab_app.command()
def start(
    manifest: ManifestArgument,
    control: Annotated[str, typer.Option(help="The deployment now serving (e.g. blue).")],
    treatment: Annotated[str, typer.Option(help="The deployment to compare (e.g. green).")],
    split: Annotated[int | None, typer.Option(help="Percent of live traffic for the treatment.")] = None,
    mirror: Annotated[
        int | None, typer.Option(help="Percent of live traffic copied to the treatment (it answers no one).")
    ] = None,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Start an experiment: set the split (or the mirror) and record when it began."""
    from tdsp_deploy.cli import _check_capabilities
    from tdsp_deploy.pipeline import change_traffic
    from tdsp_deploy.traffic import TrafficSplit, validate

    env, loaded, backend = _context(manifest, json_out, debug)
    spec = _spec(loaded)
    if (split is None) == (mirror is None):
        raise UsageError("give either --split PERCENT or --mirror PERCENT", hint="e.g. --split 50")
    if control == treatment:
        raise UsageError("control and treatment must be two different deployments")
    if split is not None:
        if not 0 < split < 100:
            raise UsageError(f"--split {split}: the treatment's share is a percentage between 1 and 99")
        traffic = TrafficSplit({control: 100 - split, treatment: split}, {})
    else:
        traffic = TrafficSplit({control: 100}, {treatment: mirror or 0})
    current = backend.status()
    _check_capabilities(backend, traffic)
    validate(traffic, [s.name for s in current.slots])
    store = _store(backend)
    with backend.lock():
        experiment = store.start(
            control=control,
            treatment=treatment,
            mode="split" if split is not None else "mirror",
            share=split if split is not None else mirror,
            spec=spec,
            required_per_variant=required_sample_size(
                spec, split if split is not None else 50, "split" if split is not None else "mirror"
            ),
        )
        backend.set_experiment(experiment.id)
        change_traffic(backend, backend.status(), traffic, f"ab start {experiment.id}")
    if env.json_mode:
        env.emit_json(experiment.to_json())
        return
    env.say(
        f"experiment {experiment.id} started: {control} (control) vs {treatment} (treatment), "
        f"{traffic.describe()}"
    )
    plan = required_sample(spec, experiment.share, experiment.mode)
    if plan:
        env.say(
            f"needs {plan['control']} requests with outcomes to {control}"
            f" and {plan['treatment']} to {treatment}"
        )


@ab_app.command()
def status(manifest: ManifestArgument, json_out: JsonOption = False, debug: DebugOption = False) -> None:
    """Progress of the running experiment towards its sample size."""
    env, loaded, backend = _context(manifest, json_out, debug)
    experiment = _store(backend).latest()
    counts = _variant_counts(backend, experiment)
    plan = required_sample(experiment.spec, experiment.share, experiment.mode)
    needed = {experiment.control: plan["control"], experiment.treatment: plan["treatment"]} if plan else None
    progress = min(counts[name] / n for name, n in needed.items()) if needed else None
    document = {
        **experiment.to_json(),
        "required": needed,
        "collected": counts,
        "progress": round(min(progress, 1.0), 4) if progress is not None else None,
        "elapsed_hours": round(((experiment.ended_at or time.time()) - experiment.started_at) / 3600, 3),
    }
    if env.json_mode:
        env.emit_json(document)
        return
    state = "running" if experiment.ended_at is None else f"ended ({experiment.decision})"
    env.say(
        f"experiment {experiment.id}: {experiment.control} vs {experiment.treatment}, {state}, "
        f"{document['elapsed_hours']} h"
    )
    for name, count in counts.items():
        need = f" of {needed[name]} ({count / needed[name]:.0%})" if needed else ""
        env.say(f"  {name}: {count} requests{need}")


def _variant_counts(backend: Backend, experiment: Experiment) -> dict[str, int]:
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


@ab_app.command()
def analyze(
    manifest: ManifestArgument,
    outcomes: Annotated[Path | None, typer.Option(help="CSV or parquet with request_id, outcome.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Act on the verdict: promote, or roll back.")
    ] = False,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> int:
    """Compare the variants and give a verdict: promote, keep control, inconclusive (exit 8),
    or roll back (exit 9 with --apply, which also acts on it)."""
    from tdsp_deploy.ab.analysis import analyze as run_analysis

    env, loaded, backend = _context(manifest, json_out, debug)
    experiment = _store(backend).latest()
    observed = units = None
    if outcomes is not None:
        from tdsp_deploy.ab.outcomes import read_outcomes, read_units

        observed = read_outcomes(outcomes)
        units = read_units(outcomes)
    with env.progress() as progress:
        from tdsp_deploy.backends.base import ProgressEvent

        progress(ProgressEvent(step="analyze", message="reading the request log"))
        records = list(backend.request_records(experiment.started_at))
        progress(ProgressEvent(step="analyze", message=f"analyzing {len(records)} requests"))
        document = run_analysis(
            records, experiment.analysis_input(), experiment.spec, observed, now=time.time(), units=units
        )
        if observed is not None and units is None and loaded.manifest.rollout.sticky_header:
            document.setdefault("warnings", []).append(
                f"the split keeps each {loaded.manifest.rollout.sticky_header} on one deployment, but the"
                " outcomes have no unit column: requests of one user are counted as independent, which"
                " overstates the evidence; add a column `unit` with the header's value"
            )
        if report is not None:
            from tdsp_deploy.ab.report import write_report

            progress(ProgressEvent(step="report", message=f"writing {report}"))
            write_report(document, report)
    decision = document["verdict"]["decision"]
    if apply and experiment.ended_at is None and decision in ("promote", "roll back", "keep control"):
        _end(backend, experiment, "promote" if decision == "promote" else "rollback")
        document["applied"] = True
    if env.json_mode:
        env.emit_json(document)
    else:
        from tdsp_deploy import render_text

        render_text.ab_verdict(env, document, report)
        for warning in document.get("warnings", []):
            env.say(f"warning: {warning}", style="yellow")
    # The verdict is the answer, not an error: one document, and the exit code says which.
    if decision == "inconclusive":
        return int(ExitCode.AB_INCONCLUSIVE)
    if decision == "roll back" and apply:
        return int(ExitCode.ROLLED_BACK)
    return 0


def _end(backend: Backend, experiment: Experiment, decision: str) -> None:
    from tdsp_deploy.pipeline import change_traffic
    from tdsp_deploy.traffic import TrafficSplit

    winner = experiment.treatment if decision == "promote" else experiment.control
    with backend.lock():
        change_traffic(
            backend, backend.status(), TrafficSplit({winner: 100}, {}), f"ab {decision} {experiment.id}"
        )
        _store(backend).end(experiment, decision)


def _finish(manifest: Path, decision: str, json_out: bool, debug: bool) -> None:
    env, loaded, backend = _context(manifest, json_out, debug)
    experiment = _store(backend).running()
    if experiment is None:
        raise UsageError("no experiment is running", hint="start one with `tdsp-deploy ab start`")
    _end(backend, experiment, decision)
    winner = experiment.treatment if decision == "promote" else experiment.control
    if env.json_mode:
        env.emit_json({"experiment": experiment.id, "decision": decision, "traffic": {winner: 100}})
    else:
        env.say(f"experiment {experiment.id} ended ({decision}): {winner} takes all traffic")


@ab_app.command()
def promote(manifest: ManifestArgument, json_out: JsonOption = False, debug: DebugOption = False) -> None:
    """End the experiment: the treatment takes all traffic."""
    _finish(manifest, "promote", json_out, debug)


@ab_app.command()
def rollback(manifest: ManifestArgument, json_out: JsonOption = False, debug: DebugOption = False) -> None:
    """End the experiment: the control takes all traffic back."""
    _finish(manifest, "rollback", json_out, debug)


@ab_app.command()
def replay(
    manifest: ManifestArgument,
    data: Annotated[Path, typer.Option(help="CSV of labelled rows: feature columns and the label.")],
    label: Annotated[str, typer.Option(help="The label's column.")],
    control: Annotated[str | None, typer.Option(help="Default: the latest experiment's control.")] = None,
    treatment: Annotated[str | None, typer.Option(help="Default: the latest experiment's treatment.")] = None,
    id_column: Annotated[str | None, typer.Option(help="A column to leave out of the features.")] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per request.")] = 32,
    json_out: JsonOption = False,
    debug: DebugOption = False,
) -> int:
    """Send the same labelled rows to both variants (pinned) and compare them with a paired
    test: McNemar for classes, paired t-test and Wilcoxon for numbers. Exit 8 when the
    difference is not significant."""
    from tdsp_deploy.replay import collect_predictions, compare, read_rows

    env, loaded, backend = _context(manifest, json_out, debug)
    if control is None or treatment is None:
        latest = _store(backend).latest()
        control, treatment = control or latest.control, treatment or latest.treatment
    alpha = loaded.manifest.ab.alpha if loaded.manifest.ab else 0.05
    rows = read_rows(data, label, id_column=id_column)
    with env.progress() as progress:
        predicted = {
            slot: collect_predictions(backend.callers, slot, rows, batch=batch, progress=progress)
            for slot in (control, treatment)
        }
    result = {
        "control_deployment": control,
        "treatment_deployment": treatment,
        **compare(rows.labels, predicted[control], predicted[treatment], alpha),
    }
    if env.json_mode:
        env.emit_json(result)
    else:
        metric = "accuracy" if result["task"] == "classification" else "mae"
        env.say(
            f"{result['rows']} rows: {control} {metric} {result['control'][metric]:.4g}, "
            f"{treatment} {metric} {result['treatment'][metric]:.4g}"
        )
        for test in result["tests"]:
            env.say(
                f"  {test['test']}: effect {test['effect']:.4g} "
                f"[{test['ci_low']:.4g}, {test['ci_high']:.4g}], p = {test['p_value']:.4g}"
            )
        env.say(f"verdict: {result['verdict']}")
    return int(ExitCode.AB_INCONCLUSIVE) if result["verdict"] == "no difference" else 0
