"""A/B experiments end to end on the real local target: start, measure, analyze with
outcomes, report, promote; a guardrail breach that rolls back; a paired replay."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import yaml

from tdsp_deploy.errors import ExitCode
from tests.fakes.endpoint_client import Client

pytestmark = pytest.mark.timeout(300)

# The treatment fails on requests marked "fail" (the control ignores the mark): a
# deterministic 30% error rate that its own smoke test does not trip over.
FAILING_RUN = """
_real_run = run


def run(raw_data):
    if json.loads(raw_data).get("fail"):
        raise RuntimeError("the new model fails on some requests")
    return _real_run(raw_data)
"""


def two_versions(cli, manifest: Path, *, failing: bool = False) -> Client:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(manifest.read_text())
    doc["smoke_test"]["latency"] = {"requests": 10, "concurrency": 1, "warmup": 0}
    doc["ab"] = {
        "primary_metric": {"name": "conversion", "type": "binary"},
        "minimum_detectable_effect": 0.2,
        "baseline": 0.3,
        "guardrails": {"max_error_rate": 0.05},
    }
    manifest.write_text(yaml.safe_dump(doc))
    assert cli("push", manifest).exit_code == 0
    doc["environment"]["variables"]["LOG_LEVEL"] = "debug"  # green: a second version
    doc["rollout"] = {"traffic": 0}
    manifest.write_text(yaml.safe_dump(doc))
    if failing:
        score = manifest.parent / "src" / "score.py"
        score.write_text(score.read_text() + FAILING_RUN)
    pushed = cli("push", manifest, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    key = cli("credentials", manifest, "--json").json()["primary_key"]
    return Client(pushed.json()["scoring_uri"], key)


def test_an_experiment_from_start_to_promotion(cli, iris, tmp_path):
    try:
        client = two_versions(cli, iris)
        started = cli(
            "ab", "start", iris, "--control", "blue", "--treatment", "green", "--split", "50", "--json"
        )
        assert started.exit_code == 0, started.stdout + started.stderr
        required = started.json()["required_per_variant"]
        assert 50 < required < 200  # 0.3 -> 0.5 at alpha 0.05, power 0.8: about 90 per variant
        body = (iris.parent / "sample-request.json").read_bytes()
        rng = random.Random(1)
        outcomes = []
        for number in range(2 * required + 200):
            request_id = f"req-{number}"
            status, headers, _ = client.post(body, x_request_id=request_id)
            assert status == 200 and headers["x-request-id"] == request_id
            # green converts far better: an effect of ~13 standard errors, so the verdict is never luck
            rate = 0.85 if headers["azureml-model-deployment"] == "green" else 0.25
            outcomes.append((request_id, int(rng.random() < rate)))
        outcomes_file = tmp_path / "outcomes.csv"
        with open(outcomes_file, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "outcome"])
            writer.writerows(outcomes)

        progress = cli("ab", "status", iris, "--json").json()
        assert progress["progress"] == 1.0
        assert sum(progress["collected"].values()) == len(outcomes)

        report = tmp_path / "report.html"
        analyzed = cli("ab", "analyze", iris, "--outcomes", outcomes_file, "--report", report, "--json")
        assert analyzed.exit_code == 0, analyzed.stdout[-2000:] + analyzed.stderr[-2000:]
        analysis = analyzed.json()
        assert analysis["verdict"]["decision"] == "promote", analysis["verdict"]
        conversion = next(m for m in analysis["metrics"] if m["name"] == "conversion")
        assert conversion["significant"] and conversion["effect"] > 0.1
        assert analysis["variants"]["blue"]["error_rate"] == 0
        assert "promote" in report.read_text().lower()
        shown = cli("ab", "analyze", iris, "--outcomes", outcomes_file)  # the same verdict, as tables
        assert shown.exit_code == 0 and "verdict: PROMOTE" in shown.stderr
        assert "conversion" in shown.stderr and "two-proportion" in shown.stderr

        promoted = cli("ab", "promote", iris, "--json")
        assert promoted.exit_code == 0 and promoted.json()["traffic"] == {"green": 100}
        assert cli("status", iris, "--json").json()["traffic"] == {"blue": 0, "green": 100}
        assert cli("ab", "promote", iris).exit_code == ExitCode.USAGE  # nothing is running now
        assert cli("rollback", iris, "--json").json()["traffic"] == {"blue": 50, "green": 50}
    finally:
        cli("delete", iris, "--yes")


def test_a_guardrail_breach_rolls_back(cli, iris):
    try:
        client = two_versions(cli, iris, failing=True)
        assert (
            cli("ab", "start", iris, "--control", "blue", "--treatment", "green", "--split", "50").exit_code
            == 0
        )
        body = (iris.parent / "sample-request.json").read_bytes()
        marked = body.rstrip()[:-1] + b', "fail": true}'
        for number in range(300):
            client.post(marked if number % 10 < 3 else body)
        result = cli("ab", "analyze", iris, "--apply", "--json")
        assert result.exit_code == ExitCode.ROLLED_BACK, result.stdout[-2000:]
        status = cli("status", iris, "--json").json()
        assert status["traffic"] == {"blue": 100, "green": 0}
    finally:
        cli("delete", iris, "--yes")


def test_replay_compares_both_variants_on_the_same_rows(cli, iris, tmp_path):
    try:
        two_versions(cli, iris)
        rows = iris.parent / "labelled.csv"  # the 150 iris rows with their species
        result = cli(
            "ab",
            "replay",
            iris,
            "--data",
            rows,
            "--label",
            "species",
            "--control",
            "blue",
            "--treatment",
            "green",
            "--json",
        )
        assert result.exit_code == ExitCode.AB_INCONCLUSIVE  # the same model twice: no difference
        replay = result.json()
        assert replay["task"] == "classification" and replay["rows"] == 150
        assert replay["control"]["accuracy"] == replay["treatment"]["accuracy"] > 0.9
        assert replay["tests"][0]["test"].lower().startswith("mcnemar")
    finally:
        cli("delete", iris, "--yes")
