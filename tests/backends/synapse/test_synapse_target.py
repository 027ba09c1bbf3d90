"""The synapse target's schema, through the real loader and CLI: every refusal names the field
(and the line), each mode's fields are required in it and refused in the other; the backend
entry point dispatches on the mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tdsp_deploy.backends import synapse
from tdsp_deploy.backends.registry import Registry
from tdsp_deploy.backends.synapse.target import DataLocation, SynapseTarget, parse_abfss
from tdsp_deploy.errors import ManifestError
from tdsp_deploy.manifest import load_manifest

STORAGE = "abfss://tdsp@contosolake.dfs.core.windows.net/deploy"
COLUMNS = {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "score", "type": "float"}]}
SPARK = {
    "kind": "synapse",
    "workspace": "contoso-ws",
    "mode": "spark",
    "spark_pool": "pool1",
    "storage": STORAGE,
    **COLUMNS,
}
SQL = {
    "kind": "synapse",
    "workspace": "contoso-ws",
    "mode": "sql",
    "server": "contoso-ws.sql.azuresynapse.net",
    "database": "scoring",
    "auth": {"method": "entra"},
    **COLUMNS,
}


def write(folder: Path, target: dict[str, Any]) -> Path:
    (folder / "model.pkl").write_bytes(b"not read by validation")
    (folder / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    path = folder / "deploy.yaml"
    manifest = {
        "name": "churn",
        "model": {"path": "model.pkl", "flavor": "sklearn"},
        "scoring": {"script": "score.py"},
    }
    path.write_text(yaml.safe_dump({**manifest, "target": target}, sort_keys=False))
    return path


def problems(folder: Path, target: dict[str, Any]) -> str:
    with pytest.raises(ManifestError) as error:
        load_manifest(write(folder, target), targets=(SynapseTarget,))
    return error.value.message


def test_spark_and_sql_targets_validate(tmp_path: Path) -> None:
    spark = load_manifest(
        write(
            tmp_path,
            {
                **SPARK,
                "input": "data/rows.csv",
                "output": "scores.results",
                "executor": {"size": "Medium", "count": 4},
                "key_column": "id",
            },
        ),
        targets=(SynapseTarget,),
    ).manifest.target
    assert spark.input.path == str(tmp_path / "data/rows.csv") and spark.input.resolved_format == "csv"
    assert spark.output.table == "scores.results" and spark.output.path is None
    assert spark.executor.count == 4 and spark.job_timeout == 3600
    sql = load_manifest(write(tmp_path, {**SQL, "schema": "ml"}), targets=(SynapseTarget,)).manifest.target
    assert (sql.schema_, sql.port, sql.model_table, sql.encrypt) == ("ml", 1433, "tdsp_models", True)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"spark_pool": None}, "target.spark_pool (the Spark pool that runs the job)"),
        ({"storage": None}, "target.storage"),
        ({"storage": "https://contosolake.blob.core.windows.net/tdsp"}, "target.storage: must be abfss://"),
        ({"storage": "abfss://TDSP@contosolake.dfs.core.windows.net/x"}, "target.storage: must be abfss://"),
        ({"mode": "batch"}, "target.mode: must be 'spark' or 'sql', got 'batch'"),
        ({"workspace": "Contoso_WS"}, "target.workspace: must be the workspace name"),
        ({"spark_pool": "pool-1"}, "target.spark_pool: must be a Spark pool name"),
        ({"executor": {"size": "Huge"}}, "target.executor.size"),
        ({"executor": {"count": 0}}, "target.executor.count"),
        ({"conf": {"memory": "4g"}}, "not a Spark configuration key"),
        ({"input": "http://example.com/rows.csv"}, "target.input: must be an abfss:// URI or a local path"),
        ({"input": {"path": "a.csv", "table": "t"}}, "give either path or table"),
        ({"input": {"path": "a.csv", "format": "orc"}}, "target.input.format"),
        ({"server": "x.sql.azuresynapse.net"}, "server belong(s) to mode: sql"),
        ({"outputs": [{"name": "x", "type": "float"}]}, "output column(s) x also named as input"),
        ({"job_timeout": 0}, "target.job_timeout"),
    ],
)
def test_bad_spark_targets_are_refused_by_field(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    target = {k: v for k, v in {**SPARK, **change}.items() if v is not None}
    message = problems(tmp_path, target)
    assert expected in message, message
    assert "deploy.yaml:" in message  # located in the file


def test_sql_mode_needs_its_own_fields_and_refuses_spark_ones(tmp_path: Path) -> None:
    message = problems(tmp_path, {k: v for k, v in SQL.items() if k not in ("server", "auth")})
    assert "target.server" in message and "target.auth" in message
    assert "spark_pool belong(s) to mode: spark" in problems(tmp_path, {**SQL, "spark_pool": "pool1"})


def test_parse_abfss_and_locations() -> None:
    assert parse_abfss(STORAGE) == ("tdsp", "contosolake", "deploy")
    assert parse_abfss("abfss://tdsp@contosolake.dfs.core.windows.net") == ("tdsp", "contosolake", "")
    with pytest.raises(ValueError, match="abfss://<container>@<account>"):
        parse_abfss("abfss://tdsp@contosolake.blob.core.windows.net/x")
    assert DataLocation.model_validate("scores.parquet").path == "scores.parquet"
    assert DataLocation.model_validate("db.scores").table == "db.scores"
    assert DataLocation.model_validate({"path": "out", "format": "delta"}).resolved_format == "delta"
    assert DataLocation.model_validate("out/folder").resolved_format == "parquet"


def test_livy_endpoint_is_overridable(tmp_path: Path) -> None:
    target = SynapseTarget.model_validate(SPARK)
    assert target.livy_endpoint({}) == "https://contoso-ws.dev.azuresynapse.net"
    assert SynapseTarget.model_validate({**SPARK, "endpoint": "https://pl.example.net/"}).livy_endpoint(
        {}
    ) == ("https://pl.example.net")
    assert target.livy_endpoint({"TDSP_SYNAPSE_ENDPOINT": "http://127.0.0.1:8998"}) == "http://127.0.0.1:8998"


def test_the_entry_point_dispatches_on_the_mode(tmp_path: Path) -> None:
    registry = Registry.discover()
    assert registry.factory("synapse") is synapse.plugin
    spark_folder, sql_folder = tmp_path / "spark", tmp_path / "sql"
    spark_folder.mkdir()
    sql_folder.mkdir()
    spark_manifest = load_manifest(write(spark_folder, SPARK), targets=(SynapseTarget,)).manifest
    spark = registry.make_backend(spark_manifest)
    assert type(spark).__name__ == "SparkBackend" and spark.capabilities.weighted_traffic
    sql_manifest = load_manifest(write(sql_folder, SQL), targets=(SynapseTarget,)).manifest
    try:
        sql = registry.make_backend(sql_manifest)
    except Exception as exc:  # the sql mode's SDKs may be missing here: then a clear plugin error
        from tdsp_deploy.errors import TdspError

        assert isinstance(exc, TdspError) and "pip install" in (exc.hint or ""), exc
    else:
        assert type(sql).__name__ == "SqlPoolBackend"


def test_cli_validate_and_schema_know_the_synapse_target(tmp_path: Path, cli: Any) -> None:
    result = cli("validate", write(tmp_path, SPARK), "--json")
    assert result.exit_code == 0, result.stderr
    bad = cli("validate", write(tmp_path, {k: v for k, v in SPARK.items() if k != "spark_pool"}), "--json")
    assert bad.exit_code == 2 and "target.spark_pool" in bad.stdout
    schema = cli("schema")
    assert schema.exit_code == 0 and "spark_pool" in schema.stdout
