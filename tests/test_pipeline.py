"""The push pipeline's steps, rollbacks and exit codes, through the real CLI and a fake
backend installed through the real entry-point group (tests/fakes/plugins)."""

from __future__ import annotations

import json
from pathlib import Path

import fake_backend
import pytest
import yaml

from tdsp_deploy.errors import ExitCode
from tests.fakes.fake_backend_project import make_project


@pytest.fixture(autouse=True)
def fresh_fake_state():  # type: ignore[no-untyped-def]
    fake_backend.ENDPOINTS.clear()
    yield
    fake_backend.ENDPOINTS.clear()


def set_target(manifest: Path, **fields: object) -> None:
    doc = yaml.safe_load(manifest.read_text())
    doc["target"].update(fields)
    manifest.write_text(yaml.safe_dump(doc))


def events() -> list[tuple]:
    return fake_backend.ENDPOINTS["fakey"]["events"]


def test_first_push_deploys_blue_with_all_traffic(cli, tmp_path):
    manifest = make_project(tmp_path)
    result = cli("push", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["deployment"] == "blue"
    assert doc["traffic"] == {"blue": 100}
    assert doc["unchanged"] is False
    assert doc["smoke"]["passed"] is True
    assert doc["smoke"]["answer"]["deployment"] == "blue"
    assert doc["smoke"]["latency"]["requests"] == 20
    assert doc["scoring_uri"] == "fake://fakey/score"
    # deployed at 0% first, traffic only after the smoke test, then finalized
    assert [e[0] for e in events()] == ["deploy", "traffic", "finalize"]


def test_same_push_again_changes_nothing(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    before = list(events())
    again = cli("push", manifest, "--json")
    assert again.exit_code == 0
    assert again.json()["unchanged"] is True
    assert events() == before


def test_changed_model_goes_to_the_other_slot_and_takes_the_traffic(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    (tmp_path / "model" / "weights.json").write_text('{"w": [4, 5, 6]}')
    result = cli("push", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["deployment"] == "green"
    assert result.json()["traffic"] == {"blue": 0, "green": 100}


def test_canary_traffic_splits_with_the_live_slot(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    (tmp_path / "model" / "weights.json").write_text('{"w": [7]}')
    doc = yaml.safe_load(manifest.read_text())
    doc["rollout"] = {"traffic": 10}
    manifest.write_text(yaml.safe_dump(doc))
    result = cli("push", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["traffic"] == {"blue": 90, "green": 10}


def test_traffic_zero_stages_without_moving_traffic(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    (tmp_path / "model" / "weights.json").write_text('{"w": [8]}')
    doc = yaml.safe_load(manifest.read_text())
    doc["rollout"] = {"traffic": 0}
    manifest.write_text(yaml.safe_dump(doc))
    result = cli("push", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["traffic"] == {"blue": 100, "green": 0}


def test_wrong_answer_rolls_back_with_exit_5(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    (tmp_path / "model" / "weights.json").write_text('{"w": [9]}')
    set_target(manifest, wrong_answer=True)
    result = cli("push", manifest, "--json")
    assert result.exit_code == ExitCode.SMOKE_FAILED
    error = result.json()
    assert error["error"] == "smoke_failed"
    assert "$.predictions: missing" in error["message"]
    assert error["details"]["rolled_back"] is True
    assert error["details"]["log_tail"].startswith("log of green")
    state = fake_backend.ENDPOINTS["fakey"]["slots"]
    assert set(state) == {"blue"} and state["blue"]["traffic"] == 100


def test_error_status_is_a_wrong_answer(cli, tmp_path):
    manifest = make_project(tmp_path, target={"error_status": 500})
    result = cli("push", manifest)
    assert result.exit_code == ExitCode.SMOKE_FAILED
    assert "status: expected 200, got 500" in result.stderr
    assert "rollback: 'blue' removed" in result.stderr
    assert fake_backend.ENDPOINTS["fakey"]["slots"] == {}


def test_unhealthy_slot_rolls_back_with_exit_4_and_shows_the_log(cli, tmp_path):
    manifest = make_project(tmp_path, target={"fail_health": True})
    result = cli("push", manifest)
    assert result.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "deployment 'blue' failed to start" in result.stderr
    assert "| last line of blue" in result.stderr
    assert "Traceback" not in result.stderr
    assert fake_backend.ENDPOINTS["fakey"]["slots"] == {}


def test_keep_failed_keeps_the_slot_but_not_its_traffic(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    (tmp_path / "model" / "weights.json").write_text('{"w": [10]}')
    set_target(manifest, wrong_answer=True)
    result = cli("push", manifest, "--keep-failed")
    assert result.exit_code == ExitCode.SMOKE_FAILED
    slots = fake_backend.ENDPOINTS["fakey"]["slots"]
    assert slots["green"]["traffic"] == 0
    assert slots["blue"]["traffic"] == 100
    assert "kept for debugging" in result.stderr


def test_latency_objective_missed_exits_6_and_rolls_back(cli, tmp_path):
    manifest = make_project(
        tmp_path,
        target={"delay_ms": 5},
        smoke={
            "request": "request.json",
            "expect": "expected.json",
            "latency": {"requests": 10, "concurrency": 2, "warmup": 0, "p95_ms": 1},
        },
    )
    result = cli("push", manifest, "--json")
    assert result.exit_code == ExitCode.LATENCY_MISSED
    error = result.json()
    assert "above the objective of 1 ms" in error["message"]
    assert error["details"]["smoke"]["latency"]["p95_ms"] >= 5
    assert fake_backend.ENDPOINTS["fakey"]["slots"] == {}


def test_interrupted_push_rolls_back_and_exits_130(cli, tmp_path):
    manifest = make_project(tmp_path, target={"interrupt_at": "smoke"})
    result = cli("push", manifest, "--json")
    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.json()["details"]["rolled_back"] is True
    assert fake_backend.ENDPOINTS["fakey"]["slots"] == {}


def test_push_without_smoke_test_only_waits_for_health(cli, tmp_path):
    manifest = make_project(tmp_path)
    doc = yaml.safe_load(manifest.read_text())
    del doc["smoke_test"]
    manifest.write_text(yaml.safe_dump(doc))
    result = cli("push", manifest, "--json")
    assert result.exit_code == 0
    assert result.json()["smoke"] is None


def test_test_command_reruns_the_smoke_test(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    result = cli("test", manifest, "--json")
    assert result.exit_code == 0
    assert result.json()["passed"] is True
    assert result.json()["deployment"] is None


def test_test_command_on_missing_endpoint_exits_3(cli, tmp_path):
    manifest = make_project(tmp_path)
    result = cli("test", manifest)
    assert result.exit_code == ExitCode.BACKEND
    assert "not deployed" in result.stderr


def test_unexpected_bug_exits_1_without_traceback_unless_debug(cli, tmp_path):
    manifest = make_project(tmp_path, target={"raise_unexpected": True})
    result = cli("status", manifest)
    assert result.exit_code == 1
    assert "unexpected error: RuntimeError: a bug in the backend" in result.stderr
    assert "Traceback" not in result.stderr
    debug = cli("status", manifest, "--debug")
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr


def test_missing_extra_exits_7_with_the_pip_hint(cli, tmp_path):
    manifest = make_project(tmp_path)
    doc = yaml.safe_load(manifest.read_text())
    doc["target"] = {"kind": "needs-extra"}
    manifest.write_text(yaml.safe_dump(doc))
    validate = cli("validate", manifest, "--json")
    assert validate.exit_code == 0  # the manifest itself is fine
    assert any("pip install 'tdsp-deploy[needs-extra]'" in w for w in validate.json()["warnings"])
    result = cli("push", manifest, "--json")
    assert result.exit_code == ExitCode.PLUGIN
    assert result.json()["hint"] == "pip install 'tdsp-deploy[needs-extra]'"


def test_render_writes_the_lock_and_the_backends_plan(cli, tmp_path):
    manifest = make_project(tmp_path)
    out = tmp_path / "review"
    result = cli("render", manifest, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    lock = json.loads((out / "package.json").read_text())
    plan = json.loads((out / "fake-plan.json").read_text())
    assert plan["package"] == lock["package_id"] == result.json()["package_id"]
    assert fake_backend.ENDPOINTS.get("fakey", {}).get("slots", {}) == {}  # offline: nothing deployed


def test_a_rollout_the_target_cannot_do_is_refused_before_anything_changes(cli, tmp_path):
    manifest = make_project(tmp_path, target={"kind": "fake-nomirror"}, rollout={"mirror": 10, "traffic": 0})
    result = cli("push", manifest, "--json")
    assert result.exit_code == ExitCode.USAGE
    assert "cannot mirror traffic" in result.json()["message"]
    assert "fakey" not in fake_backend.ENDPOINTS


def test_mirror_without_traffic_zero_is_a_manifest_error(cli, tmp_path):
    manifest = make_project(tmp_path, rollout={"mirror": 10})
    result = cli("validate", manifest, "--json")
    assert result.exit_code == ExitCode.USAGE
    assert "with mirror > 0, set traffic: 0" in result.json()["message"]


def test_push_with_mirror_shadows_the_new_slot_and_leaves_live_traffic(cli, tmp_path):
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    (tmp_path / "model" / "weights.json").write_text('{"w": [11]}')
    doc = yaml.safe_load(manifest.read_text())
    doc["rollout"] = {"traffic": 0, "mirror": 20}
    manifest.write_text(yaml.safe_dump(doc))
    result = cli("push", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    status = cli("status", manifest, "--json").json()
    assert status["traffic"] == {"blue": 100, "green": 0} and status["mirror"] == {"green": 20}


def two_slots(cli, tmp_path) -> Path:  # type: ignore[no-untyped-def]
    manifest = make_project(tmp_path)
    assert cli("push", manifest).exit_code == 0
    (tmp_path / "model" / "weights.json").write_text('{"w": [12]}')
    assert cli("push", manifest).exit_code == 0  # green takes the traffic
    return manifest


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["blue=90", "green=20"], "adds up to 110%"),
        (["blue=90", "teal=10"], "no deployment named teal"),
        (["blue=ninety"], "is not SLOT=PERCENT"),
        (["blue=50", "blue=50"], "'blue' is given twice"),
        (["blue=100", "--mirror", "green=60"], "at most 50%"),
        (["blue=50", "green=50", "--mirror", "green=10"], "takes live traffic and cannot also be mirrored"),
        (["green=100", "--mirror", "blue=10", "--mirror", "green=0"], None),  # valid: mirror the idle slot
    ],
)
def test_traffic_rules(cli, tmp_path, arguments, message):
    manifest = two_slots(cli, tmp_path)
    result = cli("traffic", manifest, *arguments, "--json")
    if message is None:
        assert result.exit_code == 0, result.stdout
        assert result.json() == {"traffic": {"blue": 0, "green": 100}, "mirror": {"blue": 10}}
    else:
        assert result.exit_code == ExitCode.USAGE
        assert message in result.json()["message"]
        status = cli("status", manifest, "--json").json()
        assert status["traffic"] == {"blue": 0, "green": 100}  # nothing changed


def test_traffic_shows_and_sets_the_split_and_rollback_walks_back(cli, tmp_path):
    manifest = two_slots(cli, tmp_path)
    shown = cli("traffic", manifest, "--json")
    assert shown.json() == {"traffic": {"blue": 0, "green": 100}, "mirror": {}}
    assert cli("traffic", manifest, "blue=90", "green=10").exit_code == 0
    assert cli("status", manifest, "--json").json()["traffic"] == {"blue": 90, "green": 10}
    back = cli("rollback", manifest, "--json")
    assert back.exit_code == 0 and back.json()["traffic"] == {"blue": 0, "green": 100}
    again = cli("rollback", manifest, "--json")  # before green's push: blue had it all
    assert again.exit_code == 0 and again.json()["traffic"] == {"blue": 100, "green": 0}
    nothing = cli("rollback", manifest, "--json")
    assert nothing.exit_code == ExitCode.USAGE and "no earlier traffic split" in nothing.json()["message"]


def test_a_failed_push_leaves_no_trace_in_the_history(cli, tmp_path):
    manifest = two_slots(cli, tmp_path)
    (tmp_path / "model" / "weights.json").write_text('{"w": [13]}')
    set_target(manifest, wrong_answer=True)
    assert cli("push", manifest).exit_code == ExitCode.SMOKE_FAILED
    set_target(manifest, wrong_answer=False)
    back = cli("rollback", manifest, "--json")  # returns past green's push, not to the failed one
    assert back.json()["traffic"] == {"blue": 100, "green": 0}
