"""The azureml backend on the real MLClient against the ARM emulator (tests/fakes/arm/) and Azurite:
the fixtures and push helpers the azureml and rollout tests share. Azurite missing skips the modules
that take pytestmark from here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy.backends.azureml import AzureMLBackend
from tdsp_deploy.backends.azureml.target import AzureMLTarget
from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import TdspError
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.pipeline import PushResult, push
from tests.fakes.arm import EmulatedAzure, Storage, emulated_azure, emulated_storage
from tests.fakes.azureml_project import EXPECTED, NAME, make_project
from tests.fakes.azurite import azurite_blob

pytestmark = pytest.mark.skipif(azurite_blob() is None, reason="Azurite (npm azurite) is not installed")


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    with emulated_storage(tmp_path_factory.mktemp("storage")) as started:
        yield started


@pytest.fixture
def azure(storage: Storage) -> Iterator[EmulatedAzure]:
    with emulated_azure(storage, json.dumps(EXPECTED).encode()) as emulated:
        yield emulated
        # a request the emulator did not know is a guess about Azure's API
        assert emulated.workspace.unknown == []


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def backend_for(
    manifest: Path, azure: EmulatedAzure, events: list | None = None, **options: Any
) -> AzureMLBackend:
    loaded = load_manifest(manifest, targets=(LocalTarget, AzureMLTarget))
    progress = events.append if events is not None else (lambda event: None)
    client = azure.client(loaded.manifest.target, **options)
    return AzureMLBackend(loaded.manifest, progress=progress, client=client)


def run_push(manifest: Path, azure: EmulatedAzure, events: list | None = None, **options: Any) -> PushResult:
    loaded = load_manifest(manifest, targets=(LocalTarget, AzureMLTarget))
    return push(loaded, backend_for(manifest, azure, events), **options)


def push_fails(manifest: Path, azure: EmulatedAzure, events: list | None = None) -> TdspError:
    with pytest.raises(TdspError) as caught:
        run_push(manifest, azure, events)
    return caught.value


def writes(azure: EmulatedAzure) -> list[str]:
    """The requests that change something, in order, as 'METHOD path-below-the-workspace'."""
    base = azure.workspace.base
    return [f"{s.method} {s.path[len(base) :]}" for s in azure.workspace.sent if s.method != "GET"]


def live(azure: EmulatedAzure) -> tuple[dict[str, int], dict[str, int]]:
    props = azure.workspace.endpoints[NAME]["properties"]
    return (
        {k: v for k, v in props["traffic"].items() if v},
        {k: v for k, v in props["mirrorTraffic"].items() if v},
    )
