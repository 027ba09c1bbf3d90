"""The smoke test's building blocks: JSON comparison, percentiles, the latency run's verdict."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest
import yaml

from tdsp_deploy.backends.base import InvokeResult
from tdsp_deploy.errors import BackendError, ExitCode
from tdsp_deploy.http_caller import PlainHttpCaller, http_callers
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


def stalling_callers(stall_on: int, stall_s: float):  # type: ignore[no-untyped-def]
    """Callers of an endpoint that answers at once, except request ``stall_on``, which stalls."""
    counter = {"n": 0}
    lock = threading.Lock()

    def make():  # type: ignore[no-untyped-def]
        while True:

            def call(body: bytes) -> InvokeResult:
                with lock:
                    counter["n"] += 1
                    number = counter["n"]
                if number == stall_on:
                    time.sleep(stall_s)
                return InvokeResult(200, body, {}, 0.1)

            yield call

    return make()


def test_fixed_rate_charges_a_stall_to_every_request_it_delayed():
    objective = LatencyObjective(requests=40, concurrency=1, warmup=0)
    closed = run_latency(stalling_callers(5, 0.3), b"{}", objective)
    fixed = run_latency(stalling_callers(5, 0.3), b"{}", objective, rate=100.0)
    # closed loop: one slow request; nothing else was sent while it stalled
    assert closed.max_ms >= 300 and closed.p50_ms < 50 and closed.rate_per_s is None
    # fixed rate: the requests due every 10 ms during the 0.3 s stall waited for it, and count
    # it from when they were due (as wrk2 does)
    assert fixed.rate_per_s == 100.0 and fixed.max_ms >= 300
    assert fixed.p50_ms > 50  # about half of the 40 waited 100 ms or more for the stall
    assert fixed.duration_s >= 0.39  # 40 requests at 100/s take at least 0.39 s
    assert closed.client_cpu_s >= 0 and fixed.client_cpu_s >= 0


def slow_callers(seconds: float):  # type: ignore[no-untyped-def]
    """Callers of an endpoint that takes ``seconds`` to answer every request."""

    def make():  # type: ignore[no-untyped-def]
        while True:

            def call(body: bytes) -> InvokeResult:
                time.sleep(seconds)
                return InvokeResult(200, body, {}, seconds * 1000)

            yield call

    return make()


def test_fixed_rate_run_reports_its_mode_and_the_rate_it_kept():
    objective = LatencyObjective(requests=40, concurrency=2, warmup=0)
    closed = run_latency(slow_callers(0.001), b"{}", objective)
    assert closed.mode == "closed_loop" and closed.sent_per_s is None and closed.max_send_delay_ms is None
    # 2 s of schedule: a loaded machine may wake a caller late, not 0.2 s late at the very end
    fixed = run_latency(slow_callers(0.001), b"{}", objective, rate=20.0)
    assert fixed.mode == "fixed_rate" and fixed.rate_per_s == 20.0
    assert fixed.passed and not fixed.fell_behind
    assert fixed.sent_per_s is not None and 0.9 * 20.0 <= fixed.sent_per_s <= 20.0


def test_an_endpoint_that_cannot_keep_up_with_the_rate_fails_the_run_and_says_what_was_sent():
    # one caller and 50 ms per answer: at most 20 requests/s leave, against 200 asked
    objective = LatencyObjective(requests=20, concurrency=1, warmup=0)
    report = run_latency(slow_callers(0.05), b"{}", objective, rate=200.0)
    assert report.fell_behind and not report.passed
    assert report.sent_per_s is not None and report.sent_per_s < 0.9 * 200
    problem = report.problems[0]
    assert problem.startswith("the endpoint fell behind the asked rate of 200 requests/s")
    assert f"could send only {report.sent_per_s:.1f} requests/s" in problem
    assert "of a core" in problem  # the runner's own CPU use, so it can be ruled out


def test_fixed_rate_must_be_positive():
    with pytest.raises(ValueError, match="rate must be > 0"):
        run_latency(stalling_callers(0, 0), b"{}", LatencyObjective(requests=1), rate=0)


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers like the endpoints the runner meets: kept alive, chunked, closed after each."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"got": body.decode(), "port": self.client_address[1]}).encode()
        self.send_response(200 if self.path != "/fail" else 500)
        self.send_header("azureml-model-deployment", "blue")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (answer[:5], answer[5:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(answer)))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answers():  # type: ignore[no-untyped-def]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_plain_http_caller_keeps_one_connection_and_reads_every_kind_of_answer(answers):
    with http_callers(f"{answers}/score", {"Authorization": "Bearer k"}) as callers:
        caller = next(callers)
        assert isinstance(caller, PlainHttpCaller)
        first, second = caller(b'{"a": 1}'), caller(b'{"a": 2}')
        assert first.status == 200 and first.deployment == "blue"
        assert first.json()["got"] == '{"a": 1}' and second.json()["got"] == '{"a": 2}'
        assert first.json()["port"] == second.json()["port"]  # the same connection
    with http_callers(f"{answers}/chunked", {}) as callers:
        assert next(callers)(b"x").json()["got"] == "x"
    with http_callers(f"{answers}/close", {}) as callers:
        caller = next(callers)
        ports = {caller(b"y").json()["port"] for _ in range(3)}
        assert len(ports) == 3  # the server closed each time: a new connection each time
    with http_callers(f"{answers}/fail", {}) as callers:
        assert next(callers)(b"z").status == 500  # an HTTP error is an answer, not an exception


def test_plain_http_caller_reconnects_after_an_idle_close_and_reports_a_dead_endpoint(answers):
    caller = PlainHttpCaller(f"{answers}/score", {})
    assert caller(b"1").status == 200
    caller._socket.shutdown(socket.SHUT_RDWR)  # as if the server had closed the idle connection
    assert caller(b"2").json()["got"] == "2"
    caller.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no other process takes it
        dead = sock.getsockname()[1]
        with pytest.raises(BackendError, match="cannot reach"):
            PlainHttpCaller(f"http://127.0.0.1:{dead}/score", {})(b"{}")


@pytest.mark.timeout(300)
def test_a_push_runs_the_manifests_fixed_rate_and_refuses_a_rate_the_endpoint_cannot_keep(cli, iris):
    """Through a real push to the local target: `smoke_test.latency.rate` picks the mode."""
    doc = yaml.safe_load(iris.read_text())
    # No endpoint answers 100,000 requests/s from one caller: the run must say it fell behind.
    doc["smoke_test"]["latency"] = {"requests": 200, "concurrency": 1, "warmup": 0, "rate": 100_000}
    iris.write_text(yaml.safe_dump(doc))
    try:
        refused = cli("push", iris, "--json")
        assert refused.exit_code == ExitCode.LATENCY_MISSED, refused.stderr
        error = refused.json()
        assert "fell behind the asked rate of 100000 requests/s" in error["message"]
        latency = error["details"]["smoke"]["latency"]
        assert latency["mode"] == "fixed_rate" and latency["fell_behind"] is True
        assert f"could send only {latency['sent_per_s']:.1f} requests/s" in error["message"]
        assert "smoke_test.latency.rate" in error["hint"]
        assert cli("status", iris, "--json").json()["slots"] == []  # rolled back

        doc["smoke_test"]["latency"] = {"requests": 60, "concurrency": 2, "warmup": 2, "rate": 20}
        iris.write_text(yaml.safe_dump(doc))
        pushed = cli("push", iris, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        latency = pushed.json()["smoke"]["latency"]
        assert latency["mode"] == "fixed_rate" and latency["rate_per_s"] == 20
        assert latency["requests"] == 60 and not latency["fell_behind"]
        assert latency["duration_s"] >= 61 / 20  # the last of 62 requests is due 3.05 s in
        assert "fixed rate of 20 requests/s, 2 callers" in pushed.stderr
        shown = cli("test", iris)  # the human output names the mode too
        assert shown.exit_code == 0, shown.stderr
        assert "fixed rate: 20 requests/s asked" in shown.stderr
        assert "latencies from each request's scheduled send time" in shown.stderr

        del doc["smoke_test"]["latency"]["rate"]
        iris.write_text(yaml.safe_dump(doc))
        tested = cli("test", iris, "--json")
        assert tested.exit_code == 0, tested.stderr
        latency = tested.json()["latency"]
        assert latency["mode"] == "closed_loop" and latency["rate_per_s"] is None
    finally:
        cli("delete", iris, "--yes")


def test_a_rate_that_is_not_positive_is_a_manifest_error_naming_the_line(cli, iris):
    doc = yaml.safe_load(iris.read_text())
    doc["smoke_test"]["latency"]["rate"] = 0
    iris.write_text(yaml.safe_dump(doc))
    result = cli("validate", iris, "--json")
    assert result.exit_code == ExitCode.USAGE
    assert result.json()["message"].endswith("deploy.yaml:20: smoke_test.latency.rate: must be > 0.0")


def test_an_answer_replayed_from_a_batch_job_is_timed_by_that_job():
    """A batch target answers a repeated request from the job that already scored it; its
    latency is that job's time (elapsed_ms), not the microseconds of the replay."""
    from tdsp_deploy.backends.base import REPLAYED_ANSWER_HEADER

    def make():  # type: ignore[no-untyped-def]
        while True:

            def call(body: bytes) -> InvokeResult:
                return InvokeResult(200, body, {REPLAYED_ANSWER_HEADER: "batch-7"}, 42_000.0)

            yield call

    report = run_latency(make(), b"{}", LatencyObjective(requests=5, concurrency=1, warmup=0))
    assert report.p50_ms == report.p95_ms == 42_000.0
    plain = run_latency(slow_callers(0.001), b"{}", LatencyObjective(requests=5, concurrency=1, warmup=0))
    assert plain.p95_ms < 1_000  # without the header the runner's own clock decides
