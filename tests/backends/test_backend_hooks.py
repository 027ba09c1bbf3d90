"""The hooks through which the CLI and the pipeline reach what only one target has, without
importing that target's modules: `import` (the registry's importer), a staged rollout's
per-minute metrics (minute_metrics) and `run`'s --input/--output (job_location)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdsp_deploy.backends.azureml import AzureMLBackend
from tdsp_deploy.backends.azureml.import_command import run_import
from tdsp_deploy.backends.azureml.monitor import EndpointMetrics, endpoint_resource_id
from tdsp_deploy.backends.azureml.target import AzureMLTarget
from tdsp_deploy.backends.local import LocalBackend
from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.registry import Registry
from tdsp_deploy.backends.synapse.target import location_from_option
from tdsp_deploy.errors import PluginError, UsageError
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.rollout.sources import AzureMonitorSource, metric_source
from tests.fakes.azureml_project import SUBSCRIPTION, make_project


def test_the_registry_hands_out_the_importer_of_the_target_that_has_one() -> None:
    registry = Registry.discover()
    assert registry.importer("azureml") is run_import
    with pytest.raises(PluginError, match="the local target imports no files of its platform"):
        registry.importer("local")


def test_a_staged_rollout_reads_azure_monitor_through_the_backend(tmp_path: Path) -> None:
    loaded = load_manifest(make_project(tmp_path), targets=(LocalTarget, AzureMLTarget))
    source = metric_source(AzureMLBackend(loaded.manifest))
    assert isinstance(source, AzureMonitorSource)
    assert isinstance(source.metrics, EndpointMetrics)
    assert source.metrics.resource_id == endpoint_resource_id(SUBSCRIPTION, "rg-tdsp", "ws-tdsp", "irisaz")


def test_targets_without_the_hooks_refuse_them(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"model")
    (tmp_path / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    (tmp_path / "deploy.yaml").write_text(
        "name: hooks\nmodel: {path: model.pkl}\nscoring: {script: score.py}\n"
    )
    backend = LocalBackend(load_manifest(tmp_path / "deploy.yaml").manifest, home=tmp_path / "home")
    with pytest.raises(UsageError, match="keeps no per-minute metrics"):
        backend.minute_metrics()
    with pytest.raises(UsageError, match="runs no batch jobs"):
        backend.job_location("rows.parquet")


def test_a_job_location_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = location_from_option("rows.csv")
    assert local.path == str(tmp_path / "rows.csv") and local.resolved_format == "csv"
    assert location_from_option("db.scores").table == "db.scores"
    remote = "abfss://data@account.dfs.core.windows.net/in/rows"
    assert location_from_option(remote, "delta").path == remote
    with pytest.raises(ValueError, match="abfss://<container>@<account>"):
        location_from_option("abfss://nowhere/rows")
