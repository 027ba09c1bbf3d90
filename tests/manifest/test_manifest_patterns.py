"""Names checked by a pattern are checked whole: a trailing newline (which Python's ``$``
accepts before the end of the text) is refused like any other bad character, at its field,
with exit code 2, and never reaches generated code."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tdsp_deploy.backends.azureml.target import AzureMLTarget
from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.sqlserver.target import Column, SqlServerTarget, check_identifier
from tdsp_deploy.backends.synapse.target import DataLocation, SynapseTarget, location_from_text
from tdsp_deploy.errors import ExitCode, ManifestError
from tdsp_deploy.manifest import load_manifest

SQLSERVER = {
    "kind": "sqlserver",
    "server": "sql.example.com",
    "database": "scoring",
    "auth": {"method": "sql", "username": "deployer", "password_env": "SQL_PASSWORD"},
    "procedure": "score_nl",
    "inputs": [{"name": "x1", "type": "float"}],
    "outputs": [{"name": "score", "type": "float"}],
}
SYNAPSE_SPARK = {
    "kind": "synapse",
    "workspace": "contoso-ws",
    "mode": "spark",
    "spark_pool": "pool1",
    "storage": "abfss://tdsp@contosolake.dfs.core.windows.net/deploy",
    "endpoint": "https://contoso-ws.dev.azuresynapse.net",
    "conf": {"spark.executor.cores": "2"},
    "inputs": [{"name": "x1", "type": "float"}],
    "outputs": [{"name": "score", "type": "float"}],
}
SYNAPSE_SQL = {
    "kind": "synapse",
    "workspace": "contoso-ws",
    "mode": "sql",
    "server": "contoso-ws.sql.azuresynapse.net",
    "database": "scoring",
    "auth": {"method": "entra"},
    "inputs": [{"name": "x1", "type": "float"}],
    "outputs": [{"name": "score", "type": "float"}],
}
AZUREML = {
    "kind": "azureml",
    "subscription_id": "00000000-0000-0000-0000-000000000000",
    "resource_group": "rg-ml",
    "workspace": "ws-ml",
    "instance_type": "Standard_DS3_v2",
}
TARGETS = {
    "sqlserver": (SqlServerTarget, SQLSERVER),
    "synapse-spark": (SynapseTarget, SYNAPSE_SPARK),
    "synapse-sql": (SynapseTarget, SYNAPSE_SQL),
    "azureml": (AzureMLTarget, AZUREML),
}
# (target, path of a name inside it): every field whose value a pattern checks.
FIELDS = [
    ("sqlserver", ("server",)),
    ("sqlserver", ("database",)),
    ("sqlserver", ("procedure",)),
    ("sqlserver", ("inputs", 0, "name")),
    ("sqlserver", ("outputs", 0, "name")),
    ("sqlserver", ("auth", "password_env")),
    ("synapse-spark", ("workspace",)),
    ("synapse-spark", ("spark_pool",)),
    ("synapse-spark", ("storage",)),
    ("synapse-spark", ("endpoint",)),
    ("synapse-spark", ("inputs", 0, "name")),
    ("synapse-sql", ("server",)),
    ("synapse-sql", ("database",)),
    ("azureml", ("resource_group",)),
    ("azureml", ("workspace",)),
    ("azureml", ("instance_type",)),
]


def _with(document: dict[str, Any], path: tuple[str | int, ...], suffix: str) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    node: Any = changed
    for element in path[:-1]:
        node = node[element]
    node[path[-1]] += suffix
    return changed


@pytest.mark.parametrize(("target", "path"), FIELDS, ids=["-".join(map(str, f)) for _, f in FIELDS])
def test_a_trailing_newline_is_refused_where_the_name_itself_passes(target: str, path: tuple) -> None:
    model, document = TARGETS[target]
    model.model_validate(document)  # the name as it is passes
    with pytest.raises(ValidationError) as error:
        model.model_validate(_with(document, path, "\n"))
    assert any(tuple(e["loc"][: len(path)]) == path or e["loc"][-1] == path[-1] for e in error.value.errors())


def test_a_spark_conf_key_with_a_newline_is_refused() -> None:
    with pytest.raises(ValidationError):
        SynapseTarget.model_validate({**SYNAPSE_SPARK, "conf": {"spark.executor.cores\n": "2"}})


def test_table_names_and_sql_types_are_checked_whole() -> None:
    with pytest.raises(ValidationError):
        DataLocation.model_validate({"table": "db.scores\n"})
    assert location_from_text("scores\n") == {"path": "scores\n"}  # not taken for a table name
    # A type is normalized (blanks are not part of it): the newline goes, the type stays.
    assert Column.model_validate({"name": "x", "type": "float\n"}).type == "float"


IDENTIFIER = st.from_regex(re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,20}"), fullmatch=True)
SUFFIX = st.sampled_from(["\n", "\r\n", "\n\n", "\r", "\x0b", "\x0c", " "])


@settings(max_examples=200, derandomize=True, deadline=None)
@given(name=IDENTIFIER, suffix=SUFFIX)
def test_identifiers_pass_alone_and_never_with_a_line_break(name: str, suffix: str) -> None:
    assert check_identifier(name) == name
    with pytest.raises(ValueError):
        check_identifier(name + suffix)


def _project(tmp_path: Path, target: dict[str, Any], **top: Any) -> Path:
    (tmp_path / "model.pkl").write_bytes(b"not read by validation")
    (tmp_path / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    document = {
        "name": "churn",
        "model": {"path": "model.pkl", "flavor": "sklearn"},
        "scoring": {"script": "score.py"},
        "target": target,
        **top,
    }
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_the_procedure_of_the_report_is_a_located_manifest_error(tmp_path: Path) -> None:
    path = _project(tmp_path, {**SQLSERVER, "procedure": "score_nl\n"})
    with pytest.raises(ManifestError) as error:
        load_manifest(path, targets=(LocalTarget, SqlServerTarget))
    assert error.value.exit_code == ExitCode.USAGE
    assert "target.procedure: must be an identifier" in error.value.message


def test_a_column_with_a_newline_never_reaches_generated_code(tmp_path: Path) -> None:
    path = _project(tmp_path, {**SQLSERVER, "inputs": [{"name": "x1\n", "type": "float"}]})
    with pytest.raises(ManifestError) as error:
        load_manifest(path, targets=(LocalTarget, SqlServerTarget))
    assert "target.inputs[0].name" in error.value.message


@pytest.mark.parametrize(
    ("top", "field"),
    [
        ({"name": "churn\n"}, "name"),
        ({"model": {"path": "model.pkl", "flavor": "sklearn", "name": "churn-model\n"}}, "model.name"),
        ({"rollout": {"deployment": "blue\n"}}, "rollout.deployment"),
        ({"rollout": {"sticky_header": "x-user-id\n"}}, "rollout.sticky_header"),
        ({"environment": {"variables": {"LOG_LEVEL\n": "info"}}}, "environment.variables"),
    ],
)
def test_manifest_names_with_a_newline_are_refused(tmp_path: Path, top: dict, field: str) -> None:
    path = _project(tmp_path, {"kind": "local"}, **top)
    with pytest.raises(ManifestError) as error:
        load_manifest(path)
    assert field in error.value.message
