"""Human renderings of results and errors, on stderr (tables) and stdout (data).

Kept apart from cli.py so that the commands stay thin, and so that rich is imported only
when something is shown to a person.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import EndpointStatus
    from tdsp_deploy.errors import TdspError
    from tdsp_deploy.output import Environment
    from tdsp_deploy.pipeline import PushResult
    from tdsp_deploy.smoke import SmokeReport


def _table(env: Environment, title: str | None = None):  # type: ignore[no-untyped-def]
    from rich import box
    from rich.table import Table

    return Table(title=title, box=box.SIMPLE if env.colors else box.ASCII, title_justify="left")


def push_summary(env: Environment, result: PushResult, manifest: Path, sample: Path | None) -> None:
    console = env.console()
    if result.unchanged:
        console.print(
            f"'{result.endpoint}/{result.deployment}' already runs package {result.package_id[:12]}; "
            "nothing changed.",
            markup=False,
        )
    else:
        console.print(
            f"deployed {result.endpoint}/{result.deployment} "
            f"(model version {result.model_version}, package {result.package_id[:12]})",
            markup=False,
        )
    if result.smoke is not None:
        smoke_table(env, result.smoke)
    traffic = ", ".join(f"{name}={weight}%" for name, weight in result.traffic.items()) or "none"
    console.print(f"traffic: {traffic}", markup=False)
    console.print(f"scoring URI: {result.scoring_uri}", markup=False)
    request = _shown(sample) if sample else "request.json"
    console.print(
        "call it:\n"
        f"  tdsp-deploy invoke {manifest} --request {request}\n"
        f"  curl -X POST {result.scoring_uri} -H 'Content-Type: application/json' "
        f'-H "Authorization: Bearer $KEY" -d @{request}\n'
        f"  (the key: tdsp-deploy credentials {manifest})",
        markup=False,
    )


def _shown(path: Path) -> str:
    """A path as the user would type it from here."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def smoke_table(env: Environment, report: SmokeReport) -> None:
    console = env.console()
    answer = report.answer
    verdict = "as expected" if answer.passed else "WRONG"
    console.print(
        f"smoke test ({report.deployment or 'unpinned'}): answer {verdict} "
        f"(HTTP {answer.status}, {answer.elapsed_ms:.1f} ms)",
        markup=False,
    )
    latency = report.latency
    if latency is None:
        return
    table = _table(env, "latency")
    for column in (
        "requests",
        "concurrency",
        "errors",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "req/s",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(latency.requests),
        str(latency.concurrency),
        str(latency.errors),
        f"{latency.p50_ms:.2f}",
        f"{latency.p90_ms:.2f}",
        f"{latency.p95_ms:.2f}",
        f"{latency.p99_ms:.2f}",
        f"{latency.max_ms:.2f}",
        f"{latency.requests_per_second:.0f}",
    )
    console.print(table)
    console.print(latency.describe_mode(), markup=False)
    objective = f"p95 <= {latency.objective_p95_ms:g} ms, " if latency.objective_p95_ms else ""
    console.print(
        f"objective: {objective}error rate <= {latency.objective_max_error_rate:.1%}: "
        + ("met" if latency.passed else "MISSED"),
        markup=False,
    )


def status_table(env: Environment, status: EndpointStatus) -> None:
    console = env.console()
    router = status.details.get("router")
    console.print(f"endpoint {status.name} ({status.kind})", markup=False)
    console.print(f"scoring URI: {status.scoring_uri}", markup=False)
    if status.details.get("notice"):  # what the platform itself says of this target
        console.print(f"note: {status.details['notice']}", markup=False)
    if router:
        where = f"{router.get('host')}:{router.get('port')}"
        console.print(f"router: {router.get('state')} (pid {router.get('pid')}, {where})", markup=False)
    table = _table(env)
    environments = [_environment(slot.details) for slot in status.slots]
    shown = any(cell != "-" for cell in environments)  # a target that reports environments
    for column in ("deployment", "state", "traffic", "mirror", "model version", "package", "pid", "port"):
        table.add_column(column)
    if shown:
        table.add_column("environment")
    for slot, cell in zip(status.slots, environments, strict=True):
        table.add_row(
            slot.name,
            slot.state,
            f"{slot.traffic}%",
            f"{slot.mirror}%" if slot.mirror else "-",
            slot.model_version or "-",
            (slot.package_id or "-")[:12],
            str(slot.details.get("pid") or "-"),
            str(slot.details.get("port") or "-"),
            *([cell] if shown else []),
        )
    console.print(table)


