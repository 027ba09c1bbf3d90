"""The workspace storage as a real ADLS Gen2 account answers, through the real azure-storage-blob
client:

- with a hierarchical namespace, List Blobs returns directories as zero-length blobs with
  ``hdi_isfolder=true``: the store skips them (tests/fakes/blob_service.py answers so; Azurite has
  no hierarchical namespace);
- an identity without a data role gets 403 AuthorizationPermissionMismatch: the user is told
  which role to grant, exit 3 (tests/fakes/blob_service.py);
- the token path, as a user runs it with no connection string: DefaultAzureCredential gets a
  token for https://storage.azure.com/.default from a managed identity, and Azurite, in its
  OAuth mode over HTTPS, accepts the token only for that audience.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tdsp_deploy.backends.synapse.spark_backend import read_scored
from tdsp_deploy.backends.synapse.storage import BlobStore
from tdsp_deploy.errors import BackendError, ExitCode
from tests.fakes.azurite import Azurite, azurite_blob
from tests.fakes.blob_service import BlobService
from tests.fakes.identity_endpoint import STORAGE_RESOURCE, ManagedIdentityEndpoint, unsigned_jwt
from tests.fakes.synapse_spark_project import STORAGE, make_project

ROOT = STORAGE  # abfss://tdsp@contosolake.dfs.core.windows.net/deploy


def test_directories_of_a_hierarchical_namespace_are_not_files(tmp_path: Path) -> None:
    with BlobService(hns=True) as service:
        store = BlobStore.connect(
            ROOT, environ={"AZURE_STORAGE_CONNECTION_STRING": service.connection_string}
        )
        store.put_bytes("endpoints/churn/slots/blue.json", b"{}")
        frame = pd.DataFrame({"_tdsp_row": [1, 0], "x": [2.0, 1.0], "model_version": ["3", "3"]})
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        store.put_bytes("endpoints/churn/runs/r1/output/part-0.parquet", buffer.getvalue())

        # what the account lists: the directories too, as zero-length blobs marked as folders
        listed = {
            b.name: b
            for b in store.client.list_blobs(name_starts_with="deploy/endpoints/", include=["metadata"])
        }
        folder = listed["deploy/endpoints/churn/runs/r1/output"]
        assert folder.size == 0 and folder.metadata == {"hdi_isfolder": "true"}

        assert store.list("endpoints/") == [
            "endpoints/churn/runs/r1/output/part-0.parquet",
            "endpoints/churn/slots/blue.json",
        ]
        table, versions, _ = read_scored(store, "endpoints/churn/runs/r1/output")
        assert table == {"columns": ["x"], "data": [[1.0], [2.0]]} and versions == ["3"]


def test_without_a_data_role_the_user_is_told_which_role_to_grant(tmp_path: Path, cli: Any) -> None:
    project = make_project(tmp_path / "p")
    with BlobService(deny=True) as service:
        store = BlobStore.connect(
            ROOT, environ={"AZURE_STORAGE_CONNECTION_STRING": service.connection_string}
        )
        with pytest.raises(BackendError) as refused:
            store.put_bytes("x.json", b"{}")
        assert refused.value.exit_code == ExitCode.BACKEND
        assert "HTTP 403 AuthorizationPermissionMismatch" in refused.value.message
        assert "Storage Blob Data Contributor" in (refused.value.hint or "")
        assert "storage account contosolake" in (refused.value.hint or "")

        # from the command line: exit 3, the role in the hint, no traceback
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AZURE_STORAGE_CONNECTION_STRING", service.connection_string)
            pushed = cli("push", project, "--json")
    assert pushed.exit_code == 3, pushed.stderr
    error = pushed.json()
    assert "AuthorizationPermissionMismatch" in error["message"]
    assert "Storage Blob Data Contributor" in error["hint"]
    assert "Traceback" not in pushed.stderr


needs_azurite = pytest.mark.skipif(
    azurite_blob() is None, reason="Azurite needs node and the npm package azurite (.ci/run installs both)"
)


@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with Azurite(tmp_path_factory.mktemp("azurite-oauth"), oauth=True) as emulator:
        yield emulator


@needs_azurite
def test_the_token_path_reaches_storage_with_the_storage_scope(
    azurite_oauth: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection string: DefaultAzureCredential, a managed identity, a bearer token."""
    environ = {"TDSP_SYNAPSE_BLOB_ENDPOINT": azurite_oauth.blob_endpoint}
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(azurite_oauth.ca_file))  # trust the emulator's certificate
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with ManagedIdentityEndpoint(lambda resource: unsigned_jwt(resource)) as identity:
        for name, value in identity.environ.items():
            monkeypatch.setenv(name, value)
        store = BlobStore.connect(ROOT, environ=environ)
        store.put_bytes("endpoints/churn/traffic.json", json.dumps({"blue": 100}).encode())
        assert json.loads(store.get_bytes("endpoints/churn/traffic.json") or b"") == {"blue": 100}
        assert store.list("endpoints/") == ["endpoints/churn/traffic.json"]
        assert identity.resources and set(identity.resources) == {STORAGE_RESOURCE}
    # what was written is there for anyone with the account key too
    blob = azurite_oauth.service().get_blob_client("tdsp", "deploy/endpoints/churn/traffic.json")
    assert json.loads(blob.download_blob().readall()) == {"blue": 100}

    # a token for another audience (the Synapse workspace's) is refused, and said so
    with ManagedIdentityEndpoint(lambda resource: unsigned_jwt("https://dev.azuresynapse.net")) as wrong:
        for name, value in wrong.environ.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(BackendError, match="storage refused the credential") as refused:
            BlobStore.connect(ROOT, environ=environ).get_bytes("endpoints/churn/traffic.json")
    assert refused.value.exit_code == ExitCode.BACKEND
