"""Reading the analysis document's values for the A/B report, and showing them as text.

Every value from the document may be missing or of the wrong type (an experiment that has just
started); these helpers turn it into escaped text or a dash, never an exception. The variant
names, roles and colours are chosen here once so that tables and plots agree.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any

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


def _is_primary(metric: dict, index: int, spec: dict, metrics: list) -> bool:
    wanted = _dict(spec.get("primary_metric")).get("name")
    if wanted and any(_dict(m).get("name") == wanted for m in metrics):
        return metric.get("name") == wanted
    return index == 0


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# -- the page -----------------------------------------------------------------------------------
