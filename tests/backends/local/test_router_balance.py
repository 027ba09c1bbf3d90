"""The split's balancer: the weights kept, and no request queued behind a busy slot while
another has a worker free; and, through a real router, the per-phase timing it serves."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest

from tdsp_deploy.backends.local.balance import SLACK, Balancer
from tdsp_deploy.backends.local.routes import RouterConfig, SlotRoute
from tdsp_deploy.backends.local.timing import PHASES, difference
from tests.fakes.router_harness import ADMIN, AUTH, Upstream, routers_for_test

BLUE, GREEN = SlotRoute("blue", 1, 50), SlotRoute("green", 2, 50)


@pytest.fixture
def make_router(tmp_path):  # type: ignore[no-untyped-def]
    yield from routers_for_test(tmp_path)


def test_idle_slots_keep_the_split_in_short_runs():
    """At concurrency 1 a slot takes a few requests in a row (warm), never more than its share
    plus the slack ahead, and the split comes out exact over a long run."""
    balancer = Balancer()
    picks = [balancer.pick([BLUE, GREEN], lambda s: 0).name for _ in range(1000)]
    for n in range(1, len(picks) + 1):
        assert abs(picks[:n].count("blue") - n / 2) <= SLACK + 1
    switches = sum(a != b for a, b in zip(picks, picks[1:], strict=False))
    # runs of about 4 * (SLACK + 1) at 50/50 (from SLACK + 1 owed to SLACK + 1 ahead), not turns
    assert 1000 / (4 * SLACK + 8) <= switches <= 1000 / (4 * SLACK), switches
    assert abs(picks.count("blue") - 500) <= SLACK + 1
    canary = [SlotRoute("main", 1, 90), SlotRoute("canary", 2, 10)]
    counts = Counter(balancer.pick(canary, lambda s: 0).name for _ in range(1000))
    assert abs(counts["canary"] - 100) <= SLACK + 1, counts


def test_a_request_goes_to_the_slot_with_a_free_worker():
    balancer = Balancer()
    busy = {"blue": 1, "green": 0}
    # green is owed nothing after taking the first one, yet blue's only worker is busy
    assert [balancer.pick([BLUE, GREEN], lambda s: busy[s.name]).name for _ in range(2)] == ["green", "green"]
    # workers count: two requests on a four-worker slot leave more room than one on a one-worker slot
    wide = SlotRoute("wide", 3, 50, workers=4)
    assert Balancer().pick([BLUE, wide], lambda s: {"blue": 1, "wide": 2}[s.name]).name == "wide"


def test_a_free_slot_never_takes_more_than_its_share_plus_the_slack():
    """A 90/10 canary that is always free while the main slot is always busy still gets about
    10%: queue lengths alone would send it every request."""
    balancer = Balancer()
    canary = [SlotRoute("main", 1, 90), SlotRoute("canary", 2, 10)]
    load = {"main": 8, "canary": 0}
    picks = [balancer.pick(canary, lambda s: load[s.name]).name for _ in range(1000)]
    taken = picks.count("canary")
    assert 100 <= taken <= 100 + SLACK + 1, taken
    # and at every point of the run, never more than its share plus the slack
    for n in range(1, len(picks) + 1):
        assert picks[:n].count("canary") <= n * 0.1 + SLACK + 1


def test_workers_reach_the_router_configuration(tmp_path):
    route = SlotRoute("blue", 1, 100, workers=3)
    path = tmp_path / "router.json"
    RouterConfig("e", "127.0.0.1", 2, "k", slots=(route,)).write(path)
    assert RouterConfig.read(path).slots == (route,)
    doc = json.loads(path.read_text())
    del doc["slots"]["blue"]["workers"]  # written before slots had it: one worker
    path.write_text(json.dumps(doc))
    assert RouterConfig.read(path).slots[0].workers == 1


def test_two_requests_at_once_go_to_both_slots_of_a_50_50_split(make_router):
    """Through the real router, with slots that take 0.3 s per request: every pair of requests
    sent together is served by both slots (a draw by weight sends half the pairs to one)."""
    slow_blue, slow_green = Upstream("blue", delay=0.3), Upstream("green", delay=0.3)
    try:
        router = make_router({"blue": (slow_blue.port, 50), "green": (slow_green.port, 50)})

        def call(served: list[str]) -> None:
            served.append(router.post()[1]["azureml-model-deployment"])

        for _ in range(6):
            served: list[str] = []
            threads = [threading.Thread(target=call, args=(served,)) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
            assert sorted(served) == ["blue", "green"], served
    finally:
        slow_blue.shutdown()
        slow_green.shutdown()


def test_the_router_says_where_each_requests_time_went(make_router):
    kept = Upstream("blue", keep_alive=True)
    try:
        router = make_router({"blue": (kept.port, 100)})
        before = router.get_json("/-/timing")
        connection = router.connection()
        for _ in range(5):
            connection.request("POST", "/score", body=b"{}", headers=AUTH)
            assert json.loads(connection.getresponse().read())["upstream"] == "blue"
        connection.request("GET", "/-/timing", headers=ADMIN)
        after = json.loads(connection.getresponse().read())
        connection.request("GET", "/-/timing", headers=AUTH)  # a control route: not with a scoring key
        assert connection.getresponse().status == 403
    finally:
        kept.shutdown()
    change = difference(after, before)
    assert change["requests"] == 5
    assert set(change["phases"]) == set(PHASES)
    assert all(phase["total_ms"] >= 0 for phase in change["phases"].values())
    # the upstream answers in well under a second, and the slot's part is in "slot", not elsewhere
    assert 0 < change["phases"]["slot"]["total_ms"] < 5000
    # one connection to the slot, opened for the first request and reused for the other four
    assert change["slot_connections"] == {"opened": 1, "reused": 4}
    assert after["accept"]["connections"] >= 2
    assert change["router_us_per_request"] > 0
