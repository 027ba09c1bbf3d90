"""The router process against upstream servers we control, over real loopback sockets."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tdsp_deploy.backends.local.processes import free_port
from tdsp_deploy.backends.local.routes import RouteTable, SlotRoute
from tests.fakes.router_harness import (
    ADMIN,
    AUTH,
    KEY,
    RouterProcess,
    Upstream,
    routers_for_test,
    upstream_for_test,
    wait_for,
)
from tests.fakes.slot_process import HTTP_SERVERS, SlotProcess


@pytest.fixture
def blue():  # type: ignore[no-untyped-def]
    yield from upstream_for_test("blue")


@pytest.fixture
def make_router(tmp_path):  # type: ignore[no-untyped-def]
    yield from routers_for_test(tmp_path)


def test_forwards_the_request_and_names_the_slot(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    status, headers, body = router.post(
        b'{"data": 1}', {"x-custom": "yes", "azureml-model-deployment": "blue", "Connection": "keep-alive"}
    )
    echoed = json.loads(body)
    assert status == 200
    assert headers["azureml-model-deployment"] == "blue"
    assert headers["x-upstream-header"] == "kept"
    assert echoed["body"] == '{"data": 1}' and echoed["path"] == "/score"
    assert echoed["headers"]["x-custom"] == "yes"
    # the key and connection-level headers stay at the router
    for private in ("authorization", "azureml-model-deployment", "keep-alive"):
        assert private not in echoed["headers"]


def test_keeps_client_connections_alive(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    connection = router.connection()
    for number in range(5):
        connection.request("POST", "/score", body=str(number).encode(), headers=AUTH)
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["body"] == str(number)
        assert not response.will_close
    connection.close()


def test_answers_pipelined_requests_in_order(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    requests = b"".join(
        f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Length: 1\r\n\r\n{n}".encode()
        for n in range(3)
    )
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(requests)
        received = b""
        while received.count(b"HTTP/1.1 200") < 3 or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    bodies = [json.loads(part[part.index(b"{") :])["body"] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert bodies == ["0", "1", "2"]


def test_chunked_request_bodies_are_forwarded_whole(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    connection = router.connection()
    connection.request("POST", "/score", body=iter([b'{"a":', b" 1}"]), headers=AUTH, encode_chunked=True)
    response = connection.getresponse()
    assert json.loads(response.read())["body"] == '{"a": 1}'


def test_refuses_missing_and_wrong_keys_but_takes_the_secondary(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    connection = router.connection()
    connection.request("POST", "/score", body=b"{}")
    response = connection.getresponse()
    assert response.status == 401 and response.getheader("WWW-Authenticate") == "Bearer"
    response.read()
    assert router.post(headers={"Authorization": "Bearer nope"})[0] == 401
    assert router.post(headers={"Authorization": KEY})[0] == 401  # the scheme is required
    assert router.post(headers={"Authorization": "Bearer second-key"})[0] == 200


def test_liveness_needs_no_key(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    connection = router.connection()
    connection.request("GET", "/")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"Healthy")
    connection.request("HEAD", "/score", headers=AUTH)  # not forwarded: the slot's bodiless answer
    response = connection.getresponse()
    response.read()
    assert response.status == 405


def test_pinned_request_to_an_unreachable_slot_is_a_503_and_the_router_keeps_serving(make_router, blue):
    dead_port = free_port()
    router = make_router({"blue": (blue.port, 100), "gone": (dead_port, 0)})
    status, headers, body = router.post(headers={"azureml-model-deployment": "gone"})
    assert status == 503 and headers["azureml-model-deployment"] == "gone"
    assert "deployment 'gone' is unavailable" in json.loads(body)["message"]
    assert router.post()[0] == 200


def test_a_slot_down_for_long_keeps_getting_503s_and_the_others_keep_serving(make_router, blue):
    """A slot that stays down is refused on every request pinned to it: well past 1024 refusals
    in a row (where its back-off once overflowed, the router's task died and the caller's
    connection was never answered again) pinned callers still get 503s on the same kept-alive
    connection, and weighted ones still reach the other slot."""
    router = make_router({"blue": (blue.port, 50), "gone": (free_port(), 50)})
    connection = router.connection()
    pinned = {**AUTH, "azureml-model-deployment": "gone"}
    statuses: Counter[int] = Counter()
    for _ in range(1100):
        connection.request("POST", "/score", body=b"{}", headers=pinned)
        response = connection.getresponse()
        response.read()
        statuses[response.status] += 1
    assert statuses == {503: 1100}
    time.sleep(5.5)  # the longest back-off: weighted requests try the dead slot again, and retry
    for _ in range(20):
        connection.request("POST", "/score", body=b"{}", headers=AUTH)
        response = connection.getresponse()
        assert (response.status, response.getheader("azureml-model-deployment")) == (200, "blue")
        response.read()
    connection.close()
    log = (router.dir / "router.log").read_text()
    assert "Traceback" not in log
    assert log.count("deployment gone (port") <= 12  # said at 1, 2, 4, ... 1024 refusals, not 1100 times


def test_upstream_connections_are_pooled_and_reused(make_router):
    slot = Upstream("pooled", keep_alive=True)
    try:
        router = make_router({"pooled": (slot.port, 100)})
        connection = router.connection()
        ports = []
        for _ in range(20):
            connection.request("POST", "/score", body=b"{}", headers=AUTH)
            response = connection.getresponse()
            assert response.status == 200
            ports.append(json.loads(response.read())["client_port"])
        assert len(set(ports)) == 1  # one connection to the slot carried all 20 requests
    finally:
        slot.shutdown()


def test_weighted_request_goes_to_another_slot_when_its_slot_cannot_be_reached(make_router, blue):
    router = make_router({"blue": (blue.port, 50), "gone": (free_port(), 50)})
    answers = [router.post() for _ in range(30)]
    assert [status for status, _, _ in answers] == [200] * 30  # not one caller saw the dead slot
    assert {headers["azureml-model-deployment"] for _, headers, _ in answers} == {"blue"}
    state = router.get_json("/-/state")
    assert state["down"] == ["gone"]  # left out for a back-off after it refused
    metrics = router.get_text("/metrics")
    retried = re.search(r'tdsp_requests_retried_total\{endpoint="test",deployment="gone"\} (\d+)', metrics)
    assert retried and int(retried.group(1)) >= 1
    # with no other slot to go to, the caller is told which slot is unavailable
    lonely = make_router({"gone": (free_port(), 100)})
    status, headers, body = lonely.post()
    assert status == 503 and "deployment 'gone' is unavailable" in json.loads(body)["message"]


def test_requests_in_flight_are_counted_per_slot(make_router, blue):
    slow = Upstream("slow", delay=1.0)
    try:
        router = make_router({"slow": (slow.port, 100), "blue": (blue.port, 0)})
        workers = [threading.Thread(target=router.post) for _ in range(3)]
        for worker in workers:
            worker.start()
        seen = wait_for(lambda: router.get_json("/-/state")["in_flight"], lambda v: v["slow"] == 3)
        assert seen == {"slow": 3, "blue": 0}
        gauge = 'tdsp_requests_in_flight{endpoint="test",deployment="slow"}'
        assert f"{gauge} 3" in router.get_text("/metrics")
        for worker in workers:
            worker.join(timeout=10)
        assert router.get_json("/-/state")["in_flight"] == {"slow": 0, "blue": 0}
        assert f"{gauge} 0" in router.get_text("/metrics")
    finally:
        slow.shutdown()


def test_drain_stops_new_requests_and_answers_when_the_slot_is_idle(make_router, blue):
    slow = Upstream("slow", delay=0.8)
    try:
        router = make_router({"slow": (slow.port, 50), "blue": (blue.port, 50)})
        pin = {"azureml-model-deployment": "slow"}
        results: list[int] = []
        workers = [
            threading.Thread(target=lambda: results.append(router.post(headers=pin)[0])) for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        wait_for(lambda: router.get_json("/-/state")["in_flight"]["slow"], lambda n: n == 2)
        drained: list[tuple[int, dict]] = []
        drainer = threading.Thread(
            target=lambda: drained.append(router.control("/-/drain", {"deployment": "slow"}))
        )
        drainer.start()
        wait_for(lambda: router.get_json("/-/state")["draining"], lambda names: names == ["slow"])
        # while it drains: weighted traffic all goes to the other slot, a pinned request is refused
        assert {router.post()[1]["azureml-model-deployment"] for _ in range(20)} == {"blue"}
        status, _, body = router.post(headers=pin)
        assert status == 503 and "draining" in json.loads(body)["message"]
        drainer.join(timeout=10)
        for worker in workers:
            worker.join(timeout=10)
        assert results == [200, 200]  # what was in flight was answered
        status, answer = drained[0]
        assert status == 200 and answer["drained"] is True and answer["in_flight"] == 0
        assert answer["waited_s"] > 0.2  # it waited for the two slow requests
        assert router.control("/-/resume", {"deployment": "slow"})[0] == 200
        assert router.post(headers=pin)[0] == 200
    finally:
        slow.shutdown()


def test_drain_gives_up_after_its_timeout_and_says_how_many_are_left(make_router):
    slow = Upstream("slow", delay=2.0)
    try:
        router = make_router({"slow": (slow.port, 100)})
        worker = threading.Thread(target=router.post)
        worker.start()
        wait_for(lambda: router.get_json("/-/state")["in_flight"]["slow"], lambda n: n == 1)
        status, answer = router.control("/-/drain", {"deployment": "slow", "timeout_s": 0.2})
        assert status == 504 and answer["drained"] is False and answer["in_flight"] == 1
        assert "1 requests still in flight" in answer["message"]
        worker.join(timeout=10)
        # by port: a process that already left the routes, with nothing in flight, is drained at once
        status, answer = router.control("/-/drain", {"port": free_port()})
        assert status == 200 and answer["drained"] is True
    finally:
        slow.shutdown()


def test_drain_refuses_bad_requests(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    assert router.control("/-/drain", {"deployment": "nope"})[0] == 404
    assert router.control("/-/drain", {})[0] == 400
    assert router.control("/-/drain", {"deployment": "blue", "timeout_s": "soon"})[0] == 400
    assert router.control("/-/drain", {"deployment": "blue", "timeout_s": 10**400})[0] == 400  # no float
    assert router.control("/-/drain", {"deployment": "blue"}, headers={})[0] == 401  # needs the key
    connection = router.connection()
    connection.request("GET", "/-/drain", headers=ADMIN)
    assert connection.getresponse().status == 405
    assert router.get_json("/-/state")["draining"] == []  # none of these drained anything


def test_slow_slot_is_a_504():
    slow = Upstream("slow", delay=2.0)
    tmp = Path(os.environ["TDSP_DEPLOY_HOME"])
    router = RouterProcess(tmp, {"slow": (slow.port, 100)}, timeout_s=0.3)
    try:
        status, _, body = router.post()
        assert status == 504 and "did not answer within 0.3 s" in json.loads(body)["message"]
    finally:
        router.stop()
        slow.shutdown()


def test_no_traffic_is_a_503_unless_pinned(make_router, blue):
    router = make_router({"blue": (blue.port, 0)})
    status, _, body = router.post()
    assert status == 503 and "no deployment takes traffic" in json.loads(body)["message"]
    assert router.post(headers={"azureml-model-deployment": "blue"})[0] == 200


def test_oversized_and_malformed_requests(make_router, blue):
    router = make_router({"blue": (blue.port, 100)}, max_bytes=100)
    status, _, body = router.post(b"x" * 101)
    assert status == 413 and "target.max_request_mb" in json.loads(body)["message"]
    connection = router.connection()  # a chunked body without a length is counted too
    connection.request("POST", "/score", body=iter([b"x" * 60, b"y" * 60]), headers=AUTH, encode_chunked=True)
    assert connection.getresponse().status == 413
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 400")
    assert router.post()[0] == 200


def test_scoring_bodies_that_are_not_json_are_refused_unless_the_slot_takes_raw_requests(make_router, blue):
    raw = Upstream("raw")
    try:
        router = make_router({"blue": (blue.port, 100), "raw": (raw.port, 0, 0, True)})
        status, headers, body = router.post(b"a,b", {"Content-Type": "text/csv"})
        assert status == 415 and "'Content-Type: application/json'" in json.loads(body)["message"]
        assert headers["azureml-model-deployment"] == "blue"  # as if the slot had answered it
        status, _, body = router.post(b'{"a": tru}')
        assert status == 400 and "line 1, column 7" in json.loads(body)["message"]
        assert router.post(b"")[0] == 400
        status, _, body = router.post(b"\xef\xbb\xbf{}")
        assert status == 400 and "byte order mark" in json.loads(body)["message"]
        for content_type in (
            "application/json; charset=utf-8",
            "application/problem+json",
            "APPLICATION/JSON",
        ):
            assert router.post(b'{"a": 1}', {"Content-Type": content_type})[0] == 200, content_type
        assert router.post(b"[1, 2]")[0] == 200  # no Content-Type: the body alone decides
        # a slot whose run() takes raw requests gets them as they were sent
        pin = {"azureml-model-deployment": "raw", "Content-Type": "text/csv"}
        status, headers, body = router.post(b"a,b", pin)
        assert status == 200 and json.loads(body)["body"] == "a,b"
        assert headers["azureml-model-deployment"] == "raw"
        # only POST /score is the scoring script's: other paths go through as they are
        connection = router.connection()
        connection.request("POST", "/other", body=b"plain", headers={**AUTH, "Content-Type": "text/plain"})
        assert connection.getresponse().status == 200
        connection.close()
        metrics = router.get_text("/metrics")
        assert re.search(r'tdsp_requests_total\{[^}]*deployment="blue"[^}]*code="415"[^}]*\} 1', metrics), (
            metrics
        )
    finally:
        raw.shutdown()


def test_sighup_reloads_routes_and_weights_split_traffic(make_router, blue):
    green = Upstream("green")
    try:
        router = make_router({"blue": (blue.port, 100)})
        router.write({"blue": (blue.port, 70), "green": (green.port, 30)}, generation=2)
        router.process.send_signal(signal.SIGHUP)
        connection = router.connection()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            connection.request("GET", "/-/state", headers=ADMIN)
            state = json.loads(connection.getresponse().read())
            if state["generation"] == 2:
                break
            time.sleep(0.05)
        assert state["slots"] == {
            "blue": {"port": blue.port, "weight": 70, "mirror": 0},
            "green": {"port": green.port, "weight": 30, "mirror": 0},
        }
        counts = Counter()
        for _ in range(400):
            connection.request("POST", "/score", body=b"{}", headers=AUTH)
            response = connection.getresponse()
            response.read()
            counts[response.getheader("azureml-model-deployment")] += 1
        # 400 draws at p=0.3: the standard deviation of green's count is ~9; allow 4 of them
        assert abs(counts["green"] - 120) < 37, counts
        assert counts["blue"] + counts["green"] == 400
    finally:
        green.shutdown()


def test_sigterm_lets_in_flight_requests_finish():
    slow = Upstream("slow", delay=0.5)
    tmp = Path(os.environ["TDSP_DEPLOY_HOME"])
    router = RouterProcess(tmp, {"slow": (slow.port, 100)})
    results: list[int] = []
    try:
        worker = threading.Thread(target=lambda: results.append(router.post()[0]))
        worker.start()
        time.sleep(0.2)
        router.process.send_signal(signal.SIGTERM)
        worker.join(timeout=10)
        assert results == [200]
        assert router.process.wait(timeout=10) == 0
    finally:
        router.stop()
        slow.shutdown()


def test_route_table_splits_by_weight_and_pins_by_name():
    table = RouteTable(
        (SlotRoute("blue", 1, 90), SlotRoute("green", 2, 10), SlotRoute("idle", 3, 0)), rng=random.Random(7)
    )
    counts = Counter(table.choose().name for _ in range(10_000))
    assert set(counts) == {"blue", "green"}
    assert 850 <= counts["green"] <= 1150
    assert table.pinned("idle").port == 3 and table.pinned("nope") is None
    assert RouteTable((SlotRoute("a", 1, 0),)).choose() is None


def test_request_ids_are_kept_or_made_and_reach_the_slot(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    status, headers, body = router.post(headers={"x-request-id": "caller-chose-this"})
    assert headers["x-request-id"] == "caller-chose-this"
    assert json.loads(body)["headers"]["x-request-id"] == "caller-chose-this"
    _, made, body = router.post()
    assert (
        len(made["x-request-id"]) == 32
        and json.loads(body)["headers"]["x-request-id"] == made["x-request-id"]
    )
    _, again, _ = router.post()
    assert again["x-request-id"] != made["x-request-id"]


def test_sticky_keys_always_reach_the_same_slot(make_router, blue):
    green = Upstream("green")
    try:
        router = make_router({"blue": (blue.port, 50), "green": (green.port, 50)}, sticky_header="X-User")
        seen: dict[str, set[str]] = {}
        for _ in range(3):
            for user in range(40):
                _, headers, _ = router.post(headers={"x-user": f"user-{user}"})
                seen.setdefault(f"user-{user}", set()).add(headers["azureml-model-deployment"])
        assert all(len(slots) == 1 for slots in seen.values())
        chosen = Counter(next(iter(slots)) for slots in seen.values())
        assert set(chosen) == {"blue", "green"}  # keys spread over both slots
    finally:
        green.shutdown()


def test_mirror_copies_requests_but_the_caller_gets_the_live_answer(make_router, blue, tmp_path):
    shadow = Upstream("shadow", delay=0.3)  # a slow shadow must not slow the caller
    try:
        router = make_router(
            {"blue": (blue.port, 100), "shadow": (shadow.port, 0, 50)},
            request_log=str(tmp_path / "requests.jsonl"),
        )
        started = time.perf_counter()
        answers = [router.post(b'{"n": %d}' % i) for i in range(20)]
        elapsed = time.perf_counter() - started
        assert all(json.loads(body)["upstream"] == "blue" for _, _, body in answers)
        assert all(headers["azureml-model-deployment"] == "blue" for _, headers, _ in answers)
        assert elapsed < 0.3 * 20 / 4  # the shadows' 0.3 s each never added up on the caller's side
        time.sleep(1.5)  # shadows finish, and the log is flushed within a second
        records = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
        live = [r for r in records if r["kind"] == "live"]
        shadows = [r for r in records if r["kind"] == "shadow"]
        assert len(live) == 20 and {r["deployment"] for r in live} == {"blue"}
        assert 3 <= len(shadows) <= 17  # ~50% of 20
        live_ids = {r["id"] for r in live}
        assert all(r["id"] in live_ids and r["deployment"] == "shadow" for r in shadows)
        assert all(r["agreed"] is False for r in shadows)  # the echo servers name themselves
    finally:
        shadow.shutdown()


def test_metrics_in_prometheus_format_and_the_request_log(make_router, blue, tmp_path):
    router = make_router(
        {"blue": (blue.port, 100), "gone": (free_port(), 0)}, request_log=str(tmp_path / "requests.jsonl")
    )
    for _ in range(3):
        router.post()
    router.post(headers={"azureml-model-deployment": "gone"})
    connection = router.connection()
    connection.request("GET", "/metrics")
    assert connection.getresponse().status == 401  # the key guards metrics too
    connection = router.connection()
    connection.request("GET", "/metrics", headers=AUTH)
    response = connection.getresponse()
    assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    text = response.read().decode()
    assert 'tdsp_requests_total{endpoint="test",deployment="blue",code="200"} 3' in text
    assert 'tdsp_requests_total{endpoint="test",deployment="gone",code="503"} 1' in text
    assert 'tdsp_request_errors_total{endpoint="test",deployment="gone"} 1' in text
    assert 'tdsp_request_duration_seconds_count{endpoint="test",deployment="blue"} 3' in text
    assert 'tdsp_request_duration_seconds_bucket{endpoint="test",deployment="blue",le="+Inf"} 3' in text
    records = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [(r["deployment"], r["status"], r["pinned"]) for r in records] == [
        ("blue", 200, False),
        ("blue", 200, False),
        ("blue", 200, False),
        ("gone", 503, True),
    ]
    assert all(r["latency_ms"] > 0 and len(r["id"]) == 32 for r in records)


def test_sticky_hash_is_stable_and_salted():
    from tdsp_deploy.backends.local.routes import key_fraction

    assert key_fraction(b"exp-1", b"user-7") == key_fraction(b"exp-1", b"user-7")
    assert key_fraction(b"exp-1", b"user-7") != key_fraction(b"exp-2", b"user-7")
    fractions = [key_fraction(b"exp", f"user-{i}".encode()) for i in range(10_000)]
    assert 0.48 < sum(f < 0.5 for f in fractions) / 10_000 < 0.52


ECHO_SCORE = "def init():\n    pass\n\n\ndef run(raw_data):\n    return {'echo': raw_data}\n"


@HTTP_SERVERS
def test_slot_server_runs_the_manifests_workers_with_keep_alive(tmp_path, http_server):
    """The slot process itself: the inference server with N workers, keeping connections open
    for the router's pool, and logging each request once (no second access line)."""
    import psutil

    slot = SlotProcess(tmp_path, ECHO_SCORE, workers=2, http_server=http_server)
    try:
        connection = slot.connection()
        for number in range(3):  # one connection for all: the server keeps it open
            connection.request(
                "POST", "/score", body=f'"{number}"', headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200 and not response.will_close
            assert json.loads(response.read()) == {"echo": f'"{number}"'}  # run() gets the raw body
        connection.close()
        workers = wait_for(lambda: psutil.Process(slot.process.pid).children(), lambda found: len(found) == 2)
        assert len(workers) == 2  # --worker_count reached the HTTP server
        time.sleep(0.5)
        text = slot.log_path.read_text()
        assert text.count("POST /score") == 3, text[-2000:]  # the server's own line, once per request
    finally:
        slot.stop()


@HTTP_SERVERS
def test_slot_keeps_the_scoring_time_limit_on_its_worker_thread(tmp_path, http_server):
    score = (
        "import time\n\n\ndef init():\n    pass\n\n\n"
        "def run(raw_data):\n"
        "    if raw_data == '\"spin\"':\n"
        "        while True:\n"
        "            pass\n"
        "    if raw_data == '\"block\"':\n"
        "        time.sleep(120)\n"
        "    return {'ok': True}\n"
    )
    slot = SlotProcess(tmp_path, score, scoring_timeout_ms=500, http_server=http_server)
    try:
        # a run() busy in Python is interrupted at the limit, and the server says so
        status, body = slot.post(b'"spin"')
        assert status == 500 and "Scoring timeout" in json.loads(body)["message"]
        assert slot.post(b'"fine"') == (200, b'{"ok": true}')
        # a run() stuck in C cannot be interrupted: its worker is replaced, and the slot serves again
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            slot.post(b'"block"')
        wait_for(lambda: _answer_or_none(slot), lambda answer: answer == (200, b'{"ok": true}'), timeout=60)
    finally:
        slot.stop()


def _answer_or_none(slot: SlotProcess) -> tuple[int, bytes] | None:
    try:
        return slot.post(b'"fine"')
    except (OSError, http.client.HTTPException):
        return None


@HTTP_SERVERS
def test_slot_whose_init_fails_exits_with_the_servers_code_after_one_try(tmp_path, http_server):
    """init() failing stops the slot with the inference server's code 3, as gunicorn does;
    granian would otherwise start the worker again and run init() once more."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "def init():\n    print('INIT-CALLED', flush=True)\n    raise RuntimeError('no model here')\n\n\n"
        "def run(raw_data):\n    return 1\n"
    )
    (tmp_path / "model").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SERVER_PORT", "WORKER_COUNT")}
    env.update({"AZUREML_MODEL_DIR": str(tmp_path / "model"), "AML_APP_ROOT": str(code)})
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdsp_deploy.backends.local.slot_server",
            *("--entry_script", "score.py", "--model_dir", str(tmp_path / "model")),
            *("--port", str(free_port()), "--http_server", http_server),
        ],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 3, output[-3000:]
    assert "no model here" in output
    assert output.count("INIT-CALLED") == 1, output[-3000:]


def test_slot_server_refuses_an_unknown_http_server(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "tdsp_deploy.backends.local.slot_server", "--http_server", "tornado"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0 and "--http_server must be one of granian, gunicorn" in finished.stderr
