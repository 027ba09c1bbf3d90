"""Secrets from the environment are never shown: a value a ``${VAR}`` took (or that a
``password_env`` names) is redacted from rendered files, ``--json`` documents, messages and
errors, whatever the variable is called. ``DB_URL`` does not look like a secret by its name:
that is the point."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tdsp_deploy.errors import ExitCode, ManifestError
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.output import Environment
from tdsp_deploy.secrets import REDACTED, SecretValues, redact_variables

TOKEN = "tok-9f8e7d6c5b4a-s3cr3t"


def _set_variables(manifest: Path, variables: dict[str, str], **changes: Any) -> Path:
    doc = yaml.safe_load(manifest.read_text())
    doc.setdefault("environment", {})["variables"] = variables
    doc.update(changes)
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return manifest


def _files_under(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _nowhere(token: str, *texts: str | bytes) -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        assert token.encode() not in data


# -- the values and their forms ------------------------------------------------------------------


def test_every_form_of_a_secret_is_taken_out_of_text() -> None:
    secret = 'pa"ss\\wörd\nline'
    secrets = SecretValues([secret])
    for shown in (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]):
        assert secrets.text(f"before {shown} after") == f"before {REDACTED} after"
    assert repr(secrets) == "SecretValues(1 values)"


def test_short_values_are_redacted_as_fields_but_not_inside_text() -> None:
    secrets = SecretValues(["on", TOKEN])
    assert secrets.text("connection failed") == "connection failed"  # "on" is everywhere
    variables = {"FLAG": "on", "DB_URL": f"postgres://u:{TOKEN}@db", "LEVEL": "info", "API_KEY": "x"}
    assert redact_variables(variables, secrets) == {
        "FLAG": REDACTED,
        "DB_URL": REDACTED,
        "LEVEL": "info",
        "API_KEY": REDACTED,  # a secret-looking name still is, even written in clear
    }


# Secrets with backslashes, line breaks and non-ASCII (all escaped in JSON) but without the
# marker's letters, blanks or JSON's punctuation; the other strings are lower-case words. So
# neither the marker nor the document's structure can spell a secret by themselves.
SECRET_TEXT = st.text(
    alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=/!$%é€\\\n"), min_size=4
)
WORDS = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz"), max_size=8)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(secret=SECRET_TEXT, extra=st.dictionaries(WORDS, WORDS, max_size=4))
def test_json_documents_stay_valid_and_never_hold_the_secret(secret: str, extra: dict) -> None:
    stdout = io.StringIO()
    env = Environment(stdout=stdout, stderr=io.StringIO(), environ={})
    env.add_secrets(SecretValues([secret]))
    env.emit_json({"message": f"failed: {secret}!", "details": {secret: [secret, 1]}, **extra})
    document = json.loads(stdout.getvalue())
    assert document["message"] == f"failed: {REDACTED}!"
    _nowhere(secret, json.dumps(document, ensure_ascii=False), stdout.getvalue())


# -- the loader knows what came from the environment --------------------------------------------


def test_the_loader_collects_interpolated_values_and_secret_sources(iris: Path) -> None:
    _set_variables(iris, {"DB_URL": "${TOKEN}", "LEVEL": "${LEVEL:-info}"})
    loaded = load_manifest(iris, environ={"TOKEN": TOKEN})
    assert loaded.secrets.values == {TOKEN}  # a default is the manifest's text, not a secret
    assert loaded.manifest.secret_values is loaded.secrets
    assert loaded.manifest.environment.variables["DB_URL"] == TOKEN  # the process still gets it

    doc = yaml.safe_load(iris.read_text())
    doc["target"] = {
        "kind": "sqlserver",
        "server": "sql.example.com",
        "database": "scoring",
        "auth": {"method": "sql", "username": "deployer", "password_env": "SQL_PASSWORD"},
        "inputs": [{"name": "x", "type": "float"}],
        "outputs": [{"name": "y", "type": "float"}],
    }
    iris.write_text(yaml.safe_dump(doc))
    from tdsp_deploy.backends.sqlserver.target import SqlServerTarget

    loaded = load_manifest(
        iris, targets=(SqlServerTarget,), environ={"TOKEN": TOKEN, "SQL_PASSWORD": "pw-123456"}
    )
    assert loaded.secrets.values == {TOKEN, "pw-123456"}


def test_a_manifest_error_never_repeats_a_value_from_the_environment(iris: Path) -> None:
    doc = yaml.safe_load(iris.read_text())
    doc["model"]["path"] = "${TOKEN}/model"
    iris.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as error:
        load_manifest(iris, environ={"TOKEN": TOKEN})
    assert "model.path" in error.value.message and REDACTED in error.value.message
    _nowhere(TOKEN, error.value.message, json.dumps(error.value.to_json()))


# -- through the CLI ------------------------------------------------------------------------------


def test_validate_errors_hide_the_value_in_text_and_json(cli, iris: Path, monkeypatch) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)
    doc = yaml.safe_load(iris.read_text())
    doc["model"]["path"] = "${TOKEN}"
    iris.write_text(yaml.safe_dump(doc))
    for args in (("validate", iris), ("validate", iris, "--json")):
        result = cli(*args)
        assert result.exit_code == ExitCode.USAGE
        _nowhere(TOKEN, result.stdout, result.stderr)
    assert REDACTED in result.json()["problems"][0]["message"]


def test_render_of_the_local_plan_shows_a_marker(cli, iris: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)
    _set_variables(iris, {"DB_URL": "${TOKEN}", "LOG_LEVEL": "info"})
    out = tmp_path / "out"
    result = cli("render", iris, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    _nowhere(TOKEN, result.stdout, result.stderr, *_files_under(out).values())
    plan = json.loads((out / "local-plan.json").read_text())
    assert plan["slot"]["environment"]["DB_URL"] == REDACTED
    assert plan["slot"]["environment"]["LOG_LEVEL"] == "info"


def test_render_for_azure_ml_shows_a_marker(cli, iris: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("azure.ai.ml")
    monkeypatch.setenv("TOKEN", TOKEN)
    target = {
        "kind": "azureml",
        "subscription_id": "00000000-0000-0000-0000-000000000000",
        "resource_group": "rg-ml",
        "workspace": "ws-ml",
    }
    _set_variables(iris, {"DB_URL": "${TOKEN}", "LOG_LEVEL": "info"}, target=target)
    out = tmp_path / "out"
    result = cli("render", iris, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    _nowhere(TOKEN, result.stdout, result.stderr, *_files_under(out).values())
    deployment = yaml.safe_load((out / "deployment.yml").read_text())
    assert deployment["environment_variables"] == {"DB_URL": REDACTED, "LOG_LEVEL": "info"}


@pytest.mark.timeout(240)
def test_a_failed_push_whose_log_quotes_the_value_shows_a_marker(cli, iris: Path, monkeypatch) -> None:
    # The scoring script fails at start-up with the variable in its message: the error the CLI
    # prints carries the log's tail, which holds it.
    monkeypatch.setenv("TOKEN", TOKEN)
    _set_variables(iris, {"DB_URL": "${TOKEN}"})
    score = iris.parent / "src" / "score.py"
    score.write_text(
        score.read_text()
        + "\n\ndef init():\n    import os\n    raise RuntimeError('cannot reach ' + os.environ['DB_URL'])\n"
    )
    summary = iris.parent / "summary.md"
    try:
        human = cli("push", iris, "--summary", summary)
        assert human.exit_code == ExitCode.DEPLOYMENT_FAILED, human.stderr
        assert "deployment_failed" in summary.read_text() or "FAILED" in summary.read_text()
        _nowhere(TOKEN, summary.read_bytes())  # the CI page's summary too
        assert f"cannot reach {REDACTED}" in human.stderr  # the log tail is shown, redacted
        as_json = cli("push", iris, "--json")
        assert as_json.exit_code == ExitCode.DEPLOYMENT_FAILED
        _nowhere(TOKEN, human.stdout, human.stderr, as_json.stdout, as_json.stderr)
        logs = cli("logs", iris, "--deployment", "blue")
        _nowhere(TOKEN, logs.stdout, logs.stderr)
    finally:
        cli("delete", iris, "--yes")
