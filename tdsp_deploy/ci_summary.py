"""Markdown summaries of a push or a render, for the page a CI run shows.

GitHub Actions shows whatever a step appends to ``$GITHUB_STEP_SUMMARY``; Azure Pipelines
shows a Markdown file uploaded with ``##vso[task.uploadsummary]``. Both get the same text:
the deployment, the smoke test's answer, a latency table, the traffic and a verdict that
matches the exit code. The summary is built from the same JSON documents ``--json`` prints,
so it shows nothing the JSON output would not: no key, no secret.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tdsp_deploy.errors import ExitCode, UsageError

GITHUB_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"
LOG_TAIL_LINES = 30
RENDERED_INLINE_BYTES = 20_000  # rendered files up to this size are shown inline for review

VERDICTS = {
    ExitCode.OK: "deployed",
    ExitCode.USAGE: "refused: bad command line or manifest",
    ExitCode.BACKEND: "failed: backend, auth or connection",
    ExitCode.DEPLOYMENT_FAILED: "failed: the deployment did not become healthy",
    ExitCode.SMOKE_FAILED: "failed: the smoke test got a wrong answer",
    ExitCode.LATENCY_MISSED: "failed: the latency or error-rate objective was missed",
    ExitCode.PLUGIN: "failed: target plugin missing or broken",
    ExitCode.INTERRUPTED: "interrupted",
}


@dataclasses.dataclass(frozen=True)
class SummaryTarget:
    """Where the summary goes, and whether to add to what is there (GitHub's file is shared
    by every step of the job) or replace it."""

    path: Path
    append: bool


def summary_target(explicit: Path | None, ci_flag: bool, environ: Mapping[str, str]) -> SummaryTarget | None:
    """``--summary FILE``; else, in CI mode (``--ci`` or ``CI=true``), ``$GITHUB_STEP_SUMMARY``."""
    if explicit is not None:
        return SummaryTarget(explicit, append=False)
    in_ci = ci_flag or environ.get("CI", "").lower() == "true"
    github = environ.get(GITHUB_SUMMARY_VARIABLE)
    if in_ci and github:
        return SummaryTarget(Path(github), append=True)
    return None


def write_summary(target: SummaryTarget, markdown: str) -> None:
    try:
        target.path.parent.mkdir(parents=True, exist_ok=True)
        with open(target.path, "a" if target.append else "w", encoding="utf-8") as handle:
            handle.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as exc:
        raise UsageError(
            f"cannot write the summary to {target.path}: {exc.strerror or exc}",
            hint="check --summary (or $GITHUB_STEP_SUMMARY) names a writable file",
        ) from exc


# -- push ---------------------------------------------------------------------------------------
class PushRecorder:
    """Writes the push's summary when the ``with`` block ends, however it ends: the result
    given to ``done()``, or the error that ended it (which still propagates)."""

    def __init__(
        self, target: SummaryTarget | None, manifest: str, redact: Callable[[str], str] = lambda text: text
    ):
        self.target = target
        self.manifest = manifest
        self.result: dict[str, Any] | None = None
        self.redact = redact  # applied when writing: the manifest's secrets are known by then

    def done(self, result: dict[str, Any]) -> None:
        self.result = result

    def __enter__(self) -> PushRecorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if self.target is None:
            return
        if error is None:
            write_summary(self.target, self.redact(push_markdown(self.manifest, self.result, None, 0)))
            return
        from tdsp_deploy.errors import Interrupted, TdspError

        if isinstance(error, KeyboardInterrupt):
            error = Interrupted("push interrupted")
        if not isinstance(error, TdspError):
            error = TdspError(f"unexpected error: {type(error).__name__}: {error}")
        markdown = push_markdown(self.manifest, None, error.to_json(), int(error.exit_code))
        write_summary(self.target, self.redact(markdown))


def push_markdown(
    manifest: str, result: dict[str, Any] | None, error: dict[str, Any] | None, exit_code: int
) -> str:
    """The summary of one push: ``result`` is PushResult.to_json() when it succeeded, ``error``
    the TdspError.to_json() when it did not."""
    name = (result or {}).get("endpoint") or _endpoint_of(manifest)
    verdict = VERDICTS.get(exit_code, "failed")  # type: ignore[call-overload]
    status = "passed" if exit_code == 0 else "FAILED"
    out = [f"## tdsp-deploy push `{name}`: {status} (exit {exit_code})", ""]
    if result is not None:
        out += _deployment_table(manifest, result)
        smoke = result.get("smoke")
    else:
        out += [f"Manifest: `{manifest}`", ""]
        smoke = ((error or {}).get("details") or {}).get("smoke")
    out += _smoke_section(smoke)
    if result is not None:
        out += _traffic_section(result.get("traffic") or {})
    out += _verdict_section(verdict, exit_code, result, error)
    return "\n".join(out).rstrip() + "\n"


def _endpoint_of(manifest: str) -> str:
    return Path(manifest).parent.name or manifest


def _deployment_table(manifest: str, result: dict[str, Any]) -> list[str]:
    rows = [
        ("manifest", f"`{manifest}`"),
        ("target", result.get("kind")),
        ("deployment", result.get("deployment")),
        ("model version", result.get("model_version")),
        ("package", f"`{str(result.get('package_id') or '')[:12]}`"),
        ("scoring URI", result.get("scoring_uri") or "-"),
        ("changed", "no: this package already ran with this traffic" if result.get("unchanged") else "yes"),
    ]
    return ["| | |", "|---|---|", *(f"| {key} | {_cell(value)} |" for key, value in rows), ""]


def _smoke_section(smoke: dict[str, Any] | None) -> list[str]:
    out = ["### Smoke test", ""]
    if not smoke:
        return [
            *out,
            "Not run (no `smoke_test` in the manifest, nothing changed, or the push stopped before).",
            "",
        ]
    answer = smoke.get("answer") or {}
    where = smoke.get("deployment") or "the endpoint"
    if answer.get("passed"):
        out.append(
            f"Answer from `{where}`: as expected "
            f"(HTTP {answer.get('status')}, {answer.get('elapsed_ms')} ms)."
        )
    else:
        out.append(f"Answer from `{where}`: **wrong** (HTTP {answer.get('status')}):")
        out += [""] + [f"- `{difference}`" for difference in answer.get("differences") or []]
    out.append("")
    latency = smoke.get("latency")
    if latency:
        out += [
            "| requests | concurrency | errors | p50 ms | p90 ms | p95 ms | p99 ms | max ms | req/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            "| "
            + " | ".join(
                _cell(latency.get(key))
                for key in (
                    "requests",
                    "concurrency",
                    "errors",
                    "p50_ms",
                    "p90_ms",
                    "p95_ms",
                    "p99_ms",
                    "max_ms",
                    "requests_per_second",
                )
            )
            + " |",
            "",
        ]
        objective = latency.get("objective_p95_ms")
        limits = (f"p95 <= {objective:g} ms, " if objective else "") + (
            f"error rate <= {latency.get('objective_max_error_rate', 0):.1%}"
        )
        met = "met" if latency.get("passed") else "**missed**: " + "; ".join(latency.get("problems") or [])
        out += [f"Objective ({limits}): {met}.", ""]
    return out


def _traffic_section(traffic: dict[str, int]) -> list[str]:
    if not traffic:
        return ["### Traffic", "", "No deployment takes traffic.", ""]
    rows = [f"| {name} | {weight}% |" for name, weight in traffic.items()]
    return ["### Traffic", "", "| deployment | traffic |", "|---|---:|", *rows, ""]


def _verdict_section(
    verdict: str, exit_code: int, result: dict[str, Any] | None, error: dict[str, Any] | None
) -> list[str]:
    out = ["### Verdict", ""]
    if exit_code == 0:
        out.append(f"**{verdict}**" + (" (unchanged)" if (result or {}).get("unchanged") else "") + ".")
        warnings = (result or {}).get("warnings") or []
        out += [""] + [f"- warning: {_one_line(w)}" for w in warnings]
        return [*out, ""]
    error = error or {}
    out.append(f"**{verdict}** (exit {exit_code}): {_one_line(error.get('message', ''))}")
    for problem in error.get("problems") or []:
        where = f"{problem.get('file')}:{problem.get('line')}" if problem.get("line") else problem.get("file")
        out.append(f"- `{where}`: {problem.get('field') or ''} {problem.get('message')}".rstrip())
    details = error.get("details") or {}
    for step in details.get("rollback") or []:
        out.append(f"- rollback: {step}")
    if error.get("hint"):
        out += ["", f"Hint: {_one_line(error['hint'])}"]
    tail = details.get("log_tail")
    if tail:
        lines = str(tail).splitlines()[-LOG_TAIL_LINES:]
        out += [
            "",
            "<details><summary>last lines of the deployment's log</summary>",
            "",
            "```text",
            *lines,
            "```",
            "",
            "</details>",
        ]
    return [*out, ""]


# -- render -------------------------------------------------------------------------------------
def render_markdown(manifest: str, files: list[Path], package_id: str) -> str:
    """What a push would send, for review: the list of files, small text files inline."""
    out = [
        f"## tdsp-deploy render `{manifest}`",
        "",
        f"Package `{package_id[:12]}`; {len(files)} file(s) written.",
        "",
    ]
    for path in files:
        out.append(f"<details><summary><code>{path.name}</code></summary>")
        out.append("")
        text = _readable(path)
        if text is None:
            out.append(f"(binary or larger than {RENDERED_INLINE_BYTES} bytes: see the artifact)")
        else:
            fence = "````" if "```" in text else "```"
            out += [f"{fence}{_language(path)}", text.rstrip("\n"), fence]
        out += ["", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


def _readable(path: Path) -> str | None:
    try:
        if path.stat().st_size > RENDERED_INLINE_BYTES:
            return None
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _language(path: Path) -> str:
    return {".json": "json", ".yml": "yaml", ".yaml": "yaml", ".sql": "sql", ".py": "python"}.get(
        path.suffix.lower(), ""
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
