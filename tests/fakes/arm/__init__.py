"""An Azure Resource Manager emulator for the azureml backend's tests: the real azure-ai-ml
``MLClient`` over an azure-core transport (transport.py) answering as Azure's recorded traffic
does (workspace.py), blob uploads in Azurite through a loopback proxy (storage_proxy.py), and
the scoring URI on a loopback front end (scoring.py).

``emulated_azure`` starts all of it; ``connect`` builds the backend's client the way the
backend builds it, with the emulator's transport as the only difference.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from tests.fakes.arm.scoring import ScoringFrontEnd
from tests.fakes.arm.storage_proxy import StorageProxy
from tests.fakes.arm.workspace import Workspace

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-tdsp"
WORKSPACE = "ws-tdsp"


class StaticToken:
    """A signed-in identity: the token an Azure AD sign-in would give (ARM checks nothing here;
    the tokens's path through DefaultAzureCredential is out of reach of a test)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("emulated-arm-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("emulated-arm-token", int(time.time()) + 3600)


@dataclass
class EmulatedAzure:
    workspace: Workspace
    front: ScoringFrontEnd
    proxy: StorageProxy
    azurite: Any

    def client(self, target: Any, **options: Any) -> Any:
        """The backend's AzureMLClient over the emulator (the real MLClient inside)."""
        from tdsp_deploy.backends.azureml.client import AzureMLClient

        settings: dict[str, Any] = {
            "transport": self.workspace.transport,
            "polling_interval": 0.02,  # azure-core's ARM poll delay for operations without their own
            "retry_backoff_factor": 0.01,
            "poll_interval": 0.02,
        }
        settings.update(options)
        return AzureMLClient.connect(target, credential=StaticToken(), **settings)

    def blobs(self) -> list[str]:
        """The blobs this workspace's uploads wrote, as container/name: its datastore's
        container and the code-upload containers its startPendingUpload answers made."""
        service = self.azurite.service()
        mine = [self.workspace.container, *self.workspace.upload_containers]
        return sorted(f"{c}/{b.name}" for c in mine for b in service.get_container_client(c).list_blobs())


@dataclass
class Storage:
    """Azurite and the proxy in front of it; one per test module (Azurite takes a while)."""

    azurite: Any
    proxy: StorageProxy

    def upload_container(self, name: str) -> str:
        """Make a container (as Azure does for a code upload) and a SAS URI to write into it."""
        from datetime import datetime, timedelta

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        from tests.fakes.azurite import ACCOUNT, KEY

        self.azurite.service().create_container(name)
        sas = generate_container_sas(
            ACCOUNT,
            name,
            account_key=KEY,
            permission=ContainerSasPermissions(read=True, write=True, create=True, list=True, add=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        return f"https://{ACCOUNT}.blob.core.windows.net/{name}?{sas}"


@contextmanager
def emulated_storage(folder: Path) -> Iterator[Storage]:
    """Azurite, and the environment that sends azure-ai-ml's blob client to it."""
    import pytest

    from tests.fakes.azurite import ACCOUNT, Azurite

    folder.mkdir(parents=True, exist_ok=True)
    with Azurite(folder / "azurite") as azurite, pytest.MonkeyPatch.context() as env:
        proxy = StorageProxy(folder, ACCOUNT, azurite.port)
        # the blob client is azure-ai-ml's own; it reaches Azurite as it would reach Azure
        # behind a proxy (see storage_proxy.py)
        env.setenv("HTTPS_PROXY", proxy.url)
        env.setenv("REQUESTS_CA_BUNDLE", str(proxy.cert_path))
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        try:
            yield Storage(azurite, proxy)
        finally:
            proxy.close()


@contextmanager
def emulated_azure(storage: Storage, answer: bytes, **workspace_options: Any) -> Iterator[EmulatedAzure]:
    """A fresh workspace (its own blob container) and scoring front end."""
    from tests.fakes.azurite import ACCOUNT, KEY

    container = f"azureml-blobstore-{uuid.uuid4()}"
    storage.azurite.service().create_container(container)
    front_holder: dict[str, ScoringFrontEnd] = {}
    workspace = Workspace(
        subscription=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        name=WORKSPACE,
        storage_account=ACCOUNT,
        container=container,
        account_key=KEY,
        scoring_uri=lambda endpoint: f"{front_holder['front'].base_url}/{endpoint}/score",
        upload_container=storage.upload_container,
        **workspace_options,
    )
    front = ScoringFrontEnd(workspace, answer)
    front_holder["front"] = front
    try:
        with front.serve():
            yield EmulatedAzure(workspace, front, storage.proxy, storage.azurite)
    finally:
        workspace.close()