def _environment(details: dict[str, Any]) -> str:
    """A deployment's environment: its hash (the first 8 characters) and its Python."""
    found = details.get("environment") or {}
    if not found.get("hash"):
        return "-"
    return f"{str(found['hash'])[:8]} py{found.get('python', '?')}"


def error(env: Environment, failure: TdspError) -> None:
    """The error, its rollback steps, log tail and hint, with the manifest's secrets redacted
    (an error may quote a value, a connection string, or a log line that holds one)."""
    stream = env.stderr
    redact = env.redact
    label = "error"
    if env.colors:
        console = env.console()
        console.print(f"[bold red]{label}:[/] ", end="")
        console.print(redact(failure.format_message()), markup=False, highlight=False)
    else:
        stream.write(f"{label}: {redact(failure.format_message())}\n")
    details = failure.details
    for step in details.get("rollback", []):
        stream.write(f"  rollback: {redact(str(step))}\n")
    tail = details.get("log_tail")
    if tail:
        stream.write("  last lines of the deployment's log:\n")
        for line in redact(str(tail)).splitlines()[-30:]:
            stream.write(f"    | {line}\n")
    if failure.hint:
        stream.write(f"  hint: {redact(failure.hint)}\n")
    stream.flush()


def ab_verdict(env: Environment, analysis: dict, report: Path | None) -> None:
    """The experiment's verdict and the numbers behind it, as the HTML report shows them."""
    console = env.console()
    experiment, verdict = analysis["experiment"], analysis["verdict"]
    console.print(
        f"experiment {experiment['id']}: {experiment['control']} (control) vs "
        f"{experiment['treatment']} (treatment), {experiment['mode']}",
        markup=False,
    )
    variants = _table(env, "variants")
    for column in ("deployment", "role", "n", "error rate", "p50 ms", "p95 ms"):
        variants.add_column(column, justify="right")
    for name, variant in analysis["variants"].items():
        latency = variant.get("latency_ms") or {}
        variants.add_row(
            name,
            variant.get("role", ""),
            str(variant.get("n", 0)),
            _pct(variant.get("error_rate")),
            _num(latency.get("p50")),
            _num(latency.get("p95")),
        )
    console.print(variants)
    if analysis.get("metrics"):
        metrics = _table(env, "metrics")
        for column in (
            "metric",
            "test",
            "control",
            "treatment",
            "effect [CI]",
            "p",
            "p (Holm)",
            "significant",
        ):
            metrics.add_column(column, justify="right")
        for metric in analysis["metrics"]:
            low, high = metric.get("effect_ci") or (None, None)
            metrics.add_row(
                metric["name"],
                str(metric.get("test") or "-"),
                _num(metric.get("control")),
                _num(metric.get("treatment")),
                f"{_num(metric.get('effect'))} [{_num(low)}, {_num(high)}]",
                _num(metric.get("p_value")),
                _num(metric.get("p_adjusted")),
                "yes" if metric.get("significant") else "no",
            )
        console.print(metrics)
    for guardrail in analysis.get("guardrails", []):
        if guardrail.get("breached"):
            console.print(
                f"guardrail breached: {guardrail['name']} = {_num(guardrail.get('treatment'))} "
                f"(limit {_num(guardrail.get('limit'))})",
                markup=False,
            )
    console.print(f"verdict: {verdict['decision'].upper()}: {verdict['reason']}", markup=False)
    if report is not None:
        console.print(f"report: {report}", markup=False)


def _num(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value: object) -> str:
    return f"{value:.2%}" if isinstance(value, float) else "-"
