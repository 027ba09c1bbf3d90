"""No answer ever reaches the wrong client: many concurrent clients, drawn by hypothesis, send
mixed requests through a real pushed endpoint (two slots, real inference servers) - random
body sizes, ``Expect: 100-continue`` (waiting for the 100, or not), pipelining, keep-alive,
a connection per request, ``Connection: close`` - while slots are killed and restarted by the
supervisor. Every answer must carry its own request's id, and every 200 the scoring script's
echo of its own body (id, length, SHA-256)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fakes.echo_endpoint import belongs, body_for, read_answer, write_echo_manifest

pytestmark = pytest.mark.timeout(600)

PADDING = [0, 0, 10, 300, 5_000, 70_000, 400_000]
ERRORS_DURING_RESTART = {502, 503}
MAX_RESTARTS = 2


@dataclasses.dataclass(frozen=True)
class Call:
    padding: int
    expect: str  # "" | "wait" (for the 100) | "eager" (body at once)
    close: bool = False  # Connection: close


@dataclasses.dataclass(frozen=True)
class ClientPlan:
    mode: str  # "keepalive" | "pipelined" | "fresh"
    calls: tuple[Call, ...]


calls = st.builds(
    Call,
    padding=st.sampled_from(PADDING),
    expect=st.sampled_from(["", "", "wait", "eager"]),
    close=st.sampled_from([False] * 9 + [True]),
)
plans = st.builds(
    ClientPlan,
    mode=st.sampled_from(["keepalive", "keepalive", "pipelined", "fresh"]),
    calls=st.lists(calls, min_size=1, max_size=12).map(tuple),
)


@dataclasses.dataclass
class Outcome:
    request_id: str
    body: bytes
    status: int | None  # None: no answer (the connection closed after an earlier Connection: close)
    answer_id: str | None
    answer: bytes


class Endpoint:
    def __init__(self, uri: str, key: str, home: str):
        parts = urllib.parse.urlsplit(uri)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.key = key.encode()
        self.home = home
        self.restarts: list[float] = []
        self.lock = threading.Lock()

    def head(self, call: Call, request_id: str, length: int) -> bytes:
        lines = [
            b"POST /score HTTP/1.1",
            b"Host: endpoint",
            b"Authorization: Bearer " + self.key,
            b"Content-Type: application/json",
            b"x-request-id: " + request_id.encode(),
            b"Content-Length: %d" % length,
        ]
        if call.expect:
            lines.append(b"Expect: 100-continue")
        if call.close:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=60)

    def run(self, plan: ClientPlan) -> list[Outcome]:
        if plan.mode == "pipelined":
            return self._pipelined(plan)
        outcomes: list[Outcome] = []
        sock: socket.socket | None = None
        buffered = b""
        try:
            for call in plan.calls:
                if sock is None or plan.mode == "fresh":
                    if sock is not None:
                        sock.close()
                    sock, buffered = self.connect(), b""
                request_id = uuid.uuid4().hex
                body = body_for(request_id, call.padding)
                head = self.head(call, request_id, len(body))
                if call.expect == "wait":
                    sock.sendall(head)
                    status, _, _, buffered = read_answer(sock, buffered)
                    if status == 100:
                        sock.sendall(body)
                        status, headers, answer, buffered = read_answer(sock, buffered)
                else:
                    sock.sendall(head + body)
                    status, headers, answer, buffered = read_answer(sock, buffered)
                    while status == 100:  # allowed to an eager sender too, then once only
                        status, headers, answer, buffered = read_answer(sock, buffered)
                outcomes.append(Outcome(request_id, body, status, headers.get("x-request-id"), answer))
                if call.close or headers.get("connection") == "close":
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()
        return outcomes

    def _pipelined(self, plan: ClientPlan) -> list[Outcome]:
        sent = []
        stream = b""
        for call in plan.calls:
            request_id = uuid.uuid4().hex
            body = body_for(request_id, call.padding)
            # Pipelined senders do not wait for a 100 (they have sent the body already).
            stream += self.head(
                dataclasses.replace(call, expect="eager" if call.expect else ""), request_id, len(body)
            )
            stream += body
            sent.append((request_id, body, call.close))
        outcomes = []
        with self.connect() as sock:
            writer = threading.Thread(target=_send_quietly, args=(sock, stream))
            writer.start()
            buffered = b""
            closed = False
            for request_id, body, close in sent:
                if closed:
                    outcomes.append(Outcome(request_id, body, None, None, b""))
                    continue
                status, headers, answer, buffered = read_answer(sock, buffered)
                while status == 100:
                    status, headers, answer, buffered = read_answer(sock, buffered)
                outcomes.append(Outcome(request_id, body, status, headers.get("x-request-id"), answer))
                closed = close or headers.get("connection") == "close"
            writer.join(timeout=60)
        return outcomes

    def restart_a_slot(self) -> None:
        """Kill blue's server (its whole process group); the supervisor starts it again. Always
        blue: green keeps serving meanwhile (both down at once would be 503s, not a test of
        delivery)."""
        with self.lock:
            if len(self.restarts) >= MAX_RESTARTS:
                return
            self.restarts.append(time.monotonic())
        for process in psutil.process_iter(["cmdline"]):
            try:
                cmdline = " ".join(process.info["cmdline"] or [])
                # the slot server leads its own process group (processes.spawn): its workers too
                if (
                    "slot_server" in cmdline
                    and f"{self.home}/endpoints/echo/slots/blue/" in cmdline
                    and os.getpgid(process.pid) == process.pid
                ):
                    os.killpg(process.pid, signal.SIGKILL)
                    return
            except (psutil.Error, ProcessLookupError):
                continue

    def recently_restarted(self) -> bool:
        return any(time.monotonic() - at < 20 for at in self.restarts)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    # the router closes after a Connection: close; what follows it is not answered
    with contextlib.suppress(OSError):
        sock.sendall(data)


@pytest.fixture
def endpoint(cli, tmp_path, state_home):  # type: ignore[no-untyped-def]
    manifest = write_echo_manifest(tmp_path / "echo")
    assert cli("push", manifest).exit_code == 0
    doc = yaml.safe_load(manifest.read_text())
    doc["environment"] = {"variables": {"VERSION": "2"}}  # a second slot, half the traffic
    doc["rollout"]["traffic"] = 50
    manifest.write_text(yaml.safe_dump(doc))
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        assert pushed.json()["traffic"] == {"blue": 50, "green": 50}
        key = cli("credentials", manifest, "--json").json()["primary_key"]
        yield Endpoint(pushed.json()["scoring_uri"], key, str(state_home))
    finally:
        cli("delete", manifest, "--yes")


def check(endpoint: Endpoint, outcomes: list[Outcome]) -> None:
    misdelivered = []
    for outcome in outcomes:
        if outcome.status is None:
            continue
        if outcome.answer_id != outcome.request_id:
            misdelivered.append((outcome.request_id, outcome.status, outcome.answer_id, outcome.answer[:120]))
        elif outcome.status == 200:
            if not belongs(outcome.body, outcome.answer):
                misdelivered.append((outcome.request_id, 200, "body", outcome.answer[:120]))
        elif not (outcome.status in ERRORS_DURING_RESTART and endpoint.recently_restarted()):
            misdelivered.append((outcome.request_id, outcome.status, "status", outcome.answer[:200]))
    assert not misdelivered, misdelivered[:5]


def run_clients(endpoint: Endpoint, clients: list[ClientPlan], restart: bool) -> list[Outcome]:
    with ThreadPoolExecutor(len(clients) + 1) as pool:
        futures = [pool.submit(endpoint.run, plan) for plan in clients]
        if restart:
            time.sleep(0.05)
            endpoint.restart_a_slot()
        return [outcome for future in futures for outcome in future.result()]


# A fixed heavy mix, with a slot killed in the middle of it, run first: the volume the issue
# asks for (16 clients x 60 requests) on top of what hypothesis draws.
HEAVY_MIX = [
    ClientPlan(
        mode,
        tuple(Call(PADDING[(n + i) % len(PADDING)], ["", "wait", "eager"][(n * i) % 3]) for i in range(60)),
    )
    for n, mode in enumerate(
        ["keepalive", "pipelined", "fresh", "keepalive", "pipelined", "keepalive", "fresh", "keepalive"] * 2
    )
]
TALLY: dict[str, Any] = {"requests": 0, "answered": 0, "statuses": collections.Counter()}


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same mixes every run: a failure here is a bug, not bad luck
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(clients=st.lists(plans, min_size=1, max_size=8), restart=st.sampled_from([False] * 12 + [True]))
@example(clients=HEAVY_MIX, restart=True)
def every_answer_belongs_to_its_request(endpoint, clients, restart):
    outcomes = run_clients(endpoint, clients, restart)
    check(endpoint, outcomes)
    answered = sum(o.status == 200 for o in outcomes)
    assert answered or endpoint.recently_restarted()
    if clients is HEAVY_MIX:
        assert len(outcomes) == 960 and answered > 0.8 * len(outcomes), answered
    TALLY["requests"] += len(outcomes)
    TALLY["answered"] += answered
    TALLY["statuses"].update(str(o.status) for o in outcomes)


def test_every_answer_belongs_to_its_request(endpoint):
    """The property over every drawn mix, then the volume the issue asks for. One test, so that
    the volume is checked in the process that ran the mixes (under -n, tests of one file may
    run in different workers)."""
    TALLY.update(requests=0, answered=0, statuses=collections.Counter())
    every_answer_belongs_to_its_request(endpoint)
    assert TALLY["requests"] >= 2000, TALLY
    print(
        f"property test: {TALLY['requests']} requests, {TALLY['answered']} answered 200, none misdelivered;"
        f" statuses {dict(TALLY['statuses'])} (None: not read, after a Connection: close)"
    )
