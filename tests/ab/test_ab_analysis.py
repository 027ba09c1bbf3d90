"""tdsp_deploy.ab.analysis on synthetic request logs with planted effects (one per verdict
branch), and tdsp_deploy.ab.outcomes on real files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tdsp_deploy.ab.analysis import analyze
from tdsp_deploy.ab.outcomes import outcome_type, read_outcomes
from tdsp_deploy.errors import PluginError, UsageError
from tests.fakes.ab_records import STARTED, experiment, run, spec, traffic

# per variant at 50/50: Fleiss' formula (0.10 -> 0.12, power 0.8) at the fixed-horizon part of
# alpha, 0.045 (the rest is spent on the always-valid interval); 3841 at the whole 0.05
REQUIRED = 3965


def metric(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in document["metrics"] if m["name"] == name)


# -- the verdict, branch by branch ------------------------------------------------------------


def test_promote_when_better_and_sample_size_reached() -> None:
    records, outcomes = traffic(REQUIRED + 100, rate=(0.10, 0.14))
    document = run(records, outcomes)
    conversion = metric(document, "conversion")
    assert conversion["significant"] and conversion["effect"] > 0
    assert conversion["test"] == "two-proportion z-test"
    assert document["sample_size"] == {
        "required_per_variant": REQUIRED,
        "required": {"blue": REQUIRED, "green": REQUIRED},
        "collected": {"blue": REQUIRED + 100, "green": REQUIRED + 100},
        "progress": 1.0,
    }
    assert document["verdict"]["decision"] == "promote"
    assert "green improves conversion" in document["verdict"]["reason"]


def test_keep_control_when_significantly_worse_even_early() -> None:
    records, outcomes = traffic(1500, rate=(0.12, 0.07))
    document = run(records, outcomes)
    assert document["sample_size"]["progress"] < 1
    assert document["verdict"]["decision"] == "keep control"
    assert "significantly worse" in document["verdict"]["reason"]


def test_lower_is_better_flips_the_direction() -> None:
    records, outcomes = traffic(REQUIRED + 100, rate=(0.13, 0.10))
    document = run(records, outcomes, primary_metric={"direction": "lower_is_better"})
    assert document["verdict"]["decision"] == "promote"


def test_keep_control_when_sample_size_reached_without_an_effect() -> None:
    records, outcomes = traffic(REQUIRED + 100, rate=(0.10, 0.10), seed=1)
    document = run(records, outcomes)
    assert not metric(document, "conversion")["significant"]
    assert document["verdict"]["decision"] == "keep control"
    assert "no effect of at least the minimum detectable effect" in document["verdict"]["reason"]


def test_inconclusive_before_the_sample_size() -> None:
    records, outcomes = traffic(800, rate=(0.10, 0.10), seed=2)
    document = run(records, outcomes)
    assert document["sample_size"]["progress"] == pytest.approx(800 / REQUIRED)
    assert document["verdict"]["decision"] == "inconclusive"
    assert f"800 of {REQUIRED} per variant" in document["verdict"]["reason"]


def test_an_early_improvement_is_promoted_only_by_the_always_valid_interval() -> None:
    # significant by the fixed-horizon test, looked at early: not enough to stop
    records, outcomes = traffic(1500, rate=(0.10, 0.13), seed=4)
    document = run(records, outcomes)
    conversion = metric(document, "conversion")
    assert conversion["significant"] and conversion["always_valid_ci"][0] < 0
    assert document["verdict"]["decision"] == "inconclusive"
    assert "inflates false positives" in document["verdict"]["reason"]
    # so large that even the always-valid interval (alpha/10) leaves out 0: promoted early
    records, outcomes = traffic(1500, rate=(0.08, 0.14))
    document = run(records, outcomes)
    assert metric(document, "conversion")["always_valid_ci"][0] > 0
    assert document["verdict"]["decision"] == "promote"
    assert "always-valid interval" in document["verdict"]["reason"]


def test_max_duration_ends_the_experiment() -> None:
    records, outcomes = traffic(800, rate=(0.10, 0.10), seed=2)
    running = run(records, outcomes, max_duration_hours=2, now=STARTED + 3600)
    assert running["verdict"]["decision"] == "inconclusive"
    expired = run(records, outcomes, max_duration_hours=2, now=STARTED + 3 * 3600)
    assert expired["verdict"]["decision"] == "keep control"
    assert "maximum duration of 2 h passed" in expired["verdict"]["reason"]
    improved, with_outcomes = traffic(1500, rate=(0.08, 0.14))
    assert run(improved, with_outcomes, max_duration_hours=2, now=STARTED + 3 * 3600)["verdict"][
        "decision"
    ] == ("promote")


def test_continuous_metric_uses_welch() -> None:
    # the metric: basket value, sd 1, control mean 5.0; plan for a 0.1 shift
    records, outcomes = traffic(2000, rate=(5.0, 5.15), outcome="continuous")
    document = run(
        records,
        outcomes,
        primary_metric={"name": "basket", "type": None},
        minimum_detectable_effect=0.1,
        baseline=1.0,
    )
    basket = metric(document, "basket")
    assert basket["type"] == "continuous" and basket["test"] == "Welch t-test"
    assert basket["effect"] == pytest.approx(0.15, abs=0.08)
    assert document["sample_size"]["required_per_variant"] == 1621  # 1570 at the whole alpha
    assert document["verdict"]["decision"] == "promote"


def test_no_baseline_no_duration_cannot_plan() -> None:
    records, outcomes = traffic(500, seed=3)
    document = run(records, outcomes, baseline=None)
    assert document["sample_size"]["required_per_variant"] is None
    assert document["sample_size"]["progress"] is None
    assert document["verdict"]["decision"] == "inconclusive"
    assert "set ab.baseline" in document["verdict"]["reason"]


def test_without_outcomes_the_guardrails_decide_alone() -> None:
    records, _ = traffic(300)
    document = run(records, None, guardrails={"max_error_rate": 0.05})
    assert document["verdict"] == {"decision": "inconclusive", "reason": "no outcomes given; pass --outcomes"}
    assert [m["name"] for m in document["metrics"]] == ["error_rate", "latency_ms"]
    assert document["sample_size"]["collected"] == {"blue": 300, "green": 300}  # requests, without outcomes

    broken, _ = traffic(300, error_rate=(0.005, 0.2))
    document = run(broken, None, guardrails={"max_error_rate": 0.05})
    assert document["verdict"]["decision"] == "roll back"


def test_outcomes_that_match_no_request() -> None:
    records, _ = traffic(100)
    document = run(records, {"someone-else": 1.0})
    assert document["verdict"]["decision"] == "inconclusive"
    assert "no outcome matched a request of blue or green" in document["verdict"]["reason"]


def test_roll_back_on_error_rate_even_when_the_metric_improves() -> None:
    records, outcomes = traffic(REQUIRED + 100, rate=(0.10, 0.14), error_rate=(0.005, 0.04))
    document = run(records, outcomes, guardrails={"max_error_rate": 0.02})
    [guardrail] = document["guardrails"]
    assert guardrail["name"] == "error_rate" and guardrail["breached"] is True
    assert guardrail["treatment"] == pytest.approx(document["variants"]["green"]["error_rate"])
    assert document["verdict"]["decision"] == "roll back"
    assert document["verdict"]["reason"].startswith("green breached guardrail: error rate")


def test_roll_back_on_p95() -> None:
    records, outcomes = traffic(1000, latency=(40.0, 120.0))
    document = run(records, outcomes, guardrails={"max_p95_ms": 250})
    [guardrail] = document["guardrails"]
    assert guardrail["name"] == "p95_ms" and guardrail["breached"] is True
    assert guardrail["treatment"] > 250 > guardrail["control"]
    assert document["verdict"]["decision"] == "roll back"
    assert metric(document, "latency_ms")["significant"]


def test_error_rate_increase_must_be_significant() -> None:
    limits = {"max_error_rate_increase": 0.01}
    noisy, outcomes = traffic(60, error_rate=(0.0, 0.05), seed=4)  # a few errors in few requests
    document = run(noisy, outcomes, guardrails=limits)
    guardrail = document["guardrails"][0]
    assert guardrail["treatment"] - guardrail["control"] > 0.01
    assert guardrail["breached"] is False
    clear, outcomes = traffic(2000, error_rate=(0.005, 0.05), seed=4)
    document = run(clear, outcomes, guardrails=limits)
    assert document["guardrails"][0]["breached"] is True
    assert document["verdict"]["decision"] == "roll back"
    assert "above the control's" in document["verdict"]["reason"]


# -- what counts ------------------------------------------------------------------------------


def test_pinned_requests_are_left_out() -> None:
    records, outcomes = traffic(500)
    pinned = [
        {
            "kind": "live",
            "t": STARTED + 5,
            "id": f"pin-{i}",
            "deployment": "green",
            "status": 503,
            "latency_ms": 9000.0,
            "pinned": True,
        }
        for i in range(200)
    ]
    outcomes.update({f"pin-{i}": 1.0 for i in range(200)})
    document = run(records + pinned, outcomes, guardrails={"max_error_rate": 0.05, "max_p95_ms": 1000})
    green = document["variants"]["green"]
    assert green["n"] == 500
    assert green["latency_ms"]["p95"] < 1000
    assert document["sample_size"]["collected"]["green"] == 500
    assert not any(g["breached"] for g in document["guardrails"])


def test_only_the_experiment_window_counts() -> None:
    records, outcomes = traffic(300)
    before = {**records[0], "t": STARTED - 10, "id": "early"}
    after = {**records[1], "t": STARTED + 500, "id": "late"}
    document = run([before, *records, after], outcomes)
    assert document["variants"]["blue"]["n"] == 300
    assert document["variants"]["green"]["n"] == 301  # the experiment runs: no upper bound
    ended = run([before, *records, after], outcomes, ended_at=STARTED + 100)
    assert ended["variants"]["green"]["n"] == 300


def test_errors_and_client_errors() -> None:
    records = [
        {
            "kind": "live",
            "t": STARTED + i,
            "id": str(i),
            "deployment": "blue" if i < 10 else "green",
            "status": status,
            "latency_ms": 10.0,
            "pinned": False,
        }
        for i, status in enumerate([200, 500, 404, 503, 429, 200, 200, 200, 200, 200] + [200] * 10)
    ]
    blue = run(records, None)["variants"]["blue"]
    assert (blue["n"], blue["errors"], blue["client_errors"], blue["error_rate"]) == (10, 2, 2, 0.2)
    assert blue["error_rate_ci"][0] < 0.2 < blue["error_rate_ci"][1]


def test_mirror_measures_the_treatment_on_its_shadow_requests() -> None:
    rng = np.random.default_rng(5)
    records: list[dict[str, Any]] = []
    for i in range(1000):
        t = STARTED + 1 + i
        records.append(
            {
                "kind": "live",
                "t": t,
                "id": f"r{i}",
                "deployment": "blue",
                "status": 200,
                "latency_ms": float(rng.exponential(30)),
                "pinned": False,
            }
        )
        if i % 2 == 0:  # half the traffic is mirrored
            records.append(
                {
                    "kind": "shadow",
                    "t": t + 0.01,
                    "id": f"r{i}",
                    "deployment": "green",
                    "status": 200,
                    "latency_ms": float(rng.exponential(90)),
                    "agreed": bool(rng.random() < 0.9) if i % 10 else None,
                }
            )
    # a pinned live request to the treatment (a smoke test) is no part of the experiment
    records.append(
        {
            "kind": "live",
            "t": STARTED + 2,
            "id": "smoke",
            "deployment": "green",
            "status": 200,
            "latency_ms": 1.0,
            "pinned": True,
        }
    )
    outcomes = {f"r{i}": 1.0 for i in range(1000)}
    document = run(records, outcomes, mode="mirror", guardrails={"max_p95_ms": 1000})
    assert document["variants"]["blue"]["n"] == 1000
    assert document["variants"]["green"]["n"] == 500
    assert document["variants"]["green"]["latency_ms"]["mean"] == pytest.approx(90, rel=0.15)
    assert document["sample_size"]["collected"] == {"blue": 1000, "green": 500}
    agreement = metric(document, "agreement")
    assert agreement["type"] == "binary" and agreement["test"] is None and agreement["p_value"] is None
    assert agreement["treatment"] == pytest.approx(0.9, abs=0.05)
    assert agreement["effect_ci"][0] < agreement["treatment"] < agreement["effect_ci"][1]
    assert "conversion" not in [m["name"] for m in document["metrics"]]  # outcomes cannot compare a mirror
    assert document["verdict"]["decision"] == "inconclusive"
    assert "run a split experiment" in document["verdict"]["reason"]

    slow = run(records, outcomes, mode="mirror", guardrails={"max_p95_ms": 150})
    assert slow["verdict"]["decision"] == "roll back"


# -- the document -----------------------------------------------------------------------------


def test_latency_intervals_contain_the_true_percentiles() -> None:
    records, outcomes = traffic(4000, latency=(20.0, 20.0), seed=6)
    document = run(records, outcomes)
    for name in ("blue", "green"):
        latency = document["variants"][name]["latency_ms"]
        p50_low, p50_high = latency["p50_ci"]
        p95_low, p95_high = latency["p95_ci"]
        assert p50_low <= 20 * math.log(2) <= p50_high
        assert p95_low <= 20 * math.log(20) <= p95_high
        assert p50_low <= latency["p50"] <= p50_high < p95_low <= latency["p95"] <= p95_high
        histogram = latency["histogram"]
        assert len(histogram["edges"]) == len(histogram["counts"]) + 1
        assert sum(histogram["counts"]) == 4000
    assert (
        document["variants"]["blue"]["latency_ms"]["histogram"]["edges"]
        == (document["variants"]["green"]["latency_ms"]["histogram"]["edges"])
    )


def test_the_document_has_the_agreed_shape_and_is_json() -> None:
    records, outcomes = traffic(500, seed=7)
    document = run(
        records,
        outcomes,
        guardrails={"max_error_rate": 0.05, "max_p95_ms": 500, "max_error_rate_increase": 0.01},
    )
    json.dumps(document, allow_nan=False)
    assert set(document) == {
        "experiment",
        "spec",
        "variants",
        "sample_size",
        "metrics",
        "guardrails",
        "verdict",
        "warnings",
        "traffic_over_time",
    }
    assert document["experiment"] == experiment()
    assert document["spec"] == spec(
        guardrails={"max_error_rate": 0.05, "max_p95_ms": 500, "max_error_rate_increase": 0.01}
    )
    assert document["variants"]["blue"]["role"] == "control"
    assert document["variants"]["green"]["role"] == "treatment"
    assert set(document["variants"]["blue"]) == {
        "role",
        "n",
        "errors",
        "client_errors",
        "error_rate",
        "error_rate_ci",
        "latency_ms",
    }
    assert set(document["variants"]["blue"]["latency_ms"]) == {
        "p50",
        "p50_ci",
        "p95",
        "p95_ci",
        "mean",
        "histogram",
    }
    assert [m["name"] for m in document["metrics"]] == ["conversion", "error_rate", "latency_ms"]
    primary_only = {
        "alpha",
        "scale",
        "planned_sample",
        "always_valid_ci",
        "always_valid_alpha",
        "control_ci",
        "treatment_ci",
    }
    assert primary_only <= set(document["metrics"][0])
    for entry in document["metrics"]:
        assert set(entry) - primary_only == {
            "name",
            "type",
            "test",
            "control",
            "treatment",
            "effect",
            "effect_ci",
            "relative_effect",
            "p_value",
            "p_adjusted",
            "significant",
            "direction",
        }
        assert entry["p_adjusted"] >= entry["p_value"]
    assert document["metrics"][0]["p_adjusted"] == document["metrics"][0]["p_value"]  # the primary: no Holm
    assert [g["name"] for g in document["guardrails"]] == ["error_rate", "p95_ms", "error_rate_increase"]
    assert set(document["verdict"]) == {"decision", "reason"}
    buckets = document["traffic_over_time"]
    assert sum(b["blue"] for b in buckets) == 500 and sum(b["green"] for b in buckets) == 500
    assert buckets[0]["t"] <= STARTED and all(
        b["t"] < a["t"] for b, a in zip(buckets, buckets[1:], strict=False)
    )


def test_an_empty_log_is_still_a_document() -> None:
    document = run([], None)
    json.dumps(document, allow_nan=False)
    assert document["variants"]["green"]["n"] == 0
    assert document["variants"]["green"]["error_rate"] is None
    assert document["metrics"] == [] and document["traffic_over_time"] == []
    assert document["verdict"]["decision"] == "inconclusive"


def test_a_binary_metric_needs_binary_outcomes() -> None:
    records, outcomes = traffic(50, outcome="continuous")
    with pytest.raises(UsageError, match="not all 0/1"):
        run(records, outcomes)


# -- outcomes files ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "outcomes.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_outcomes_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffrequest_id,outcome,extra\nr1,1,x\nr2,0.5,y\nr3,TRUE,\nr4,false,\n\n")
    assert read_outcomes(path) == {"r1": 1.0, "r2": 0.5, "r3": 1.0, "r4": 0.0}
    assert outcome_type([1.0, 0.0, 1.0]) == "binary"
    assert outcome_type([1.0, 0.5]) == "continuous"
    assert outcome_type([]) == "continuous"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,outcome\nr1,1\n", "missing column(s) request_id (found: id, outcome)"),
        ("request_id,value\nr1,1\n", "missing column(s) outcome"),
        ("", "missing column(s) request_id, outcome (found: none)"),
        (
            "request_id,outcome\nr1,1\nr2,yes please\n",
            "outcomes.csv:line 3: outcome 'yes please' is not a number",
        ),
        ("request_id,outcome\nr1,1\nr2,\n", "outcomes.csv:line 3: the outcome is empty"),
        ("request_id,outcome\nr1,nan\n", "line 2: outcome 'nan' is not a finite number"),
        ("request_id,outcome\nr1,1\nr2,0\nr1,0\n", "line 4: request_id 'r1' appears twice (first at line 2)"),
        ("request_id,outcome\n,1\n", "line 2: the request_id is empty"),
        ("request_id,outcome\nr1\n", "line 2: expected 2 columns, found 1"),
    ],
)
def test_read_outcomes_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        read_outcomes(write(tmp_path, text))
    assert message in caught.value.message
    assert caught.value.hint
    assert caught.value.exit_code == 2


def test_read_outcomes_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such outcomes file"):
        read_outcomes(tmp_path / "nope.csv")


def test_read_outcomes_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "outcomes.parquet"
    pq.write_table(pa.table({"request_id": ["a", "b", "c"], "outcome": [True, False, True]}), path)
    assert read_outcomes(path) == {"a": 1.0, "b": 0.0, "c": 1.0}
    pq.write_table(pa.table({"request_id": [1, 2], "outcome": [0.25, 3.0]}), path)
    assert read_outcomes(path) == {"1": 0.25, "2": 3.0}
    pq.write_table(pa.table({"request_id": ["a", "b"], "outcome": [1.0, None]}), path)
    with pytest.raises(UsageError, match="row 2: the outcome is empty"):
        read_outcomes(path)
    pq.write_table(pa.table({"id": ["a"], "outcome": [1.0]}), path)
    with pytest.raises(UsageError, match=r"missing column\(s\) request_id"):
        read_outcomes(path)
    write(tmp_path, "not parquet at all", "broken.parquet")
    with pytest.raises(UsageError, match="not a readable parquet file"):
        read_outcomes(tmp_path / "broken.parquet")


def test_read_outcomes_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = write(tmp_path, "whatever", "outcomes.parquet")
    with pytest.raises(PluginError) as caught:
        read_outcomes(path)
    assert caught.value.hint == "pip install pyarrow"
    assert caught.value.exit_code == 7


def test_a_skewed_positive_metric_is_compared_on_logs() -> None:
    records, outcomes = traffic(600, outcome="continuous", seed=8)
    rng = np.random.default_rng(8)
    outcomes = {request_id: float(rng.lognormal(0, 1)) for request_id in outcomes}
    document = run(
        records,
        outcomes,
        primary_metric={"name": "seconds_to_checkout", "type": "continuous", "direction": "lower_is_better"},
        minimum_detectable_effect=0.5,
        baseline=2.2,
    )
    seconds = metric(document, "seconds_to_checkout")
    assert seconds["scale"] == "log" and seconds["test"] == "Welch t-test on log values"
    assert seconds["relative_effect"] == pytest.approx(math.expm1(seconds["effect"]))
    # a symmetric metric stays on its own scale
    records, outcomes = traffic(600, rate=(5.0, 5.0), outcome="continuous", seed=9)
    document = run(
        records, outcomes, primary_metric={"type": "continuous"}, baseline=1.0, minimum_detectable_effect=0.2
    )
    assert metric(document, "conversion")["scale"] is None


def test_outcomes_with_a_unit_column_are_compared_by_unit(tmp_path: Path) -> None:
    records, outcomes = traffic(500, seed=10)
    path = tmp_path / "outcomes.csv"
    lines = ["request_id,outcome,unit"]
    lines += [
        f"{request_id},{int(value)},user-{i // 10}" for i, (request_id, value) in enumerate(outcomes.items())
    ]
    path.write_text("\n".join(lines) + "\n")
    from tdsp_deploy.ab.outcomes import read_units

    units = read_units(path)
    assert units is not None and units["req-0"] == "user-0" and len(set(units.values())) == 100
    document = analyze(records, experiment(), spec(), read_outcomes(path), now=STARTED + 3600, units=units)
    conversion = metric(document, "conversion")
    assert conversion["test"] == "z-test by unit (delta method)"
    assert conversion["units"] == {"control": 100, "treatment": 100}  # each user's 10 requests alternate
    plain = tmp_path / "plain.csv"
    plain.write_text("request_id,outcome\nreq-0,1\n")
    assert read_units(plain) is None


def test_requests_without_an_outcome_are_counted_in_a_warning() -> None:
    records, outcomes = traffic(200, seed=11)
    kept = {k: v for k, v in outcomes.items() if int(k.split("-")[1]) % 4}  # half of blue's dropped
    document = run(records, kept)
    assert document["warnings"] == [
        "100 of 200 requests to blue (50.0%) have no outcome and are left out of the primary metric"
    ]
    assert run(records, outcomes)["warnings"] == []
