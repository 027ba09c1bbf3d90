"""The A/B report: one self-contained HTML file a person opens and reads at a glance.

``write_report(analysis, path)`` takes the document tdsp_deploy.ab.analysis produces and
writes the verdict, the per-variant numbers, the sample-size progress, the metrics and the
guardrails as HTML tables, and three plots (latency distributions, effects with their
confidence intervals, traffic over time) as inline SVG. Nothing is loaded from the network:
no external CSS, scripts, fonts or images, so the file can be mailed, archived or opened
offline. Every string from the document is escaped; missing values show as a dash and
missing sections as a short note, so an experiment that has just started renders too.

matplotlib is imported inside ``write_report`` only: importing this module stays cheap.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import itertools
import math
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

DASH = "\u2014"

# The verdict's CSS class and the words shown for it.
_VERDICTS = {
    "promote": "promote",
    "keep control": "keep-control",
    "inconclusive": "inconclusive",
    "roll back": "roll-back",
}

# Variant colours: by role, unless the slots are named after colours we can honour.
_ROLE_COLOURS = {"control": "#4c72b0", "treatment": "#dd8452"}
_NAMED_COLOURS = {
    "blue": "#3b6ea5",
    "green": "#3a9a5b",
    "red": "#c0392b",
    "orange": "#e08a2c",
    "purple": "#8e5ea2",
    "yellow": "#c9a227",
    "teal": "#2a9d8f",
    "grey": "#7f7f7f",
    "gray": "#7f7f7f",
    "black": "#333333",
}
_DIRECTIONS = {"higher_is_better": "higher is better", "lower_is_better": "lower is better", "None": ""}
_EXTRA_COLOURS = ["#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


# -- public ---------------------------------------------------------------------------------


def write_report(analysis: dict, path: Path) -> Path:
    """Write the HTML report of ``analysis`` (the analysis document) to ``path``; return it."""
    import matplotlib

    matplotlib.use("Agg")  # headless; figures are built without pyplot's global state

    path = Path(path)
    document = _page(analysis if isinstance(analysis, dict) else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(document, encoding="utf-8")
    os.replace(temporary, path)
    return path


# -- small helpers ----------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ci(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    lo, hi = _finite(value[0]), _finite(value[1])
    if lo is None or hi is None:
        return None
    return (lo, hi) if lo <= hi else (hi, lo)


def _num(value: Any, digits: int = 4, signed: bool = False) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    x = _finite(value)
    if x is None:
        return DASH
    sign = "+" if signed else ""
    if x == 0:
        return "0"
    if abs(x) >= 10_000:
        return f"{x:{sign},.0f}"
    return f"{x:{sign}.{digits}g}"


def _count(value: Any) -> str:
    x = _finite(value)
    if x is None:
        return DASH
    return f"{int(x):,}" if x == int(x) else _num(x)


def _pct(value: Any, signed: bool = False, unit: str = "%") -> str:
    x = _finite(value)
    if x is None:
        return DASH
    x *= 100
    sign = "+" if signed else ""
    if abs(x) < 1e-9:  # floating-point dust of a zero (e.g. 5.4e-18%): a zero
        return f"0{unit}" if unit == "%" else f"0 {unit}"
    if abs(x) < 0.001:
        text = ("-" if x < 0 else sign) + "<0.001"
    else:
        text = f"{x:{sign}.2f}" if abs(x) >= 0.1 else f"{x:{sign}.3f}"
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"


def _ms(value: Any) -> str:
    x = _finite(value)
    if x is None:
        return DASH
    return f"{x:,.0f} ms" if abs(x) >= 1000 else f"{x:.3g} ms"


def _p(value: Any) -> str:
    x = _finite(value)
    if x is None:
        return DASH
    if x < 0.0001:
        return "&lt;0.0001"
    return f"{x:.4f}" if x < 0.01 else f"{x:.3f}"


def _with_ci(point: str, ci: tuple[float, float] | None, fmt) -> str:  # type: ignore[no-untyped-def]
    if ci is None:
        return point
    return f'{point} <span class="ci">[{fmt(ci[0])}, {fmt(ci[1])}]</span>'


def _when(value: Any) -> str:
    x = _finite(value)
    if x is None:
        return DASH
    try:
        return _dt.datetime.fromtimestamp(x, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return DASH


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def _variant_names(experiment: dict, variants: dict) -> list[str]:
    """Control first, then treatment, then whatever else the document has."""
    names: list[str] = []
    for key in ("control", "treatment"):
        name = experiment.get(key)
        if isinstance(name, str) and name and name not in names:
            names.append(name)
    for role in ("control", "treatment"):
        for name, data in variants.items():
            if _dict(data).get("role") == role and name not in names:
                names.append(str(name))
    names.extend(str(n) for n in variants if str(n) not in names)
    return names


def _role(name: str, experiment: dict, variants: dict) -> str:
    role = _dict(variants.get(name)).get("role")
    if isinstance(role, str) and role:
        return role
    if name == experiment.get("control"):
        return "control"
    if name == experiment.get("treatment"):
        return "treatment"
    return ""


def _colours(names: list[str], experiment: dict, variants: dict) -> dict[str, str]:
    named = [_NAMED_COLOURS.get(n.lower()) for n in names]
    if names and all(named) and len(set(named)) == len(named):
        return dict(zip(names, named, strict=True))  # type: ignore[arg-type]
    colours: dict[str, str] = {}
    extra = iter(_EXTRA_COLOURS * 4)
    for name in names:
        role = _role(name, experiment, variants)
        colour = _ROLE_COLOURS.get(role)
        if colour is None or colour in colours.values():
            colour = next(extra)
        colours[name] = colour
    return colours


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# -- the page -----------------------------------------------------------------------------------


def _page(analysis: dict) -> str:
    experiment = _dict(analysis.get("experiment"))
    variants = _dict(analysis.get("variants"))
    names = _variant_names(experiment, variants)
    colours = _colours(names, experiment, variants)
    context = {
        "experiment": experiment,
        "variants": variants,
        "names": names,
        "colours": colours,
        "spec": _dict(analysis.get("spec")),
    }

    endpoint = experiment.get("endpoint") or "unknown endpoint"
    sections = [
        _header(analysis, context),
        _sample_size_section(_dict(analysis.get("sample_size")), context),
        _metrics_section(_list(analysis.get("metrics")), context),
        _guardrails_section(_list(analysis.get("guardrails"))),
        _variants_section(context),
        _traffic_section(_list(analysis.get("traffic_over_time")), context),
    ]
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>A/B report: {_e(endpoint)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(sections)
        + f"\n<footer>Generated by tdsp-deploy on {_e(generated)}. "
        "Self-contained: no network resources.</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def _header(analysis: dict, context: dict) -> str:
    experiment, spec, colours = context["experiment"], context["spec"], context["colours"]
    endpoint = experiment.get("endpoint") or "unknown endpoint"
    control = experiment.get("control") or DASH
    treatment = experiment.get("treatment") or DASH

    def swatch(name: Any) -> str:
        colour = colours.get(name) if isinstance(name, str) else None
        dot = f'<span class="swatch" style="background:{colour}"></span>' if colour else ""
        return f"{dot}<strong>{_e(name)}</strong>"

    started, ended = _finite(experiment.get("started_at")), _finite(experiment.get("ended_at"))
    if ended is not None:
        end_text = _when(ended)
        span = f" ({_duration(ended - started)})" if started is not None else ""
    else:
        end_text = "still running"
        span = ""

    facts = [
        (
            "Variants",
            f'{swatch(control)} <span class="muted">control</span> vs '
            f'{swatch(treatment)} <span class="muted">treatment</span>',
        ),
        ("Mode", _e(experiment.get("mode") or DASH)),
        ("Started", _e(_when(started))),
        ("Ended", _e(end_text + span)),
    ]
    design = _design(spec)
    if design:
        facts.append(("Design", _e(design)))
    if experiment.get("id"):
        facts.append(("Experiment", f"<code>{_e(experiment['id'])}</code>"))
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)

    verdict = _dict(analysis.get("verdict"))
    decision = verdict.get("decision")
    css = _VERDICTS.get(decision, "unknown") if isinstance(decision, str) else "unknown"
    word = decision if isinstance(decision, str) and decision else "no verdict"
    reason = verdict.get("reason") or ("The analysis gave no verdict." if css == "unknown" else "")
    return (
        "<header>\n"
        f'<p class="eyebrow">A/B experiment report</p>\n<h1>{_e(endpoint)}</h1>\n'
        f'<dl class="facts">{dl}</dl>\n'
        f'<section class="verdict verdict-{css}" aria-label="verdict">'
        f'<div class="verdict-label">Verdict</div>'
        f'<div class="verdict-decision">{_e(word)}</div>'
        f'<p class="verdict-reason">{_e(reason)}</p></section>\n'
        "</header>"
    )


def _design(spec: dict) -> str:
    parts = []
    metric = _dict(spec.get("primary_metric"))
    if metric.get("name"):
        kind = f" ({metric['type']})" if metric.get("type") else ""
        direction = str(metric.get("direction") or "").replace("_", " ")
        parts.append(f"primary metric {metric['name']}{kind}" + (f", {direction}" if direction else ""))
    for key, label in (
        ("alpha", "\u03b1"),
        ("power", "power"),
        ("minimum_detectable_effect", "MDE"),
        ("baseline", "baseline"),
    ):
        if _finite(spec.get(key)) is not None:
            parts.append(f"{label} {_num(spec[key])}")
    return " \u00b7 ".join(parts)


def _sample_size_section(sample: dict, context: dict) -> str:
    names, colours, variants = context["names"], context["colours"], context["variants"]
    required = _finite(sample.get("required_per_variant"))
    collected = _dict(sample.get("collected"))
    rows = []
    for name in names or list(collected):
        have = _finite(collected.get(name))
        if have is None:
            have = _finite(_dict(variants.get(name)).get("n"))
        if required and required > 0:
            share = min(1.0, (have or 0) / required)
            bar = (
                f'<div class="bar" role="progressbar" aria-valuenow="{share * 100:.0f}" aria-valuemin="0" '
                f'aria-valuemax="100"><div class="fill{" done" if share >= 1 else ""}" '
                f'style="width:{share * 100:.1f}%;background:{colours.get(name, "#888")}"></div></div>'
            )
            text = f'{_count(have)} / {_count(required)} <span class="muted">({share * 100:.0f}%)</span>'
        else:
            bar = '<div class="bar unknown"></div>'
            text = f"{_count(have)} / {DASH}"
        rows.append(
            f'<tr><th scope="row">{_e(name)}</th><td class="progress-cell">{bar}</td>'
            f'<td class="num">{text}</td></tr>'
        )
    progress = _finite(sample.get("progress"))
    summary = f"Overall progress: <strong>{progress * 100:.0f}%</strong>" if progress is not None else ""
    if required is None:
        summary += (". " if summary else "") + (
            "The required sample size is unknown: the manifest's ab section needs a baseline to compute it."
        )
    else:
        summary += (
            " \u00b7 " if summary else ""
        ) + f"required per variant: <strong>{_count(required)}</strong>"
    body = (
        f'<table class="progress"><thead><tr><th>Variant</th><th>Collected vs required</th>'
        f'<th class="num">Requests</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        if rows
        else _note("No variants yet.")
    )
    return f"<section><h2>Sample size</h2><p>{summary}</p>{body}</section>"


def _is_primary(metric: dict, index: int, spec: dict, metrics: list) -> bool:
    wanted = _dict(spec.get("primary_metric")).get("name")
    if wanted and any(_dict(m).get("name") == wanted for m in metrics):
        return metric.get("name") == wanted
    return index == 0


def _metric_formatters(metric: dict):  # type: ignore[no-untyped-def]
    """Binary metrics are rates: values in %, effects in percentage points."""
    if metric.get("type") == "binary":
        return (lambda v: _pct(v)), (lambda v: _pct(v, signed=True, unit="pp"))
    return (lambda v: _num(v)), (lambda v: _num(v, signed=True))


def _metrics_section(metrics: list, context: dict) -> str:
    spec = context["spec"]
    metrics = [m for m in metrics if isinstance(m, dict)]
    if not metrics:
        return (
            "<section><h2>Metrics</h2>"
            + _note("No metrics yet: no outcomes have been joined to the requests so far.")
            + "</section>"
        )
    rows = []
    for index, metric in enumerate(metrics):
        value, effect = _metric_formatters(metric)
        primary = _is_primary(metric, index, spec, metrics)
        significant = metric.get("significant")
        badge = (
            '<span class="badge sig">significant</span>'
            if significant is True
            else '<span class="badge nosig">no</span>'
            if significant is False
            else DASH
        )
        direction = _DIRECTIONS.get(str(metric.get("direction")), str(metric.get("direction") or ""))
        name = (
            f"{_e(metric.get('name') or DASH)}"
            + (' <span class="badge primary">primary</span>' if primary else "")
            + (
                f'<div class="muted small">{_e(metric.get("type") or "")}'
                f"{' · ' + _e(direction) if direction else ''}</div>"
            )
        )
        rows.append(
            f'<tr class="{"primary" if primary else ""}"><th scope="row">{name}</th>'
            f'<td class="nowrap">{_e(metric.get("test") or DASH)}</td>'
            f'<td class="num">{_arm(metric, "control", value)}</td>'
            f'<td class="num">{_arm(metric, "treatment", value)}</td>'
            f'<td class="num">{_with_ci(effect(metric.get("effect")), _ci(metric.get("effect_ci")), effect)}'
            "</td>"
            f'<td class="num">{_pct(metric.get("relative_effect"), signed=True)}</td>'
            f'<td class="num">{_p(metric.get("p_value"))}</td>'
            f'<td class="num">{_p(metric.get("p_adjusted"))}</td>'
            f"<td>{badge}</td></tr>"
        )
    table = (
        '<table class="metrics"><thead><tr><th>Metric</th><th>Test</th><th class="num">Control</th>'
        '<th class="num">Treatment</th><th class="num">Effect [CI]</th><th class="num">Relative</th>'
        '<th class="num">p-value</th><th class="num">Holm p</th><th>Significant</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    plot = _plot(
        "Effect of treatment vs control, with confidence intervals", lambda: _forest_svg(metrics, context)
    )
    return (
        "<section><h2>Metrics</h2>"
        '<p class="muted small">Effect = treatment \u2212 control; binary metrics in percentage points (pp). '
        "Holm p: p-value adjusted for testing several metrics at once (not the primary metric's: "
        "it is the question the experiment was planned for).</p>"
        f"{table}{plot}</section>"
    )


def _arm(metric: dict, role: str, fmt) -> str:  # type: ignore[no-untyped-def]
    """One variant's value of a metric, with its own interval when the metric has one."""
    return _with_ci(fmt(metric.get(role)), _ci(metric.get(f"{role}_ci")), fmt)


