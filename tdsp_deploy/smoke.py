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
set, requests are scheduled at fixed intervals (as wrk2 does) and each latency runs from
the request's scheduled start, so time spent waiting for a free caller counts too.
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

from tdsp_deploy.backends.base import Caller, InvokeResult, Progress, ProgressEvent, no_progress
from tdsp_deploy.errors import BackendError, LatencyObjectiveMissed, SmokeFailed
from tdsp_deploy.manifest.model import LatencyObjective, SmokeTestSection

MAX_DIFFERENCES = 10


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
    rate_per_s: float | None  # the fixed schedule's rate, None for a closed loop
    objective_p95_ms: float | None
    objective_max_error_rate: float
    passed: bool
    problems: list[str]
    error_samples: list[str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    per second): request n is due at start + n / rate, and its latency runs from when it was
    due, so a stall is charged to every request it delayed (no coordinated omission)."""
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0 requests per second")
    total = objective.warmup + objective.requests
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
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
            else:
                started = clock()
            try:
                status = caller(body).status
                error = None if status == 200 else f"HTTP {status}"
            except BackendError as exc:
                error = exc.message
            elapsed = (clock() - started) * 1000.0
            if measured:
                with lock:
                    latencies.append(elapsed)
                    if error:
                        errors.append(error)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    cpu_before = time.process_time()
    start = clock()
    for thread in threads:
        thread.start()
    _wait_with_progress(threads, lambda: issued, total, progress)
    duration = max(clock() - start, 1e-9)
    cpu = time.process_time() - cpu_before
    return _judge(sorted(latencies), errors, objective, duration, cpu, rate)


def _wait_with_progress(
    threads: list[threading.Thread], done: Callable[[], int], total: int, progress: Progress
) -> None:
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.25)
            progress(ProgressEvent(step="latency", message="latency run", done=done(), total=total))


def _judge(
    latencies: list[float],
    errors: list[str],
    objective: LatencyObjective,
    duration: float,
    cpu: float,
    rate: float | None,
) -> LatencyReport:
    count = len(latencies)
    error_rate = len(errors) / count if count else 1.0
    p95 = percentile(latencies, 0.95)
    problems = []
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
        rate_per_s=rate,
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
        latency = run_latency(new_callers, body, section.latency, progress=progress)
    report = SmokeReport(deployment, answer, latency)
    if not latency.passed:
        raise LatencyObjectiveMissed(
            "; ".join(latency.problems),
            hint="speed up the model or score.py, add target workers, or relax smoke_test.latency",
            details={"smoke": report.to_json()},
        )
    return report
