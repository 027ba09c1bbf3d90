"""A rollout, for people: a few lines for ``rollout status``, and the HTML report — each
step's traffic, both deployments' error rate and latency over time with the guardrail limits
drawn, and the decision with its evidence. The page and its plots are the A/B report's
(tdsp_deploy.ab.report): the same stylesheet, figure style, colours and inline SVG.

matplotlib is imported inside ``write_report`` only.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from tdsp_deploy.rollout.state import RolloutState

_VERDICT_CLASS = {
    "promoted": "promote",
    "rolled_back": "roll-back",
    "aborted": "keep-control",
    "stopped": "inconclusive",
    "running": "unknown",
    "paused": "inconclusive",
}


def status_lines(state: RolloutState) -> list[str]:
    steps = " -> ".join(f"{s['traffic']}%" for s in state.steps)
    lines = [
        f"rollout of '{state.deployment}' on endpoint '{state.endpoint}'"
        + (f" (control '{state.control}')" if state.control else ""),
        f"  status: {state.status}"
        + ("" if state.finished else f", step {state.step + 1} of {len(state.steps)}"),
        f"  steps: {steps}",
    ]
    if state.status in ("running", "paused"):
        split = ", ".join(f"{k}={v}%" for k, v in sorted(state.split_at(state.step).items()))
        lines.append(f"  traffic: {split}")
        from_tag = bool(state.decision and state.decision.get("origin"))  # walked elsewhere
        if state.status == "running" and not state.walker_alive() and not from_tag:
            lines.append("  no process is walking it: `tdsp-deploy rollout resume` continues it")
    if state.checks:
        from tdsp_deploy.rollout.machine import describe_look

        lines.append(f"  last look: {describe_look(state.checks[-1], len(state.steps))}")
    if state.decision:
        reason = state.decision.get("reason", "")
        guardrail = state.decision.get("guardrail")
        if guardrail:
            reason += f": {guardrail['name']} ({guardrail['detail']})"
        elif state.decision.get("detail"):
            reason += f": {state.decision['detail']}"
        lines.append(f"  decision: {reason}")
    return lines


def write_report(state: RolloutState, path: Path) -> Path:
    """Write the rollout's HTML report to ``path``; return it."""
    import matplotlib

    matplotlib.use("Agg")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(_page(state), encoding="utf-8")
    os.replace(temporary, path)
    return path


def _page(state: RolloutState) -> str:
    from tdsp_deploy.ab import report as ab

    colours = {state.deployment: _colour(state.deployment, "#dd8452")}
    if state.control:
        colours[state.control] = _colour(state.control, "#4c72b0")
    sections = [
        _header(state),
        _steps_section(state),
        "<section><h2>Error rate</h2>"
        + ab._plot(
            "Error rate of each deployment since its step began, with the guardrail limits",
            lambda: _series_svg(state, colours, "error_rate"),
        )
        + "</section>",
        "<section><h2>Latency</h2>"
        + ab._plot(
            "p95 latency of each deployment since its step began, with the guardrail limits",
            lambda: _series_svg(state, colours, "p95_ms"),
        )
        + "</section>",
        "<section><h2>Traffic</h2>"
        + ab._plot("The new deployment's share of live traffic", lambda: _traffic_svg(state, colours))
        + "</section>",
    ]
    return ab.html_page(f"Rollout report: {state.endpoint}", sections)


def _colour(name: str, fallback: str) -> str:
    from tdsp_deploy.ab import report as ab

    return ab._NAMED_COLOURS.get(name.lower(), fallback)


def _header(state: RolloutState) -> str:
    from tdsp_deploy.ab import report as ab

    decision = state.decision or {}
    reason = str(decision.get("reason") or ("in progress" if not state.finished else ""))
    guardrail = decision.get("guardrail")
    evidence = ""
    if guardrail:
        evidence = (
            f"{guardrail['name']}: value {_fmt(guardrail['name'], guardrail.get('value'))}, limit"
            f" {_fmt(guardrail['name'], guardrail.get('limit'))} — {guardrail.get('detail', '')}"
        )
    elif decision.get("detail"):
        evidence = str(decision["detail"])
    css = _VERDICT_CLASS.get(state.status, "unknown")
    facts = [
        ("endpoint", state.endpoint),
        ("new deployment", state.deployment),
        ("control", state.control or "—"),
        ("started", _when(state.started_at)),
        ("alpha", str(state.guardrails.get("alpha"))),
        ("checked every", f"{state.guardrails.get('check_every')} s"),
    ]
    facts_html = "".join(f"<div><dt>{ab._e(k)}</dt><dd>{ab._e(v)}</dd></div>" for k, v in facts)
    return (
        '<section><p class="eyebrow">Staged rollout</p>'
        f"<h1>{ab._e(state.endpoint)}: {ab._e(state.deployment)}</h1>"
        f'<dl class="facts">{facts_html}</dl>'
        f'<div class="verdict verdict-{css}"><div class="verdict-label">decision</div>'
        f'<div class="verdict-decision">{ab._e(state.status.replace("_", " "))}</div>'
        f'<p class="verdict-reason">{ab._e(reason)}</p>'
        + (f'<p class="small">{ab._e(evidence)}</p>' if evidence else "")
        + "</div></section>"
    )


