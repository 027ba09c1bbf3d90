"""The smoke test's building blocks: JSON comparison, percentiles, the latency run's verdict."""

from __future__ import annotations

import threading

from tdsp_deploy.backends.base import InvokeResult
from tdsp_deploy.errors import BackendError
from tdsp_deploy.manifest.model import LatencyObjective
from tdsp_deploy.smoke import check_answer, json_differences, percentile, run_latency


def test_numbers_match_within_tolerance_and_everything_else_exactly():
    expected = {"p": [0.5, 0.25], "label": "setosa", "n": 3, "ok": True}
    assert (
        json_differences(expected, {"p": [0.5000001, 0.25], "label": "setosa", "n": 3, "ok": True}, 1e-6)
        == []
    )
    assert json_differences(expected, {"p": [0.51, 0.25], "label": "setosa", "n": 3, "ok": True}, 1e-6) == [
        "$.p[0]: expected 0.5, got 0.51"
    ]
    assert json_differences({"ok": True}, {"ok": 1}, 1e-6) == ["$.ok: expected true, got 1"]
    assert json_differences([1, 2], [1, 2, 3], 0) == ["$: expected 2 items, got 3"]
    assert json_differences({"a": 1}, {"b": 1}, 0) == ["$.a: missing", "$.b: not expected"]
    assert json_differences(1e9, 1e9 + 1, 1e-6) == []  # relative tolerance for large values


def test_answer_check_needs_200_and_the_expected_body():
    good = InvokeResult(200, b'{"y": [1.0]}', {"azureml-model-deployment": "blue"}, 2.0)
    assert check_answer(good, {"y": [1.0]}, 1e-6).passed
    assert check_answer(good, None, 1e-6).passed  # no expectation: a 200 is enough
    failed = check_answer(InvokeResult(500, b'{"message": "boom"}', {}, 1.0), None, 1e-6)
    assert not failed.passed and failed.differences == ["status: expected 200, got 500"]
    text = check_answer(InvokeResult(200, b"not json", {}, 1.0), {"y": 1}, 1e-6)
    assert not text.passed and text.response == "not json"


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.5
    assert percentile(values, 0.95) == 95.05
    assert percentile([7.0], 0.99) == 7.0


def caller_factory(fail_every: int = 0):  # type: ignore[no-untyped-def]
    counter = {"n": 0}
    lock = threading.Lock()

    def make():  # type: ignore[no-untyped-def]
        while True:

            def call(body: bytes) -> InvokeResult:
                with lock:
                    counter["n"] += 1
                    number = counter["n"]
                if fail_every and number % fail_every == 0:
                    raise BackendError("connection reset")
                return InvokeResult(200, body, {}, 0.1)

            yield call

    return make(), counter


def test_latency_run_counts_requests_and_discards_warmup():
    callers, counter = caller_factory()
    report = run_latency(
        callers, b"{}", LatencyObjective(requests=50, concurrency=4, warmup=7, p95_ms=10_000)
    )
    assert counter["n"] == 57
    assert report.requests == 50 and report.errors == 0 and report.passed
    assert report.p50_ms <= report.p95_ms <= report.p99_ms <= report.max_ms


def test_latency_run_fails_on_errors_and_on_p95():
    callers, _ = caller_factory(fail_every=5)
    report = run_latency(callers, b"{}", LatencyObjective(requests=100, concurrency=2, warmup=0))
    assert report.errors == 20 and report.error_rate == 0.2 and not report.passed
    assert "error rate 20.0% is above the objective of 0.0%" in report.problems[0]
    assert report.error_samples == ["connection reset"]
    slow_callers, _ = caller_factory()
    strict = run_latency(
        slow_callers, b"{}", LatencyObjective(requests=10, concurrency=1, warmup=0, p95_ms=1e-9)
    )
    assert not strict.passed and "p95 latency" in strict.problems[0]
