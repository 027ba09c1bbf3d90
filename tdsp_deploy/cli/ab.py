"""`tdsp-deploy ab ...`: start an A/B experiment, watch it, analyze it, end it.

Thin like the rest of the CLI: the experiment's plan, progress, start and end are in
tdsp_deploy.ab.lifecycle, the statistics and the verdict in tdsp_deploy.ab.analysis, the
report in tdsp_deploy.ab.report. scipy and matplotlib load only in `analyze`/`replay`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from tdsp_deploy.cli.context import Command
from tdsp_deploy.cli.options import ManifestArgument, with_context
from tdsp_deploy.errors import ExitCode, UsageError

ab_app = typer.Typer(
    help="A/B experiments between two deployments: start, status, analyze, promote, rollback.",
    no_args_is_help=True,
)


@ab_app.command()
@with_context
def start(
    ctx: Command,
    manifest: ManifestArgument,
    control: Annotated[str, typer.Option(help="The deployment now serving (e.g. blue).")],
    treatment: Annotated[str, typer.Option(help="The deployment to compare (e.g. green).")],
    split: Annotated[int | None, typer.Option(help="Percent of live traffic for the treatment.")] = None,
    mirror: Annotated[
        int | None, typer.Option(help="Percent of live traffic copied to the treatment (it answers no one).")
    ] = None,
) -> None:
    """Start an experiment: set the split (or the mirror) and record when it began."""
    from tdsp_deploy.ab import lifecycle
    from tdsp_deploy.cli.splits import check_capabilities
    from tdsp_deploy.traffic import TrafficSplit, validate

    backend, current = ctx.deployed()
    spec = lifecycle.spec_of(ctx.loaded)
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
    check_capabilities(backend, traffic)
    validate(traffic, [s.name for s in current.slots])
    experiment = lifecycle.start(
        backend,
        traffic,
        mode="split" if split is not None else "mirror",
        control=control,
        treatment=treatment,
        share=split if split is not None else mirror,  # type: ignore[arg-type]
        spec=spec,
    )

    def human() -> Iterator[str]:
        yield (
            f"experiment {experiment.id} started: {control} (control) vs {treatment} (treatment), "
            f"{traffic.describe()}"
        )
        plan = lifecycle.required_sample(spec, experiment.share, experiment.mode)
        if plan:
            yield (
                f"needs {plan['control']} requests with outcomes to {control}"
                f" and {plan['treatment']} to {treatment}"
            )

    ctx.answer(experiment.to_json(), human)


@ab_app.command()
@with_context
def status(ctx: Command, manifest: ManifestArgument) -> None:
    """Progress of the running experiment towards its sample size."""
    from tdsp_deploy.ab import lifecycle

    backend, _ = ctx.deployed()
    experiment = lifecycle.store_for(backend).latest()
    document = lifecycle.progress(backend, experiment)

    def human() -> Iterator[str]:
        state = "running" if experiment.ended_at is None else f"ended ({experiment.decision})"
        yield (
            f"experiment {experiment.id}: {experiment.control} vs {experiment.treatment}, {state}, "
            f"{document['elapsed_hours']} h"
        )
        needed = document["required"]
        for name, count in document["collected"].items():
            need = f" of {needed[name]} ({count / needed[name]:.0%})" if needed else ""
            yield f"  {name}: {count} requests{need}"

    ctx.answer(document, human)


@ab_app.command()
@with_context
def analyze(
    ctx: Command,
    manifest: ManifestArgument,
    outcomes: Annotated[Path | None, typer.Option(help="CSV or parquet with request_id, outcome.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Act on the verdict: promote, or roll back.")
    ] = False,
) -> int:
    """Compare the variants and give a verdict: promote, keep control, inconclusive (exit 8),
    or roll back (exit 9 with --apply, which also acts on it)."""
    from tdsp_deploy.ab import lifecycle
    from tdsp_deploy.ab.analysis import analyze as run_analysis

    backend, _ = ctx.deployed()
    loaded = ctx.loaded
    experiment = lifecycle.store_for(backend).latest()
    observed = units = None
    if outcomes is not None:
        from tdsp_deploy.ab.outcomes import read_outcomes, read_units

        observed = read_outcomes(outcomes)
        units = read_units(outcomes)
    with ctx.env.progress() as progress:
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
        lifecycle.end(backend, experiment, "promote" if decision == "promote" else "rollback")
        document["applied"] = True

    def human() -> None:
        from tdsp_deploy import render_text

        render_text.ab_verdict(ctx.env, document, report)
        ctx.warn(document.get("warnings", []))

    ctx.answer(document, human)
    # The verdict is the answer, not an error: one document, and the exit code says which.
    if decision == "inconclusive":
        return int(ExitCode.AB_INCONCLUSIVE)
    if decision == "roll back" and apply:
        return int(ExitCode.ROLLED_BACK)
    return 0


def _finish(ctx: Command, decision: str) -> None:
    from tdsp_deploy.ab import lifecycle

    backend, _ = ctx.deployed()
    experiment = lifecycle.store_for(backend).running()
    if experiment is None:
        raise UsageError("no experiment is running", hint="start one with `tdsp-deploy ab start`")
    lifecycle.end(backend, experiment, decision)
    winner = lifecycle.winner(experiment, decision)
    ctx.answer(
        {"experiment": experiment.id, "decision": decision, "traffic": {winner: 100}},
        f"experiment {experiment.id} ended ({decision}): {winner} takes all traffic",
    )


@ab_app.command()
@with_context
def promote(ctx: Command, manifest: ManifestArgument) -> None:
    """End the experiment: the treatment takes all traffic."""
    _finish(ctx, "promote")


@ab_app.command()
@with_context
def rollback(ctx: Command, manifest: ManifestArgument) -> None:
    """End the experiment: the control takes all traffic back."""
    _finish(ctx, "rollback")


@ab_app.command()
@with_context
def replay(
    ctx: Command,
    manifest: ManifestArgument,
    data: Annotated[Path, typer.Option(help="CSV of labelled rows: feature columns and the label.")],
    label: Annotated[str, typer.Option(help="The label's column.")],
    control: Annotated[str | None, typer.Option(help="Default: the latest experiment's control.")] = None,
    treatment: Annotated[str | None, typer.Option(help="Default: the latest experiment's treatment.")] = None,
    id_column: Annotated[str | None, typer.Option(help="A column to leave out of the features.")] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per request.")] = 32,
) -> int:
    """Send the same labelled rows to both variants (pinned) and compare them with a paired
    test: McNemar for classes, paired t-test and Wilcoxon for numbers. Exit 8 when the
    difference is not significant."""
    from tdsp_deploy.ab import lifecycle
    from tdsp_deploy.replay import collect_predictions, compare, read_rows

    backend, _ = ctx.deployed()
    loaded = ctx.loaded
    if control is None or treatment is None:
        latest = lifecycle.store_for(backend).latest()
        control, treatment = control or latest.control, treatment or latest.treatment
    alpha = loaded.manifest.ab.alpha if loaded.manifest.ab else 0.05
    rows = read_rows(data, label, id_column=id_column)
    with ctx.env.progress() as progress:
        predicted = {
            slot: collect_predictions(backend.callers, slot, rows, batch=batch, progress=progress)
            for slot in (control, treatment)
        }
    result = {
        "control_deployment": control,
        "treatment_deployment": treatment,
        **compare(rows.labels, predicted[control], predicted[treatment], alpha),
    }

    def human() -> Iterator[str]:
        metric = "accuracy" if result["task"] == "classification" else "mae"
        yield (
            f"{result['rows']} rows: {control} {metric} {result['control'][metric]:.4g}, "
            f"{treatment} {metric} {result['treatment'][metric]:.4g}"
        )
        for test in result["tests"]:
            yield (
                f"  {test['test']}: effect {test['effect']:.4g} "
                f"[{test['ci_low']:.4g}, {test['ci_high']:.4g}], p = {test['p_value']:.4g}"
            )
        yield f"verdict: {result['verdict']}"

    ctx.answer(result, human)
    return int(ExitCode.AB_INCONCLUSIVE) if result["verdict"] == "no difference" else 0