def _guardrail_value(name: str, value: Any) -> str:
    lowered = name.lower()
    if "error_rate" in lowered or "rate" in lowered:
        return _pct(value)
    if "ms" in lowered or "latency" in lowered or "p95" in lowered or "p50" in lowered:
        return _ms(value)
    return _num(value)


def _guardrails_section(guardrails: list) -> str:
    guardrails = [g for g in guardrails if isinstance(g, dict)]
    if not guardrails:
        return "<section><h2>Guardrails</h2>" + _note("No guardrails configured.") + "</section>"
    rows = []
    breached_count = 0
    for guard in guardrails:
        name = str(guard.get("name") or DASH)
        breached = guard.get("breached") is True
        breached_count += breached
        status = (
            '<span class="badge breached">BREACHED</span>'
            if breached
            else '<span class="badge ok">ok</span>'
            if guard.get("breached") is False
            else DASH
        )
        rows.append(
            f'<tr class="{"breached" if breached else ""}"><th scope="row">{_e(name.replace("_", " "))}</th>'
            f'<td class="num">{_guardrail_value(name, guard.get("limit"))}</td>'
            f'<td class="num">{_guardrail_value(name, guard.get("control"))}</td>'
            f'<td class="num">{_guardrail_value(name, guard.get("treatment"))}</td>'
            f"<td>{status}</td></tr>"
        )
    summary = (
        f'<p class="alert">{breached_count} guardrail{"s" if breached_count != 1 else ""} breached.</p>'
        if breached_count
        else ""
    )
    return (
        "<section><h2>Guardrails</h2>"
        + summary
        + '<table><thead><tr><th>Guardrail</th><th class="num">Limit</th><th class="num">Control</th>'
        '<th class="num">Treatment</th><th>Status</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _variants_section(context: dict) -> str:
    names, variants, colours, experiment = (
        context["names"],
        context["variants"],
        context["colours"],
        context["experiment"],
    )
    if not names:
        return "<section><h2>Variants</h2>" + _note("No variant data yet.") + "</section>"
    rows = []
    for name in names:
        data = _dict(variants.get(name))
        latency = _dict(data.get("latency_ms"))
        role = _role(name, experiment, variants)
        rows.append(
            f'<tr><th scope="row"><span class="swatch" style="background:{colours.get(name, "#888")}"></span>'
            f'{_e(name)} <span class="muted small">{_e(role)}</span></th>'
            f'<td class="num">{_count(data.get("n"))}</td>'
            f'<td class="num">{_count(data.get("errors"))}</td>'
            f'<td class="num">{_with_ci(_pct(data.get("error_rate")), _ci(data.get("error_rate_ci")), _pct)}'
            "</td>"
            f'<td class="num">{_with_ci(_ms(latency.get("p50")), _ci(latency.get("p50_ci")), _ms)}</td>'
            f'<td class="num">{_with_ci(_ms(latency.get("p95")), _ci(latency.get("p95_ci")), _ms)}</td>'
            f'<td class="num">{_ms(latency.get("mean"))}</td></tr>'
        )
    table = (
        '<table><thead><tr><th>Variant</th><th class="num">Requests</th><th class="num">Errors</th>'
        '<th class="num">Error rate [CI]</th><th class="num">Latency p50 [CI]</th>'
        '<th class="num">Latency p95 [CI]</th><th class="num">Mean latency</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    plot = _plot("Latency distribution per variant", lambda: _latency_svg(context))
    return f"<section><h2>Variants</h2>{table}{plot}</section>"


def _traffic_section(traffic: list, context: dict) -> str:
    plot = _plot("Requests over time per variant", lambda: _traffic_svg(traffic, context))
    return f"<section><h2>Traffic</h2>{plot}</section>"


def _plot(title: str, render) -> str:  # type: ignore[no-untyped-def]
    """A figure with its caption; a note instead when there is nothing to draw (render returns
    a string that is not SVG) or the drawing fails (a report is still better than none)."""
    try:
        result = render()
    except Exception as error:  # noqa: BLE001 - the rest of the report is still worth having
        result = f"Plot unavailable ({type(error).__name__}: {error})."
    if result.startswith("<svg"):
        return f'<figure class="plot">{result}<figcaption>{_e(title)}</figcaption></figure>'
    return _note(result)


# -- plots ----------------------------------------------------------------------------------------

_svg_ids = itertools.count(1)  # prefixes that keep the ids of several inline SVGs apart


def _svg(figure) -> str:  # type: ignore[no-untyped-def]
    """The figure as an inline <svg> element: no XML prolog, no DOCTYPE (whose DTD is a URL),
    no metadata, and ids made unique in the page."""
    import matplotlib

    prefix = f"f{next(_svg_ids)}-"
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(
            buffer,
            format="svg",
            bbox_inches="tight",
            pad_inches=0.08,
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = text.replace(' id="', f' id="{prefix}').replace('href="#', f'href="#{prefix}')
    text = text.replace("url(#", f"url(#{prefix}")
    return text.strip()


def _plain(text: Any) -> str:
    """A label matplotlib draws as it is: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure


def _style(ax) -> None:  # type: ignore[no-untyped-def]
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.spines["left"].set_color("#999999")
    ax.spines["bottom"].set_color("#999999")
    ax.tick_params(colors="#444444", labelsize=9)
    ax.grid(True, color="#e6e6e6", linewidth=0.7)
    ax.set_axisbelow(True)


def _latency_svg(context: dict) -> str:
    names, variants, colours = context["names"], context["variants"], context["colours"]
    series = []
    for name in names:
        latency = _dict(_dict(variants.get(name)).get("latency_ms"))
        histogram = _dict(latency.get("histogram"))
        edges = [_finite(x) for x in _list(histogram.get("edges"))]
        counts = [_finite(x) for x in _list(histogram.get("counts"))]
        if len(edges) != len(counts) + 1 or not counts or any(x is None for x in edges + counts):
            continue
        total = sum(counts)  # type: ignore[arg-type]
        if total <= 0:
            continue
        series.append((name, edges, [c / total for c in counts], latency))  # type: ignore[operator]
    if not series:
        return "No latency data yet."

    # The x range spans the bins that hold requests, not empty tails of the histogram.
    occupied = [
        (edges[i], edges[i + 1]) for _, edges, shares, _ in series for i, share in enumerate(shares) if share
    ]
    low, high = min(lo for lo, _ in occupied), max(hi for _, hi in occupied)
    # on a log axis a bin starting at 0 is drawn from half its right edge
    positive = min((lo if lo > 0 else hi / 2 for lo, hi in occupied if hi > 0), default=0.0)
    log = positive > 0 and high / positive > 100
    if log:
        low = positive

    figure = _figure(9.5, 2.9)
    ax = figure.add_subplot()
    _style(ax)
    for name, edges, shares, latency in series:
        if log:  # a log axis cannot show 0: the first bin starts half way to its right edge
            edges = list(edges)
            if edges[0] <= 0 < edges[1]:
                edges[0] = edges[1] / 2
            first = next(i for i, e in enumerate(edges) if e > 0)
            edges, shares = edges[first:], shares[first:]
        colour = colours.get(name, "#888888")
        ax.stairs(shares, edges, fill=True, color=colour, alpha=0.28, linewidth=0)
        p95 = _finite(latency.get("p95"))
        label = f"{_plain(name)}: n={_count(_sum_counts(context, name))}" + (
            f", p95 {_ms(p95)} (dashed)" if p95 else ""
        )
        ax.stairs(shares, edges, color=colour, linewidth=1.6, label=label)
        if p95 is not None and (not log or p95 > 0):
            ax.axvline(p95, color=colour, linestyle="--", linewidth=1.1)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.3, high * 1.3)
    else:
        ax.set_xlim(low - 0.03 * (high - low), high + 0.03 * (high - low))
    ax.set_xlabel("latency (ms)" + (", log scale" if log else ""), fontsize=9, color="#444444")
    ax.set_ylabel("share of requests", fontsize=9, color="#444444")
    ax.set_ylim(bottom=0)
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.legend(frameon=False, fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(series))
    return _svg(figure)


def _sum_counts(context: dict, name: str) -> Any:
    data = _dict(context["variants"].get(name))
    n = _finite(data.get("n"))
    if n is not None:
        return n
    counts = _list(_dict(_dict(data.get("latency_ms")).get("histogram")).get("counts"))
    return sum(c for c in counts if _finite(c) is not None)


def _forest_svg(metrics: list, context: dict) -> str:
    spec = context["spec"]
    rows = []
    for index, metric in enumerate(metrics):
        effect = _finite(metric.get("effect"))
        if effect is None:
            continue
        rows.append((metric, _is_primary(metric, index, spec, metrics), effect, _ci(metric.get("effect_ci"))))
    if not rows:
        return "No metric effects to plot yet."
    rows.sort(key=lambda row: not row[1])  # the primary metric on top

    # Metrics have different units (rates, milliseconds, ...): one row each, with its own scale.
    figure = _figure(9.5, 0.55 + 0.72 * len(rows))
    axes = figure.subplots(len(rows), 1, squeeze=False)[:, 0]
    figure.subplots_adjust(hspace=0.9)
    for ax, (metric, primary, effect, ci) in zip(axes, rows, strict=True):
        binary = metric.get("type") == "binary"
        scale = 100.0 if binary else 1.0
        point = effect * scale
        lo, hi = (ci[0] * scale, ci[1] * scale) if ci else (point, point)
        significant = metric.get("significant") is True
        colour = _effect_colour(metric, effect) if significant else "#8a8a8a"
        ax.axvline(0, color="#555555", linewidth=1, zorder=1)
        mde = _finite(spec.get("minimum_detectable_effect")) if primary else None
        if mde is not None:  # the effect the experiment was planned to see, in its better direction
            sign = -1.0 if str(metric.get("direction")) in ("lower_is_better", "lower") else 1.0
            ax.axvline(sign * mde * scale, color="#1f5fa8", linestyle="--", linewidth=1, zorder=1)
            ax.text(sign * mde * scale, 0.42, " MDE", color="#1f5fa8", fontsize=7.5, va="center")
            lo, hi = min(lo, sign * mde * scale), max(hi, sign * mde * scale)
        ax.hlines(0, lo, hi, color=colour, linewidth=2.4 if primary else 1.8, zorder=2)
        ax.vlines([lo, hi], -0.18, 0.18, color=colour, linewidth=1.4, zorder=2)
        ax.plot(
            [point],
            [0],
            marker="D" if primary else "o",
            markersize=8 if primary else 6.5,
            color=colour,
            zorder=3,
        )
        span = max(abs(lo), abs(hi), abs(point)) or 1.0
        left, right = min(lo, 0.0), max(hi, 0.0)
        pad = 0.12 * ((right - left) or span)
        ax.set_xlim(left - pad, right + pad)
        ax.set_ylim(-0.6, 0.6)
        ax.set_yticks([])
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.spines["bottom"].set_color("#999999")
        ax.tick_params(axis="x", colors="#444444", labelsize=8)
        ax.grid(True, axis="x", color="#eeeeee", linewidth=0.7)
        ax.set_axisbelow(True)
        unit = " pp" if binary else ""
        label = _plain(metric.get("name") or DASH) + ("  (primary)" if primary else "")
        label += "  \u00b7 percentage points" if binary else ""
        ax.set_title(
            label,
            loc="left",
            fontsize=9.5,
            fontweight="bold" if primary else "normal",
            color="#222222",
            pad=3,
        )
        ci_text = f" [{lo:+.3g}, {hi:+.3g}]" if ci else ""
        ax.set_title(
            f"{point:+.3g}{unit}{ci_text}" + ("  significant" if significant else ""),
            loc="right",
            fontsize=8.5,
            color=colour,
            pad=3,
        )
    return _svg(figure)


def _effect_colour(metric: dict, effect: float) -> str:
    direction = str(metric.get("direction") or "")
    if direction in ("higher_is_better", "higher"):
        return "#2e7d32" if effect > 0 else "#c62828"
    if direction in ("lower_is_better", "lower"):
        return "#2e7d32" if effect < 0 else "#c62828"
    return "#1f5fa8"


_MAX_TRAFFIC_POINTS = 240


def _traffic_svg(traffic: list, context: dict) -> str:
    buckets = []
    for entry in traffic:
        entry = _dict(entry)
        t = _finite(entry.get("t"))
        if t is not None:
            buckets.append((t, entry))
    buckets.sort(key=lambda b: b[0])
    names = list(context["names"])
    for _, entry in buckets:
        names.extend(k for k in entry if k != "t" and k not in names and _finite(entry[k]) is not None)
    if not buckets or not names:
        return "No traffic recorded yet."
    values = {name: [(_finite(entry.get(name)) or 0.0) for _, entry in buckets] for name in names}
    if not any(v for series in values.values() for v in series):
        return "No traffic recorded yet."

    import matplotlib.dates as mdates

    starts = [t for t, _ in buckets]
    steps = sorted(b - a for a, b in zip(starts, starts[1:], strict=False) if b > a)
    width = steps[len(steps) // 2] if steps else None
    if len(starts) > _MAX_TRAFFIC_POINTS:  # a week of minutes: merge buckets, keep the file small
        k = math.ceil(len(starts) / _MAX_TRAFFIC_POINTS)
        starts = starts[::k]
        values = {
            name: [sum(series[i : i + k]) for i in range(0, len(series), k)]
            for name, series in values.items()
        }
        width = width * k if width else None
    times = [_dt.datetime.fromtimestamp(t, tz=_dt.UTC) for t in starts]

    figure = _figure(9.5, 2.6)
    ax = figure.add_subplot()
    _style(ax)
    for name in names:
        colour = context["colours"].get(name, "#888888")
        ax.plot(
            times,
            values[name],
            color=colour,
            linewidth=1.7,
            label=_plain(name),
            marker="o" if len(times) <= 3 else None,
            markersize=4,
        )
    locator = mdates.AutoDateLocator(tz=_dt.UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=_dt.UTC))
    ax.set_ylim(0, max(v for series in values.values() for v in series) * 1.12)
    per = f" per {_duration(width)}" if width else ""
    ax.set_ylabel(f"requests{per}", fontsize=9, color="#444444")
    ax.set_xlabel("time (UTC)", fontsize=9, color="#444444")
    ax.legend(frameon=False, fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(names))
    return _svg(figure)


_CSS = """
:root { --ink: #1f2328; --muted: #6a737d; --rule: #d8dee4; --soft: #f6f8fa; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 32px 40px; }
h1 { font-size: 28px; margin: 0 0 12px; word-break: break-word; }
h2 { font-size: 19px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--rule); }
section { margin: 28px 0; break-inside: avoid; page-break-inside: avoid; }
.eyebrow { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: 12px;
  color: var(--muted); }
.facts { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 0 0 18px; }
.facts div { min-width: 0; }
.facts dt { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
.facts dd { margin: 0; }
.muted { color: var(--muted); }
.small { font-size: 12.5px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 50%; margin-right: 6px;
  vertical-align: baseline; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.verdict { margin: 8px 0 0; padding: 16px 22px; border-left: 10px solid; border-radius: 6px;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.verdict-label { font-size: 12px; text-transform: uppercase; letter-spacing: .08em; opacity: .8; }
.verdict-decision { font-size: 44px; font-weight: 800; line-height: 1.1; text-transform: uppercase;
  letter-spacing: .02em; }
.verdict-reason { font-size: 17px; margin: 6px 0 0; }
.verdict-promote { background: #e8f5e9; border-color: #2e7d32; color: #1b5e20; }
.verdict-keep-control { background: #eeeeee; border-color: #757575; color: #424242; }
.verdict-inconclusive { background: #fff4e0; border-color: #f0a000; color: #7a4a00; }
.verdict-roll-back { background: #fdecea; border-color: #c62828; color: #8e1616; }
.verdict-unknown { background: var(--soft); border-color: #bbb; color: var(--muted); }
table { width: 100%; border-collapse: collapse; font-size: 14px; margin: 6px 0 12px; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top; }
thead th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
  border-bottom: 2px solid var(--rule); white-space: nowrap; }
tbody th { font-weight: 600; }
tbody th .muted { font-weight: 400; }
table.metrics tbody th { min-width: 150px; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: var(--muted); font-size: 12.5px; }
.nowrap { white-space: nowrap; }
table.metrics .ci { display: block; }
tr.primary { background: #f5f9ff; }
tr.breached { background: #fdecea; }
tr.breached th, tr.breached td { color: #8e1616; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.sig { background: #dff3e4; color: #1b5e20; }
.badge.nosig { background: #eeeeee; color: #555; }
.badge.primary { background: #dbe9fb; color: #1f4f8a; }
.badge.ok { background: #dff3e4; color: #1b5e20; }
.badge.breached { background: #c62828; color: #fff; }
.alert { color: #8e1616; font-weight: 600; }
.note { color: var(--muted); font-style: italic; background: var(--soft); padding: 10px 14px;
  border-radius: 6px; }
.progress-cell { width: 60%; vertical-align: middle; }
.bar { height: 14px; background: #e9ecef; border-radius: 7px; overflow: hidden;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.bar .fill { height: 100%; border-radius: 7px; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.bar.unknown {
  background: repeating-linear-gradient(45deg, #eceff1, #eceff1 6px, #f7f8f9 6px, #f7f8f9 12px); }
figure.plot { margin: 14px 0 0; break-inside: avoid; page-break-inside: avoid; }
figure.plot svg { display: block; width: 100%; height: auto; }
figure.plot svg text {
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif !important; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
footer { margin-top: 36px; font-size: 12px; color: var(--muted); border-top: 1px solid var(--rule);
  padding-top: 8px; }
@media print {
  body { font-size: 12px; }
  main { max-width: none; padding: 0; }
  .verdict-decision { font-size: 32px; }
  section { margin: 18px 0; }
  a { color: inherit; text-decoration: none; }
}
"""
