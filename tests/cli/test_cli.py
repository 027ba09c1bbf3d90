"""The CLI's surface: help, version, JSON-only stdout, exit codes, init, schema, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tdsp_deploy import __version__
from tdsp_deploy.errors import ExitCode

COMMANDS = [
    "init",
    "validate",
    "import",
    "schema",
    "package",
    "render",
    "push",
    "status",
    "traffic",
    "rollback",
    "invoke",
    "test",
    "logs",
    "credentials",
    "delete",
    "run",
]


def test_help_lists_every_command_and_nothing_unfinished(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    import typer

    from tdsp_deploy.cli import app

    # exactly these commands: nothing half-built is listed
    assert sorted(typer.main.get_command(app).commands) == sorted([*COMMANDS, "ab", "rollout"])
    ab = cli("ab", "--help")
    for command in AB_COMMANDS:
        assert command in ab.stdout


AB_COMMANDS = ["start", "status", "analyze", "promote", "rollback", "replay"]


@pytest.mark.parametrize("command", [*COMMANDS, *(f"ab {c}" for c in AB_COMMANDS)])
def test_every_command_takes_json(cli, command):
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0
    assert "--json" in result.stdout


def test_version(cli):
    result = cli("--version")
    assert (result.exit_code, result.stdout.strip()) == (0, f"tdsp-deploy {__version__}")


def test_usage_errors_exit_2_and_answer_in_json_when_asked(cli):
    human = cli("validate")
    assert human.exit_code == ExitCode.USAGE
    assert "Missing argument" in human.stderr and human.stdout == ""
    machine = cli("push", "--no-such-option", "x.yaml", "--json")
    assert machine.exit_code == ExitCode.USAGE
    assert machine.json()["error"] == "usage"


def test_validate_ok_and_bad_manifest(cli, iris, tmp_path):
    ok = cli("validate", iris, "--json")
    assert ok.exit_code == 0
    assert ok.json() == {
        "valid": True,
        "manifest": str(iris),
        "name": "iris",
        "target": "local",
        "warnings": [],
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: iris\nmodel:\n  path: model/\nscoring:\n  script: score.py\nrollout:\n  trafic: 10\n"
    )
    result = cli("validate", bad)
    assert result.exit_code == ExitCode.USAGE
    assert "Traceback" not in result.stderr
    assert f"{bad}:7: rollout.trafic: unknown key; did you mean 'traffic'?" in result.stderr
    as_json = cli("validate", bad, "--json")
    problems = as_json.json()["problems"]
    assert {"file": str(bad), "line": 7, "field": "rollout.trafic"}.items() <= problems[-1].items()


def test_missing_manifest_file(cli, tmp_path):
    result = cli("push", tmp_path / "nope.yaml")
    assert result.exit_code == ExitCode.USAGE
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_schema_is_json_schema_with_the_target_union(cli):
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"name", "model", "scoring", "target"} <= set(schema["properties"])
    assert "local" in result.stdout and schema["additionalProperties"] is False


def test_init_writes_a_starter_that_validates(cli, tmp_path):
    project = tmp_path / "Fraud Model"
    result = cli("init", project, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["name"] == "fraud-model"
    created = {Path(p).relative_to(project).as_posix() for p in result.json()["created"]}
    assert {"deploy.yaml", "score.py", "model/model.json", "sample-request.json"} <= created
    assert "name: fraud-model" in (project / "deploy.yaml").read_text()
    assert cli("validate", project / "deploy.yaml").exit_code == 0
    again = cli("init", project)
    assert again.exit_code == ExitCode.USAGE and "--force" in again.stderr
    assert cli("init", project, "--force").exit_code == 0
    assert cli("init", tmp_path / "x", "--name", "Bad_Name").exit_code == ExitCode.USAGE


def test_the_starter_pushes_and_answers(cli, tmp_path):
    project = tmp_path / "starter"
    assert cli("init", project, "--name", "starter").exit_code == 0
    manifest = project / "deploy.yaml"
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        answer = cli("invoke", manifest, "--request", project / "sample-request.json", "--json")
        assert answer.exit_code == 0
        assert answer.json()["response"]["predictions"]
    finally:
        cli("delete", manifest, "--yes")


def test_package_is_deterministic_and_recognised(cli, iris, tmp_path):
    first = cli("package", iris, "-o", tmp_path / "a", "--json")
    second = cli("package", iris, "-o", tmp_path / "b", "--json")
    again = cli("package", iris, "-o", tmp_path / "a", "--json")
    assert first.exit_code == second.exit_code == again.exit_code == 0
    a, b = first.json(), second.json()
    assert a["package_id"] == b["package_id"] and a["reused"] is False
    assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
    assert again.json()["reused"] is True


def test_render_writes_the_local_plan_offline_without_secrets(cli, iris, tmp_path, state_home):
    out = tmp_path / "review"
    result = cli("render", iris, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads((out / "local-plan.json").read_text())
    assert plan["endpoint"] == "iris" and plan["package"]["id"] == result.json()["package_id"]
    assert plan["slot"]["bind"].startswith("127.0.0.1")
    assert "slot_server" in " ".join(plan["slot"]["command"])
    assert not (state_home / "endpoints" / "iris").exists()  # nothing was started or created


def test_commands_on_an_endpoint_that_does_not_exist(cli, iris):
    for command in (
        ["status", iris],
        ["logs", iris],
        ["credentials", iris],
        ["invoke", iris, "--request", iris.parent / "sample-request.json"],
    ):
        result = cli(*command, "--json")
        assert result.exit_code == ExitCode.BACKEND, command
        assert result.json()["error"] == "not_found"
    deleted = cli("delete", iris, "--yes", "--json")
    assert deleted.exit_code == 0 and deleted.json()["deleted"] is False


def test_delete_without_a_terminal_needs_yes(cli, iris):
    pushed = cli("push", iris)
    try:
        assert pushed.exit_code == 0, pushed.stderr
        refused = cli("delete", iris)
        assert refused.exit_code == ExitCode.USAGE and "--yes" in refused.stderr
    finally:
        assert cli("delete", iris, "--yes").exit_code == 0


def test_no_colour_off_a_terminal_or_with_no_color(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: 9\n")
    for result in (cli("validate", bad), cli("validate", bad, isatty=True, environ={"NO_COLOR": "1"})):
        assert "\x1b[" not in result.stderr
    coloured = cli("validate", bad, isatty=True, environ={"TERM": "xterm"})
    assert "\x1b[" in coloured.stderr


def test_help_and_validate_do_not_import_platform_sdks(iris):
    probe = (
        "import sys\n"
        "from tdsp_deploy.cli import main\n"
        f"main(['validate', {str(iris)!r}])\n"
        "main(['--help'])\n"
        "heavy = [m for m in sys.modules\n"
        "         if m.split('.')[0] in ('pyspark', 'mssql_python', 'pyodbc', 'mlflow')\n"
        "         or m.startswith('azure.ai.ml') or m.startswith('azure.identity')]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stderr, result.stderr


def test_broken_plugin_warns_and_other_targets_keep_working(cli, iris, tmp_path, monkeypatch):
    plugin = tmp_path / "broken_plugin-1.0.dist-info"
    plugin.mkdir()
    (plugin / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (plugin / "entry_points.txt").write_text(
        "[tdsp_deploy.backends]\nbroken = no_such_module_anywhere:Backend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = cli("validate", iris, "--json")
    assert result.exit_code == 0 and result.stderr == ""  # a manifest for another target never loads it
    schema = cli("schema")  # every target is loaded here: the broken one is named, the rest still work
    assert schema.exit_code == 0 and '"local"' in schema.stdout
    assert "target kind 'broken'" in schema.stderr and "other targets keep working" in schema.stderr
    bad = tmp_path / "uses-broken.yaml"
    bad.write_text(iris.read_text().replace("kind: local", "kind: broken"))
    (tmp_path / "model").mkdir()
    uses = cli("validate", bad, "--json")
    assert uses.exit_code == ExitCode.USAGE  # not a usable kind: the manifest names a broken target
    assert "failed to load" in uses.stderr


def test_azureml_render_then_import_gives_back_a_valid_manifest(cli, iris, tmp_path):
    doc = yaml.safe_load(iris.read_text())
    doc["target"] = {
        "kind": "azureml",
        "subscription_id": "00000000-0000-0000-0000-000000000000",
        "resource_group": "rg-models",
        "workspace": "ws-models",
        "instance_type": "Standard_DS3_v2",
        "instance_count": 2,
    }
    iris.write_text(yaml.safe_dump(doc))
    assert cli("validate", iris).exit_code == 0
    review = tmp_path / "review"
    rendered = cli("render", iris, "-o", review, "--json")
    assert rendered.exit_code == 0, rendered.stdout + rendered.stderr
    names = {Path(f).name for f in rendered.json()["files"]}
    assert {"package.json", "endpoint.yml", "deployment.yml"} <= names
    assert "$schema" in (review / "deployment.yml").read_text()
    pair = (review / "endpoint.yml", review / "deployment.yml")
    imported = tmp_path / "imported" / "deploy.yaml"
    workspace = (
        "--subscription-id",
        "00000000-0000-0000-0000-000000000000",
        "--resource-group",
        "rg-models",
        "--workspace",
        "ws-models",
    )
    result = cli("import", *pair, "-o", imported, *workspace, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    back = yaml.safe_load(imported.read_text())
    assert back["name"] == "iris" and back["target"]["instance_count"] == 2
    assert back["target"]["workspace"] == "ws-models"
    assert cli("validate", imported).exit_code == 0
    again = cli("import", *pair, "-o", imported)
    assert again.exit_code == ExitCode.USAGE and "--force" in again.stderr
    # without the workspace, placeholders that CI or the user fills in later
    placeholders = cli("import", *pair, "-o", tmp_path / "later.yaml", "--json")
    assert placeholders.exit_code == 0, placeholders.stdout
    assert "${AZURE_ML_WORKSPACE}" in (tmp_path / "later.yaml").read_text()


def _complete(words: str) -> list[str]:
    import os

    environ = {
        **os.environ,
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        "_TDSP_DEPLOY_COMPLETE": "complete_bash",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tdsp_deploy"], env=environ, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_shell_completion_offers_commands_targets_and_flavors():
    assert _complete("tdsp-deploy sta") == ["status"]
    assert set(_complete("tdsp-deploy init --target ")) >= {"local", "azureml", "sqlserver"}
    assert _complete("tdsp-deploy init --flavor ml") == ["mlflow"]
    script = subprocess.run(
        [sys.executable, "-m", "tdsp_deploy", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "_TDSP_DEPLOY_COMPLETE=complete_bash" in script.stdout
