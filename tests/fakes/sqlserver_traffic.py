"""The CLI against the fake SQL Server through a stand-in driver module (fixtures), and two versions
pushed with an A/B section, for the sqlserver and rollout tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.fakes.dbapi_fake import install_driver
from tests.fakes.sqlserver_fake import FakeSqlServer
from tests.fakes.sqlserver_project import make_project, matching_libraries

AB_SECTION = {"minimum_detectable_effect": 0.2, "baseline": 0.3, "primary_metric": {"type": "binary"}}


@pytest.fixture
def server() -> FakeSqlServer:
    return FakeSqlServer(libraries=matching_libraries())


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch, server: FakeSqlServer) -> list[str]:
    """The connection strings the CLI opened connections with."""
    return install_driver(monkeypatch, server.connect, "TDSP_TEST_SQL_PASSWORD")


def with_ab(manifest: Path) -> Path:
    document = yaml.safe_load(manifest.read_text())
    document["ab"] = AB_SECTION
    manifest.write_text(yaml.safe_dump(document))
    return manifest


def two_versions(tmp_path: Path, cli: Any) -> tuple[Path, Path]:
    first = with_ab(make_project(tmp_path / "v1", version="1"))
    second = with_ab(make_project(tmp_path / "v2", version="2", max_depth=1))
    assert cli("push", first, "--json").exit_code == 0
    assert cli("push", second, "--json").exit_code == 0  # green, all the traffic
    return first, second


def random_rows(n: int, seed: int = 5) -> list[list[float]]:
    values = np.random.default_rng(seed).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(n, 4)).round(2)
    return values.tolist()


def weights(server: FakeSqlServer) -> dict[str, int]:
    return {r["slot"]: r["weight"] for r in server.db.tables["dbo.tdsp_traffic"]}
