"""The A/B report's plots: latency distributions, effects with their confidence intervals and
traffic over time, each drawn with matplotlib into an inline SVG element.

matplotlib is imported inside the functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import datetime as _dt
import io
import itertools
import math
import re
from typing import Any

from tdsp_deploy.ab.report_values import (
    DASH,
    _ci,
    _count,
    _dict,
    _duration,
    _e,
    _finite,
    _is_primary,
    _list,
    _ms,
    _note,
)


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