def _steps_section(state: RolloutState) -> str:
    from tdsp_deploy.ab import report as ab

    passed = {p["step"]: p for p in state.steps_passed}
    rows = []
    for index, step in enumerate(state.steps, start=1):
        if index in passed:
            outcome, look = "passed", passed[index]
        elif state.finished and index == state.step + 1:
            outcome, look = state.status.replace("_", " "), _last_look(state, index)
        elif index == state.step + 1 and not state.finished:
            outcome, look = state.status, _last_look(state, index)
        else:
            outcome, look = ("—", None)
        new = (look or {}).get("new") or {}
        control = (look or {}).get("control") or {}
        bake = "—" if step.get("bake") is None else f"{float(step['bake']):g} s"
        cells = [
            f"<th>{index}</th>",
            f"<td class='num'>{step['traffic']}%</td>",
            f"<td class='num'>{ab._e(bake)}</td>",
            f"<td>{ab._e(outcome)}</td>",
        ]
        for arm in (new, control):
            cells += [
                f"<td class='num'>{_count(arm.get('requests'))}</td>",
                f"<td class='num'>{_pct(arm.get('error_rate'))}</td>",
                f"<td class='num'>{_ms(arm.get('p95_ms'))}</td>",
            ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    columns = ["step", "traffic", "bake", "outcome", "new: requests", "errors", "p95"]
    columns += ["control: requests", "errors", "p95"]
    head = "<thead><tr>" + "".join(f"<th>{ab._e(c)}</th>" for c in columns) + "</tr></thead>"
    limits = ", ".join(
        f"{k}: {v}" for k, v in state.guardrails.items() if v is not None and k.startswith(("max_", "min_"))
    )
    return (
        f"<section><h2>Steps</h2><table>{head}<tbody>{''.join(rows)}</tbody></table>"
        f"<p class='small muted'>Guardrails: {ab._e(limits)}. Numbers are each step's last look.</p>"
        "</section>"
    )


def _last_look(state: RolloutState, step: int) -> dict[str, Any] | None:
    return next((c for c in reversed(state.checks) if c["step"] == step), None)


def _series_svg(state: RolloutState, colours: dict[str, str], key: str) -> str:
    from tdsp_deploy.ab import report as ab

    if not state.checks:
        return "No look at the metrics yet."
    figure = ab._figure(9.5, 2.8)
    ax = figure.add_subplot()
    ab._style(ax)
    scale = 100.0 if key == "error_rate" else 1.0
    drawn = False
    for role, name in (("new", state.deployment), ("control", state.control)):
        if name is None:
            continue
        points = [
            (_dt.datetime.fromtimestamp(c["t"], tz=_dt.UTC), c[role][key] * scale)
            for c in state.checks
            if c.get(role) and c[role].get(key) is not None
        ]
        if points:
            times, values = zip(*points, strict=True)
            ax.plot(
                times,
                values,
                color=colours[name],
                linewidth=1.7,
                marker="o",
                markersize=3,
                label=ab._plain(name),
            )
            drawn = True
    if not drawn:
        return "No request answered yet."
    limits = [("max_error_rate", "limit")] if key == "error_rate" else [("max_p95_ms", "p95 limit")]
    for name, label in limits:
        value = state.guardrails.get(name)
        if value is not None:
            ax.axhline(float(value) * scale, color="#c62828", linestyle="--", linewidth=1.2, label=label)
    ax.set_ylabel("errors (%)" if key == "error_rate" else "p95 (ms)", fontsize=9, color="#444444")
    ax.set_xlabel("time (UTC)", fontsize=9, color="#444444")
    ax.legend(frameon=False, fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4)
    return ab._svg(figure)


def _traffic_svg(state: RolloutState, colours: dict[str, str]) -> str:
    from tdsp_deploy.ab import report as ab

    if not state.checks:
        return "No look at the metrics yet."
    times = [_dt.datetime.fromtimestamp(c["t"], tz=_dt.UTC) for c in state.checks]
    shares = [c["traffic"] for c in state.checks]
    if state.status == "rolled_back" or state.status == "aborted":
        times.append(_dt.datetime.fromtimestamp(state.decision["at"], tz=_dt.UTC))  # type: ignore[index]
        shares.append(0)
    elif state.status == "promoted" and state.decision:
        times.append(_dt.datetime.fromtimestamp(state.decision["at"], tz=_dt.UTC))
        shares.append(100)
    figure = ab._figure(9.5, 2.2)
    ax = figure.add_subplot()
    ab._style(ax)
    ax.step(times, shares, where="post", color=colours[state.deployment], linewidth=1.8)
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"% to {ab._plain(state.deployment)}", fontsize=9, color="#444444")
    ax.set_xlabel("time (UTC)", fontsize=9, color="#444444")
    return ab._svg(figure)


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "—"
    return f"{float(value):.1f} ms" if name.endswith("_ms") else f"{float(value):.2%}"


def _count(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{float(value):.2%}"


def _ms(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1f} ms"


def _when(t: float | None) -> str:
    if t is None:
        return "—"
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
