"""The CI examples' own commands, run as a script against the local target.

The workflows in examples/ci/ are read as YAML; every command they run (GitHub's `run:`,
Azure Pipelines' `script:` and AzureCLI@2's `inlineScript:`) runs here, in order, with the
shell each platform uses. What only the CI platform can do (check out, set up Python, sign in
to Azure, upload artifacts) is left out, and so is installing tdsp-deploy (it is installed);
the manifest is the local iris example instead of an Azure ML one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tdsp_deploy.errors import ExitCode
from tests import paths

ROOT = paths.ROOT
CI = ROOT / "examples" / "ci"


def github_steps(job: str) -> list[str]:
    workflow = yaml.safe_load((CI / "github-actions.yml").read_text())
    steps = workflow["jobs"][job]["steps"]
    return [step["run"] for step in steps if "run" in step and "pip install" not in step["run"]]


def azure_steps(stage: str) -> list[str]:
    pipeline = yaml.safe_load((CI / "azure-pipelines.yml").read_text())
    found = next(s for s in pipeline["stages"] if s["stage"] == stage)
    commands = []
    for job in found["jobs"]:
        steps = job.get("steps") or job["strategy"]["runOnce"]["deploy"]["steps"]
        for step in steps:
            if step.get("task", "").startswith("AzureCLI@"):
                commands.append(step["inputs"]["inlineScript"])
            elif "script" in step and "pip install" not in step["script"]:
                commands.append(step["script"])
    return commands


def _environment(tmp_path: Path, manifest: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CI": "true",
        "MANIFEST": str(manifest),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "github-summary.md"),
    }


def run_github(commands: list[str], tmp_path: Path, manifest: Path) -> Iterator[subprocess.CompletedProcess]:
    """Each `run:` as GitHub runs it on Linux: bash -e -o pipefail, in the workspace."""
    for command in commands:
        yield subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", command],
            cwd=tmp_path,
            env=_environment(tmp_path, manifest),
            capture_output=True,
            text=True,
            timeout=600,
        )


def run_azure(commands: list[str], tmp_path: Path, manifest: Path) -> Iterator[subprocess.CompletedProcess]:
    """Each script as Azure Pipelines runs it on Linux: plain bash, its macros expanded."""
    macros = {"MANIFEST": str(manifest), "Build.ArtifactStagingDirectory": str(tmp_path / "staging")}
    for command in commands:
        expanded = re.sub(r"\$\(([\w.]+)\)", lambda m: macros[m.group(1)], command)
        yield subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", expanded],
            cwd=tmp_path,
            env=_environment(tmp_path, manifest),
            capture_output=True,
            text=True,
            timeout=600,
        )


def _all_pass(results: Iterator[subprocess.CompletedProcess]) -> list[subprocess.CompletedProcess]:
    done = []
    for result in results:
        assert result.returncode == 0, f"{result.args[-1]}\n{result.stderr}"
        done.append(result)
    return done


def _quick_latency(manifest: Path, **latency: object) -> None:
    doc = yaml.safe_load(manifest.read_text())
    doc["smoke_test"]["latency"] = {"requests": 20, "concurrency": 2, "warmup": 2, **latency}
    manifest.write_text(yaml.safe_dump(doc))


def test_the_workflows_run_what_the_readme_promises():
    assert len(github_steps("review")) == 2 and len(github_steps("deploy")) == 2
    assert len(azure_steps("review")) == 2 and len(azure_steps("deploy")) == 3
    for text in ((CI / "github-actions.yml").read_text(), (CI / "azure-pipelines.yml").read_text()):
        assert not re.search(r"(?i)(client_secret|password|secret:)", text)  # identity, not secrets
    workflow = yaml.safe_load((CI / "github-actions.yml").read_text())
    assert workflow["permissions"]["id-token"] == "write"
    assert any(s.get("uses", "").startswith("azure/login@") for s in workflow["jobs"]["deploy"]["steps"])


def test_github_workflow_reviews_then_pushes_and_gates_on_the_exit_code(cli, iris, tmp_path):
    _quick_latency(iris, p95_ms=5000)
    summary = tmp_path / "github-summary.md"
    try:
        _all_pass(run_github(github_steps("review"), tmp_path, iris))
        assert (tmp_path / "rendered" / "local-plan.json").is_file()
        assert "## tdsp-deploy render" in summary.read_text()

        _all_pass(run_github(github_steps("deploy"), tmp_path, iris))
        result = json.loads((tmp_path / "push-result.json").read_text())
        assert result["traffic"] == {"blue": 100}
        assert "## tdsp-deploy push `iris`: passed (exit 0)" in summary.read_text()

        # a model that answers wrong: the job fails with exit 5, an annotation and a summary
        expected = iris.parent / "expected-response.json"
        wrong = json.loads(expected.read_text())
        wrong["predictions"][0] = "virginica"
        expected.write_text(json.dumps(wrong))
        (iris.parent / "src" / "score.py").write_text(
            (iris.parent / "src" / "score.py").read_text() + "\n# changed\n"
        )
        validate, push = github_steps("deploy")
        _all_pass(run_github([validate], tmp_path, iris))
        failed = next(run_github([push], tmp_path, iris))
        assert failed.returncode == ExitCode.SMOKE_FAILED
        assert "::error title=smoke test::" in failed.stdout
        text = summary.read_text()
        assert "FAILED (exit 5)" in text and "**wrong**" in text and "rollback:" in text
        assert cli("status", iris, "--json").json()["traffic"] == {"blue": 100}  # rolled back
    finally:
        cli("delete", iris, "--yes")


def test_azure_pipeline_reviews_then_pushes_and_attaches_summaries(cli, iris, tmp_path):
    _quick_latency(iris, p95_ms=0.001)  # this push must fail its latency objective
    staging = tmp_path / "staging"
    try:
        review = _all_pass(run_azure(azure_steps("review"), tmp_path, iris))
        upload = f"##vso[task.uploadsummary]{staging}/render-summary.md"
        assert upload in review[-1].stdout
        assert (staging / "rendered" / "local-plan.json").is_file()
        assert "## tdsp-deploy render" in (staging / "render-summary.md").read_text()

        validate, push, attach = (list(run_azure([c], tmp_path, iris))[0] for c in azure_steps("deploy"))
        assert validate.returncode == 0
        assert push.returncode == ExitCode.LATENCY_MISSED  # the job fails here
        assert attach.returncode == 0 and f"{staging}/push-summary.md" in attach.stdout
        text = (staging / "push-summary.md").read_text()
        assert "FAILED (exit 6)" in text and "**missed**" in text
    finally:
        cli("delete", iris, "--yes")


@pytest.mark.parametrize("broken", ["render", "validate"])
def test_a_failing_review_command_fails_its_step(iris, tmp_path, broken):
    iris.write_text(iris.read_text().replace("traffic: 100", "traffic: 101"))
    steps = azure_steps("review")
    step = steps[0] if broken == "validate" else steps[1]
    result = next(run_azure([step], tmp_path, iris))
    assert result.returncode == ExitCode.USAGE
