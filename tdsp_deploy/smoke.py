"""The smoke test: does the deployment answer correctly, and fast enough?

Backend-agnostic: it needs only callers (body in, answer out) from the backend, so every
target shares it. Answers are compared as JSON, numbers within a tolerance; the latency run
keeps ``concurrency`` callers busy, discards the warm-up, and reports percentiles.

Coordinated omission. By default the latency run is a closed loop, as `wrk` is: each caller
sends its next request when the previous answer arrives, and each latency runs from sending
to the whole answer. That measures the service time at a given concurrency, which is what
the objective states. It does not say what a client arriving at a fixed rate would see when
the endpoint stalls: a closed loop sends nothing during a stall, so the stall is counted
once, not once per request that would have waited (coordinated omission). With ``rate``
set (``smoke_test.latency.rate``), requests are scheduled at fixed intervals (as wrk2 does)
and each latency runs from the request's scheduled start, so time spent waiting for a free
caller counts too. An endpoint that cannot keep up with the rate at all (the runner could
send well below it) fails the run: its percentiles would describe a lower rate than asked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from tdsp_deploy.backends.base import (
    REPLAYED_ANSWER_HEADER,
    Caller,
    InvokeResult,
    Progress,
    ProgressEvent,
    no_progress,
)
from tdsp_deploy.errors import BackendError, LatencyObjectiveMissed, SmokeFailed
from tdsp_deploy.manifest.model import LatencyObjective, SmokeTestSection

MAX_DIFFERENCES = 10
# At a fixed rate, sending below this share of the asked rate over the whole run means the
# endpoint (or the callers in flight) could not keep up: a stall the run recovers from is
# what the fixed rate is there to measure, a schedule slipping for good is not.
BEHIND_FRACTION = 0.9
CLOSED_LOOP = "closed_loop"
FIXED_RATE = "fixed_rate"


# -- answers ---------------------------------------------------------------------------------
def json_differences(expected: Any, actual: Any, tolerance: float, path: str = "$") -> list[str]:
    """Where ``actual`` differs from ``expected``: exact JSON, numbers within ``tolerance``
    (absolute or relative, whichever is looser)."""
    if _is_number(expected) and _is_number(actual):
        if math.isclose(expected, actual, rel_tol=tolerance, abs_tol=tolerance):
            return []
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in expected.keys() - actual.keys():
            found.append(f"{path}.{key}: missing")
        for key in actual.keys() - expected.keys():
            found.append(f"{path}.{key}: not expected")
        for key in expected.keys() & actual.keys():
            found += json_differences(expected[key], actual[key], tolerance, f"{path}.{key}")
        return sorted(found)
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: expected {len(expected)} items, got {len(actual)}"]
        found = []
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found += json_differences(e, a, tolerance, f"{path}[{index}]")
        return found
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: expected {_short(expected)}, got {_short(actual)}"]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass
class AnswerReport:
    status: int
    deployment: str | None
    elapsed_ms: float
    passed: bool
    differences: list[str]
    response: Any

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_answer(result: InvokeResult, expected: Any | None, tolerance: float) -> AnswerReport:
    try:
        response: Any = result.json()
    except ValueError:
        response = result.body.decode("utf-8", "replace")
    differences: list[str] = []
    if result.status != 200:
        differences.append(f"status: expected 200, got {result.status}")
    elif expected is not None:
        differences = json_differences(expected, response, tolerance)
    return AnswerReport(
        status=result.status,
        deployment=result.deployment,
        elapsed_ms=round(result.elapsed_ms, 3),
        passed=not differences,
        differences=differences[:MAX_DIFFERENCES],
        response=response,
    )


# -- latency ---------------------------------------------------------------------------------
@dataclasses.dataclass
class LatencyReport:
    requests: int
    concurrency: int
    errors: int
    error_rate: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    requests_per_second: float
    duration_s: float
    client_cpu_s: float  # CPU time this process spent during the run (the runner's own cost)
    mode: str  # CLOSED_LOOP or FIXED_RATE
    rate_per_s: float | None  # the fixed schedule's rate, None for a closed loop
    sent_per_s: float | None  # at a fixed rate: the rate the runner managed to send at
    max_send_delay_ms: float | None  # at a fixed rate: the latest a request left after it was due
    fell_behind: bool  # at a fixed rate: sent below BEHIND_FRACTION of the rate (a problem)
    objective_p95_ms: float | None
    objective_max_error_rate: float
    passed: bool
    problems: list[str]
    error_samples: list[str]

    def describe_mode(self) -> str:
        """How the requests were sent, in a line (for the push and test output)."""
        if self.mode == FIXED_RATE:
            sent = f", {self.sent_per_s:g} sent" if self.sent_per_s is not None else ""
            return (
                f"fixed rate: {self.rate_per_s:g} requests/s asked{sent}, {_callers(self.concurrency)}; "
                "latencies from each request's scheduled send time"
            )
        return f"closed loop: {_callers(self.concurrency)}, each sending when its last answer arrived"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _callers(count: int) -> str:
    return f"{count} caller" if count == 1 else f"{count} callers"


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def run_latency(
    callers: Iterator[Caller],
    body: bytes,
    objective: LatencyObjective,
    *,
    progress: Progress = no_progress,
    rate: float | None = None,
) -> LatencyReport:
    """Send ``warmup + requests`` requests from ``concurrency`` threads, each with its own caller.

    Without ``rate``: a closed loop, each latency from send to answer. With ``rate`` (requests
    per second): request n is due at start + (n - 1) / rate, and its latency runs from when it
    was due, so a stall is charged to every request it delayed (no coordinated omission); a run
    that could not send at BEHIND_FRACTION of the rate fails (``fell_behind``)."""
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0 requests per second")
    total = objective.warmup + objective.requests
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    send_delays = [0.0] * (total if rate else 0)  # when each request left, after it was due
    workers = [next(callers) for _ in range(objective.concurrency)]
    interval = 1.0 / rate if rate else 0.0
    clock = time.perf_counter
    start = 0.0

    def take() -> int | None:
        nonlocal issued
        with lock:
            if issued >= total:
                return None
            issued += 1
            return issued

    def work(caller: Caller) -> None:
        while (number := take()) is not None:
            measured = number > objective.warmup
            if rate:
                due = start + (number - 1) * interval
                wait = due - clock()
                if wait > 0:
                    time.sleep(wait)
                started = due
                send_delays[number - 1] = clock() - due
            else:
                started = clock()
            answer = None
            try:
                answer = caller(body)
                error = None if answer.status == 200 else f"HTTP {answer.status}"
            except BackendError as exc:
                error = exc.message
            elapsed = (clock() - started) * 1000.0
            if answer is not None and REPLAYED_ANSWER_HEADER in answer.headers:
                elapsed = answer.elapsed_ms  # the time of the job that answered, not of the replay
            if measured:
                with lock:
                    latencies.append(elapsed)
                    if error:
                        errors.append(error)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    message = (
        f"latency run: fixed rate of {rate:g} requests/s, {_callers(objective.concurrency)}, "
        "latencies from each request's scheduled send time"
        if rate
        else f"latency run: closed loop of {_callers(objective.concurrency)}"
    )
    cpu_before = time.process_time()
    start = clock()
    for thread in threads:
        thread.start()
    _wait_with_progress(threads, lambda: issued, total, message, progress)
    duration = max(clock() - start, 1e-9)
    cpu = time.process_time() - cpu_before
    schedule = _schedule_kept(send_delays, rate) if rate else None
    return _judge(sorted(latencies), errors, objective, duration, cpu, schedule)


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """How well a fixed-rate run kept to its schedule."""

    rate: float
    sent_per_s: float | None  # None: a single request has no rate
    max_delay_s: float

    @property
    def fell_behind(self) -> bool:
        return self.sent_per_s is not None and self.sent_per_s < BEHIND_FRACTION * self.rate


def _schedule_kept(send_delays: list[float], rate: float) -> _Schedule:
    """The rate the requests actually left at: the schedule's span plus how late the last one
    left. Request n is due at (n - 1) / rate, so the delay of the last due request is how far
    the schedule slipped by the end."""
    count = len(send_delays)
    max_delay = max(send_delays, default=0.0)
    if count < 2:
        return _Schedule(rate, None, max_delay)
    span = (count - 1) / rate + max(send_delays[-1], 0.0)
    return _Schedule(rate, (count - 1) / span, max_delay)


def _wait_with_progress(
    threads: list[threading.Thread],
    done: Callable[[], int],
    total: int,
    message: str,
    progress: Progress,
) -> None:
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.25)
            progress(ProgressEvent(step="latency", message=message, done=done(), total=total))


def _judge(
    latencies: list[float],
    errors: list[str],
    objective: LatencyObjective,
    duration: float,
    cpu: float,
    schedule: _Schedule | None,
) -> LatencyReport:
    count = len(latencies)
    error_rate = len(errors) / count if count else 1.0
    p95 = percentile(latencies, 0.95)
    problems = []
    if schedule is not None and schedule.sent_per_s is not None and schedule.fell_behind:
        problems.append(
            f"the endpoint fell behind the asked rate of {schedule.rate:g} requests/s: with "
            f"{_callers(objective.concurrency)} the runner could send only {schedule.sent_per_s:.1f} "
            f"requests/s (a request left up to {schedule.max_delay_s * 1000:.0f} ms after it was due; "
            f"the runner itself used {cpu / duration:.2f} of a core)"
        )
    if objective.p95_ms is not None and not p95 <= objective.p95_ms:
        problems.append(f"p95 latency {p95:.1f} ms is above the objective of {objective.p95_ms:g} ms")
    if error_rate > objective.max_error_rate:
        problems.append(
            f"error rate {error_rate:.1%} is above the objective of {objective.max_error_rate:.1%} "
            f"({len(errors)} of {count} requests failed)"
        )
    rounded = lambda v: round(v, 3)  # noqa: E731
    return LatencyReport(
        requests=count,
        concurrency=objective.concurrency,
        errors=len(errors),
        error_rate=round(error_rate, 6),
        p50_ms=rounded(percentile(latencies, 0.50)),
        p90_ms=rounded(percentile(latencies, 0.90)),
        p95_ms=rounded(p95),
        p99_ms=rounded(percentile(latencies, 0.99)),
        max_ms=rounded(latencies[-1] if latencies else math.nan),
        mean_ms=rounded(sum(latencies) / count if count else math.nan),
        requests_per_second=round(count / duration, 1),
        duration_s=round(duration, 3),
        client_cpu_s=round(cpu, 3),
        mode=FIXED_RATE if schedule else CLOSED_LOOP,
        rate_per_s=schedule.rate if schedule else None,
        sent_per_s=round(schedule.sent_per_s, 1) if schedule and schedule.sent_per_s else None,
        max_send_delay_ms=rounded(schedule.max_delay_s * 1000) if schedule else None,
        fell_behind=bool(schedule and schedule.fell_behind),
        objective_p95_ms=objective.p95_ms,
        objective_max_error_rate=objective.max_error_rate,
        passed=not problems,
        problems=problems,
        error_samples=sorted(set(errors))[:5],
    )


# -- the whole smoke test ------------------------------------------------------------------
@dataclasses.dataclass
class SmokeReport:
    deployment: str | None
    answer: AnswerReport
    latency: LatencyReport | None

    @property
    def passed(self) -> bool:
        return self.answer.passed and (self.latency is None or self.latency.passed)

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "passed": self.passed,
            "answer": self.answer.to_json(),
            "latency": self.latency.to_json() if self.latency else None,
        }


def run_smoke_test(
    callers: Callable[[str | None], AbstractContextManager[Iterator[Caller]]],
    section: SmokeTestSection,
    *,
    deployment: str | None,
    progress: Progress = no_progress,
) -> SmokeReport:
    """Check the answer, then the latency; raise SmokeFailed (exit 5) or
    LatencyObjectiveMissed (exit 6) with the report attached."""
    body = section.request.read_bytes()
    expected = json.loads(section.expect.read_text(encoding="utf-8")) if section.expect else None
    with callers(deployment) as new_callers:
        progress(ProgressEvent(step="smoke", message="sending the sample request"))
        answer = check_answer(next(new_callers)(body), expected, section.tolerance)
        if not answer.passed:
            report = SmokeReport(deployment, answer, None)
            raise SmokeFailed(
                "the deployment answered wrong:\n  " + "\n  ".join(answer.differences),
                hint="compare with smoke_test.expect, or read the slot's log (tdsp-deploy logs)",
                details={"smoke": report.to_json()},
            )
        latency = run_latency(
            new_callers, body, section.latency, progress=progress, rate=section.latency.rate
        )
    report = SmokeReport(deployment, answer, latency)
    if not latency.passed:
        hint = "speed up the model or score.py, add target workers, or relax smoke_test.latency"
        if latency.fell_behind:
            hint = (
                "raise smoke_test.latency.concurrency (requests in flight at once), lower "
                "smoke_test.latency.rate, or add target workers"
            )
        raise LatencyObjectiveMissed(
            "; ".join(latency.problems),
            hint=hint,
            details={"smoke": report.to_json()},
        )
    return report
