"""The Markdown summary a push or a render writes for the CI page, from real local pushes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from tdsp_deploy.ci_summary import push_markdown, summary_target
from tdsp_deploy.errors import ExitCode


def _fast(iris: Path, **latency: object) -> None:
    doc = yaml.safe_load(iris.read_text())
    doc["smoke_test"]["latency"] = {"requests": 20, "concurrency": 2, "warmup": 2, "p95_ms": 5000, **latency}
    iris.write_text(yaml.safe_dump(doc))


def test_a_passing_push_summarises_deployment_smoke_latency_traffic_and_verdict(cli, iris, tmp_path):
    _fast(iris)
    summary = tmp_path / "summary.md"
    try:
        pushed = cli("push", iris, "--summary", summary, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        text = summary.read_text()
        result = pushed.json()
        assert text.startswith("## tdsp-deploy push `iris`: passed (exit 0)")
        assert f"| deployment | {result['deployment']} |" in text
        assert f"`{result['package_id'][:12]}`" in text
        assert "Answer from `blue`: as expected (HTTP 200" in text
        latency = result["smoke"]["latency"]
        assert f"| {latency['requests']} | 2 | 0 | {latency['p50_ms']} |" in text
        assert "Objective (p95 <= 5000 ms, error rate <= 0.0%): met." in text
        assert "| blue | 100% |" in text and "**deployed**" in text
        keys = cli("credentials", iris, "--json").json()
        assert keys["primary_key"] not in text and keys["secondary_key"] not in text
    finally:
        cli("delete", iris, "--yes")


def test_a_failed_push_says_why_and_how_it_rolled_back(cli, iris, tmp_path):
    _fast(iris, p95_ms=0.001)
    github = tmp_path / "step-summary.md"
    github.write_text("earlier step\n")
    environ = {**os.environ, "CI": "true", "GITHUB_STEP_SUMMARY": str(github)}
    try:
        failed = cli("push", iris, environ=environ)
        assert failed.exit_code == ExitCode.LATENCY_MISSED
        text = github.read_text()
        assert text.startswith("earlier step\n## tdsp-deploy push `iris`: FAILED (exit 6)")  # appended
        assert "**failed: the latency or error-rate objective was missed** (exit 6)" in text
        assert "Objective (p95 <= 0.001 ms, error rate <= 0.0%): **missed**: p95 latency" in text
        assert "- rollback: 'blue' removed" in text
    finally:
        cli("delete", iris, "--yes")


def test_a_bad_manifest_is_summarised_with_its_location(cli, iris, tmp_path):
    iris.write_text(iris.read_text().replace("traffic: 100", "traffic: 101"))
    summary = tmp_path / "summary.md"
    refused = cli("push", iris, "--ci", "--summary", summary)
    assert refused.exit_code == ExitCode.USAGE
    text = summary.read_text()
    assert "FAILED (exit 2)" in text and "refused: bad command line or manifest" in text
    assert "rollout.traffic" in text and "deploy.yaml:" in text


def test_ci_mode_without_a_summary_file_writes_nothing(tmp_path):
    assert summary_target(None, True, {}) is None
    assert summary_target(None, False, {"GITHUB_STEP_SUMMARY": str(tmp_path / "s")}) is None
    chosen = summary_target(None, False, {"CI": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "s")})
    assert chosen is not None and chosen.append
    explicit = summary_target(tmp_path / "x.md", False, {"CI": "true", "GITHUB_STEP_SUMMARY": "elsewhere"})
    assert explicit is not None and explicit.path == tmp_path / "x.md" and not explicit.append


def test_a_wrong_answer_lists_the_differences():
    error = {
        "error": "smoke_failed",
        "message": "the deployment answered wrong",
        "exit_code": 5,
        "details": {
            "smoke": {
                "deployment": "green",
                "answer": {
                    "passed": False,
                    "status": 200,
                    "differences": ['$.predictions[0]: expected "a", got "b"'],
                },
                "latency": None,
            },
            "log_tail": "line one\nline | two",
        },
    }
    text = push_markdown("deploy.yaml", None, error, 5)
    assert "Answer from `green`: **wrong** (HTTP 200):" in text
    assert '- `$.predictions[0]: expected "a", got "b"`' in text
    assert "line | two" in text and "<details>" in text


def test_render_summary_shows_what_would_be_deployed(cli, iris, tmp_path):
    summary = tmp_path / "render.md"
    rendered = cli("render", iris, "-o", tmp_path / "out", "--summary", summary, "--json")
    assert rendered.exit_code == 0, rendered.stderr
    text = summary.read_text()
    plan = json.loads((tmp_path / "out" / "local-plan.json").read_text())
    assert f"Package `{rendered.json()['package_id'][:12]}`" in text
    assert "<code>local-plan.json</code>" in text and plan["endpoint"] in text
    assert "```json" in text
