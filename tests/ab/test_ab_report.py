"""The A/B report: a self-contained HTML file that renders every state an experiment can be in."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy.ab.report import write_report

START = 1_717_236_000  # 2024-06-01 10:00:00 UTC


def _histogram(median_ms: float, sigma: float, n: int) -> dict[str, list]:
    """Log-spaced edges from 1 ms to 10 s and log-normal counts summing to about n."""
    edges = [round(10 ** (i / 10), 3) for i in range(0, 41)]
    counts = []
    for lo, hi in zip(edges, edges[1:], strict=False):

        def cdf(x: float) -> float:
            return 0.5 * (1 + math.erf((math.log(x) - math.log(median_ms)) / (sigma * math.sqrt(2))))

        counts.append(round(n * (cdf(hi) - cdf(lo))))
    return {"edges": edges, "counts": counts}


def _variant(role: str, n: int, errors: int, p50: float, p95: float) -> dict[str, Any]:
    rate = errors / n if n else None
    return {
        "role": role,
        "n": n,
        "errors": errors,
        "error_rate": rate,
        "error_rate_ci": [max(0.0, rate - 0.002), rate + 0.002] if rate is not None else None,
        "latency_ms": {
            "p50": p50,
            "p50_ci": [p50 * 0.97, p50 * 1.03],
            "p95": p95,
            "p95_ci": [p95 * 0.94, p95 * 1.06],
            "mean": p50 * 1.2,
            "histogram": _histogram(p50, 0.9, n),
        },
    }


def promote_document() -> dict[str, Any]:
    return {
        "experiment": {
            "id": "exp-7f3a",
            "endpoint": "churn-model",
            "control": "blue",
            "treatment": "green",
            "mode": "split",
            "started_at": START,
            "ended_at": START + 3 * 3600 + 1200,
        },
        "spec": {
            "primary_metric": {"name": "conversion", "type": "binary", "direction": "higher_is_better"},
            "alpha": 0.05,
            "power": 0.8,
            "minimum_detectable_effect": 0.02,
            "baseline": 0.1,
            "guardrails": {"max_error_rate": 0.02, "max_p95_ms": 250},
        },
        "variants": {
            "blue": _variant("control", 4120, 21, 38.0, 120.0),
            "green": _variant("treatment", 4088, 19, 35.5, 110.0),
        },
        "sample_size": {
            "required_per_variant": 3841,
            "collected": {"blue": 4120, "green": 4088},
            "progress": 1.0,
        },
        "metrics": [
            {
                "name": "conversion",
                "type": "binary",
                "test": "two-proportion z-test",
                "control": 0.101,
                "treatment": 0.127,
                "effect": 0.026,
                "effect_ci": [0.012, 0.040],
                "relative_effect": 0.257,
                "p_value": 0.00021,
                "p_adjusted": 0.00042,
                "significant": True,
                "direction": "higher_is_better",
            },
            {
                "name": "basket_value",
                "type": "continuous",
                "test": "Welch t-test",
                "control": 52.3,
                "treatment": 53.1,
                "effect": 0.8,
                "effect_ci": [-0.9, 2.5],
                "relative_effect": 0.0153,
                "p_value": 0.36,
                "p_adjusted": 0.36,
                "significant": False,
                "direction": "higher_is_better",
            },
        ],
        "guardrails": [
            {
                "name": "max_error_rate",
                "limit": 0.02,
                "control": 0.0051,
                "treatment": 0.0046,
                "breached": False,
            },
            {"name": "max_p95_ms", "limit": 250, "control": 120.0, "treatment": 110.0, "breached": False},
        ],
        "verdict": {
            "decision": "promote",
            "reason": "green raises conversion by 2.6 pp (p=0.0004) and no guardrail is breached.",
        },
        "traffic_over_time": [
            {"t": START + i * 300, "blue": 190 + (i * 7) % 40, "green": 185 + (i * 11) % 45}
            for i in range(44)
        ],
    }


def empty_document() -> dict[str, Any]:
    return {
        "experiment": {
            "id": "exp-0001",
            "endpoint": "fresh",
            "control": "blue",
            "treatment": "green",
            "mode": "mirror",
            "started_at": START,
            "ended_at": None,
        },
        "spec": {},
        "variants": {
            "blue": {
                "role": "control",
                "n": 0,
                "errors": 0,
                "error_rate": None,
                "error_rate_ci": None,
                "latency_ms": {
                    "p50": None,
                    "p50_ci": None,
                    "p95": None,
                    "p95_ci": None,
                    "mean": None,
                    "histogram": {"edges": [], "counts": []},
                },
            },
            "green": {
                "role": "treatment",
                "n": 0,
                "errors": 0,
                "error_rate": None,
                "error_rate_ci": None,
                "latency_ms": {
                    "p50": None,
                    "p50_ci": None,
                    "p95": None,
                    "p95_ci": None,
                    "mean": None,
                    "histogram": {"edges": [], "counts": []},
                },
            },
        },
        "sample_size": {"required_per_variant": None, "collected": {"blue": 0, "green": 0}, "progress": 0},
        "metrics": [],
        "guardrails": [],
        "verdict": {"decision": "inconclusive", "reason": "No requests yet."},
        "traffic_over_time": [],
    }


def rollback_document() -> dict[str, Any]:
    document = promote_document()
    document["experiment"]["ended_at"] = None
    document["variants"]["green"] = _variant("treatment", 900, 61, 90.0, 410.0)
    document["sample_size"] = {
        "required_per_variant": 3841,
        "collected": {"blue": 4120, "green": 900},
        "progress": 0.234,
    }
    document["metrics"][0].update(
        treatment=0.095,
        effect=-0.006,
        effect_ci=[-0.027, 0.015],
        relative_effect=-0.059,
        p_value=0.57,
        p_adjusted=0.72,
        significant=False,
    )
    document["guardrails"] = [
        {"name": "max_error_rate", "limit": 0.02, "control": 0.0051, "treatment": 0.0678, "breached": True},
        {"name": "max_p95_ms", "limit": 250, "control": 120.0, "treatment": 410.0, "breached": True},
    ]
    document["verdict"] = {
        "decision": "roll back",
        "reason": "green breached 2 guardrails: error rate 6.78% > 2%, p95 410 ms > 250 ms.",
    }
    return document


def _render(document: dict[str, Any], tmp_path: Path, name: str = "report.html") -> str:
    path = write_report(document, tmp_path / "out" / name)
    assert path == tmp_path / "out" / name
    assert path.is_file()
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 1_000_000
    return text


def _external_references(text: str) -> list[str]:
    """URLs other than XML namespace declarations (xmlns="http://www.w3.org/...")."""
    allowed = re.compile(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"')
    return re.findall(r"https?://[^\s\"'<>)]+", allowed.sub("", text))


def _looks_like_html(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    for tag in ("<html", "<head>", "<body>", "</body>", "</html>", "<style>"):
        assert tag in text
    assert text.count("<svg") == text.count("</svg>")
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()


def test_promote_report_has_everything(tmp_path: Path) -> None:
    text = _render(promote_document(), tmp_path)
    _looks_like_html(text)
    assert 'class="verdict verdict-promote"' in text
    assert ">promote<" in text
    assert "raises conversion by 2.6 pp" in text
    assert text.count("<svg") == 3
    assert _external_references(text) == []
    assert "2024-06-01 10:00:00 UTC" in text and "2024-06-01 13:20:00 UTC" in text
    assert "churn-model" in text and "split" in text
    # the tables: per variant, the metrics (with Holm's adjusted p), the guardrails, the progress bars
    for expected in (
        "4,120",
        "4,088",
        "Holm p",
        "two-proportion z-test",
        "Welch t-test",
        "+2.60 pp",
        "significant",
        "max error rate",
        'role="progressbar"',
        "3,841",
    ):
        assert expected in text, expected
    assert "BREACHED" not in text


def test_svg_plots_have_unique_ids_and_no_prolog(tmp_path: Path) -> None:
    text = _render(promote_document(), tmp_path)
    assert "<?xml" not in text and "<!DOCTYPE svg" not in text and "<metadata>" not in text
    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    for reference in re.findall(r'(?:href="#|url\(#)([^")]+)', text):
        assert reference in ids


def test_early_report_with_no_data_renders(tmp_path: Path) -> None:
    text = _render(empty_document(), tmp_path)
    _looks_like_html(text)
    assert 'class="verdict verdict-inconclusive"' in text
    assert "No requests yet." in text
    assert "<svg" not in text
    assert "No metrics yet" in text and "No latency data yet" in text and "No traffic recorded yet" in text
    assert "still running" in text
    assert "required sample size is unknown" in text
    assert _external_references(text) == []


def test_rollback_report_highlights_breached_guardrails(tmp_path: Path) -> None:
    text = _render(rollback_document(), tmp_path)
    _looks_like_html(text)
    assert 'class="verdict verdict-roll-back"' in text
    assert ">roll back<" in text
    assert text.count('<tr class="breached">') == 2
    assert "2 guardrails breached." in text
    assert text.count("<svg") == 3
    assert "23%" in text  # green's progress towards the required sample size
    assert _external_references(text) == []


@pytest.mark.parametrize(
    "decision, css",
    [
        ("keep control", "verdict-keep-control"),
        ("inconclusive", "verdict-inconclusive"),
        ("something new", "verdict-unknown"),
    ],
)
def test_every_decision_has_its_class(tmp_path: Path, decision: str, css: str) -> None:
    document = promote_document()
    document["verdict"] = {"decision": decision, "reason": "because"}
    text = _render(document, tmp_path)
    assert f'class="verdict {css}"' in text


def test_strings_are_escaped(tmp_path: Path) -> None:
    document = promote_document()
    evil = '<script>alert("x")</script>'
    document["experiment"]["endpoint"] = evil
    document["experiment"]["id"] = evil
    document["metrics"][1]["name"] = evil
    document["metrics"][1]["test"] = evil
    document["guardrails"][0]["name"] = evil
    document["verdict"]["reason"] = evil
    text = _render(document, tmp_path)
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert text.count("<svg") == 3  # the name also reaches the plots, escaped by matplotlib's SVG writer


def test_odd_names_reach_the_plots_verbatim(tmp_path: Path) -> None:
    """Markup is escaped in the SVG too, and a ``$`` is not taken for matplotlib's mathtext."""
    control, treatment = "a&b $\\bogus{", "<x>"
    document = promote_document()
    document["experiment"].update(control=control, treatment=treatment)
    document["variants"] = {control: document["variants"]["blue"], treatment: document["variants"]["green"]}
    document["sample_size"]["collected"] = {control: 4120, treatment: 4088}
    document["traffic_over_time"] = [
        {"t": e["t"], control: e["blue"], treatment: e["green"]} for e in document["traffic_over_time"]
    ]
    document["metrics"][1]["name"] = "cost $\\bogus{$ per x $a^$"
    text = _render(document, tmp_path)
    assert "<x>" not in text and "&lt;x&gt;" in text
    assert text.count("<svg") == 3
    assert "Plot unavailable" not in text
    assert "cost $\\bogus{$ per x $a^$" in text


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.clear(),
        lambda d: d.update(
            experiment=None,
            variants=None,
            sample_size=None,
            metrics=None,
            guardrails=None,
            verdict=None,
            traffic_over_time=None,
            spec=None,
        ),
        lambda d: d["metrics"][0].update(
            effect=None,
            effect_ci=None,
            p_value=None,
            p_adjusted=None,
            relative_effect=None,
            control=None,
            treatment=None,
            significant=None,
        ),
        lambda d: d["metrics"][0].update(effect=float("nan"), effect_ci=[float("-inf"), 1]),
        lambda d: d["variants"]["green"]["latency_ms"].update(histogram={"edges": [0, 5], "counts": [1, 2]}),
        lambda d: d["variants"]["green"].update(latency_ms=None, error_rate_ci=[None, None]),
        lambda d: d["experiment"].update(started_at=None, ended_at="soon", mode=None),
        lambda d: d["traffic_over_time"].extend([{"t": None}, {"t": START, "blue": None}, "junk"]),
        lambda d: d.update(traffic_over_time=[{"t": START, "blue": 3, "green": 1}]),
        lambda d: d["guardrails"].append({"name": None, "limit": None, "control": None, "treatment": None}),
        lambda d: d["sample_size"].update(required_per_variant=0, collected={}, progress=None),
    ],
)
def test_missing_and_odd_values_never_crash(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    document = copy.deepcopy(promote_document())
    mutate(document)
    text = _render(document, tmp_path)
    _looks_like_html(text)
    assert "Plot unavailable" not in text


def test_histogram_starting_at_zero_on_a_log_axis(tmp_path: Path) -> None:
    document = promote_document()
    for variant in document["variants"].values():
        variant["latency_ms"]["histogram"]["edges"][0] = 0
    text = _render(document, tmp_path)
    assert text.count("<svg") == 3


def test_large_experiment_stays_small(tmp_path: Path) -> None:
    document = promote_document()
    document["traffic_over_time"] = [
        {"t": START + i * 60, "blue": 900 + i % 97, "green": 880 + i % 89} for i in range(7 * 24 * 60)
    ]  # a week of one-minute buckets
    for variant in document["variants"].values():
        variant["latency_ms"]["histogram"] = _histogram(40, 1.1, 1_000_000) | {
            "edges": [10 ** (i / 50) for i in range(201)]
        }
        variant["latency_ms"]["histogram"]["counts"] = [1000 + i for i in range(200)]
    document["metrics"] = document["metrics"] * 6
    path = write_report(document, tmp_path / "big.html")
    assert path.stat().st_size < 1_000_000


def test_importing_the_module_does_not_import_matplotlib() -> None:
    import subprocess
    import sys

    code = "import sys, tdsp_deploy.ab.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_rates_show_no_floating_point_dust_and_tiny_ones_stay_readable() -> None:
    from tdsp_deploy.ab.report import _pct

    assert _pct(5.4e-20) == "0%" and _pct(-5.4e-20, signed=True, unit="pp") == "0 pp"
    assert _pct(0.0000004) == "<0.001%" and _pct(-0.0000004, signed=True, unit="pp") == "-<0.001 pp"
    assert _pct(0.00025) == "0.025%" and _pct(0.0123) == "1.23%"
    assert "e-" not in _pct(1e-7)


def test_the_primary_metric_shows_each_variants_interval_and_the_mde_line(tmp_path) -> None:
    import re

    from tdsp_deploy.ab.report import write_report
    from tests.fakes.ab_records import run, traffic

    records, outcomes = traffic(600, rate=(0.10, 0.12), seed=12)
    document = run(records, outcomes)
    primary = document["metrics"][0]
    assert primary["control_ci"][0] < primary["control"] < primary["control_ci"][1]
    page = write_report(document, tmp_path / "report.html").read_text()
    row = page.split('<tr class="primary">', 1)[1].split("</tr>", 1)[0]
    assert len(re.findall(r'<span class="ci">\[', row)) == 3  # control, treatment and the effect
    assert "MDE" in page
