"""The emulated workspace's assets: the workspace itself, its default datastore, and model,
environment and code versions (with the code upload's temporary container). A mixin of
``Workspace`` (workspace.py), whose state and recordings' names (DEPLOY_CREATE) it shares.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.arm.transport import Reply, Sent

PROVIDER = "Microsoft.MachineLearningServices"
STARTED = "2025-02-27T10:35:40.9824177+00:00"


def arm_error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Azure ML's error body (DEPLOY_CREATE, the 400 of listSecrets): code, message, details,
    additionalInfo; ``x-ms-response-type: error``."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": details or [],
            "additionalInfo": [{"type": "ComponentName", "info": {"value": "managementfrontend"}}],
        }
    }
    return Reply(status, body, {"x-ms-response-type": "error", **(headers or {})})


class AssetsMixin:
    base: str
    name: str
    location: str
    subscription: str
    resource_group: str
    storage_account: str
    container: str
    account_key: str
    workspace_id: str
    upload_container: Callable[[str], str] | None
    upload_containers: list[str]
    models: dict[tuple[str, str], dict[str, Any]]
    environments: dict[tuple[str, str], dict[str, Any]]
    codes: dict[tuple[str, str], dict[str, Any]]

    def _not_found(self, what: str) -> Reply:
        raise NotImplementedError

    def _get_workspace(self, sent: Sent) -> Reply:
        # DEPLOY_CREATE, first entry (trimmed to the fields the SDK reads)
        return Reply(
            200,
            {
                "id": self.base,
                "name": self.name,
                "type": f"{PROVIDER}/workspaces",
                "location": self.location,
                "tags": {},
                "etag": None,
                "kind": "Default",
                "sku": {"name": "Basic", "tier": "Basic"},
                "identity": {"type": "SystemAssigned"},
                "properties": {
                    "friendlyName": self.name,
                    "storageAccount": self.storage_account,
                    "provisioningState": "Succeeded",
                    "workspaceId": self.workspace_id,
                    "publicNetworkAccess": "Enabled",
                    "v1LegacyMode": False,
                    "discoveryUrl": f"https://{self.location}.api.azureml.ms/discovery",
                    "systemDatastoresAuthMode": "accesskey",
                },
            },
        )

    def _datastore(self) -> dict[str, Any]:
        # DEPLOY_CREATE (GET datastores/workspaceblobstore), with account-key credentials as a
        # workspace whose systemDatastoresAuthMode is accesskey has (ENDPOINT_E2E's workspace)
        return {
            "id": f"{self.base}/datastores/workspaceblobstore",
            "name": "workspaceblobstore",
            "type": f"{PROVIDER}/workspaces/datastores",
            "properties": {
                "description": None,
                "tags": None,
                "properties": None,
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
                "datastoreType": "AzureBlob",
                "accountName": self.storage_account,
                "containerName": self.container,
                "endpoint": "core.windows.net",
                "protocol": "https",
                "serviceDataAccessAuthIdentity": "None",
            },
        }

    def _get_datastore(self, sent: Sent, name: str) -> Reply:
        if name != "workspaceblobstore":
            return arm_error(404, "UserError", f"Datastore {name} not found.")
        return Reply(200, self._datastore())

    def _list_datastores(self, sent: Sent) -> Reply:
        return Reply(200, {"value": [self._datastore()]})

    def _list_secrets(self, sent: Sent, name: str) -> Reply:
        return Reply(200, {"secretsType": "AccountKey", "key": self.account_key})

    def _exists(self, ref: str, store: dict[tuple[str, str], Any], kind: str) -> bool:
        match = re.search(rf"/{kind}/([^/]+)/versions/([^/]+)$", ref)
        return bool(match) and (match.group(1), match.group(2)) in store

    def _asset_get(self, store: dict[tuple[str, str], Any], kind: str) -> Callable[..., Reply]:
        def get(sent: Sent, name: str, version: str) -> Reply:
            asset = store.get((name, version))
            if asset is None:
                return self._not_found(f"{kind} {name}:{version}")
            return Reply(200, asset)

        return get

    def _asset_put(self, store: dict[tuple[str, str], Any], kind: str) -> Callable[..., Reply]:
        def put(sent: Sent, name: str, version: str) -> Reply:
            body = sent.json()
            path = f"{self.base}/{kind}/{name}/versions/{version}"
            existing = store.get((name, version))
            # DEPLOY_CREATE (environment, model PUT answers): properties echoed, Succeeded
            asset = {
                "id": path,
                "name": version,
                "type": f"{PROVIDER}/workspaces/{kind}/versions",
                "properties": {
                    **_ASSET_DEFAULTS.get(kind, {}),
                    **body.get("properties", {}),
                    "provisioningState": "Succeeded",
                },
                "systemData": {"createdAt": STARTED, "createdBy": "Sanitized"},
            }
            store[(name, version)] = asset
            return Reply(200 if existing else 201, asset)

        return put

    def _asset_list(self, store: dict[tuple[str, str], Any]) -> Callable[..., Reply]:
        # DEPLOY_CREATE: models/{name}/versions?$orderBy=createdtime desc&$top=1, newest first
        def listing(sent: Sent, name: str) -> Reply:
            found = [a for (n, _), a in store.items() if n == name][::-1]
            top = parse_qs(sent.query).get("$top")
            return Reply(200, {"value": found[: int(top[0])] if top else found})

        return listing

    def _start_pending_upload(self, sent: Sent, name: str, version: str) -> Reply:
        # PendingUploadResponseDto: a temporary container named after the workspace id (as the
        # codeUri of DEPLOY_CREATE's code version), with a SAS credential for it
        if self.upload_container is None:
            return None  # type: ignore[return-value]
        container = f"{self.workspace_id}-{uuid.uuid4().hex[:25]}"
        self.upload_containers.append(container)
        sas_uri = self.upload_container(container)
        return Reply(
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": f"https://{self.storage_account}.blob.core.windows.net:443/{container}",
                    "storageAccountArmId": f"/subscriptions/{self.subscription}/resourceGroups/"
                    f"{self.resource_group}/providers/Microsoft.Storage/storageAccounts/{self.storage_account}",
                    "credential": {"credentialType": "SAS", "sasUri": sas_uri},
                },
                "pendingUploadId": None,
                "pendingUploadType": "TemporaryBlobReference",
            },
        )

    def _list_codes(self, sent: Sent, name: str) -> Reply:
        # DEPLOY_CREATE: codes/{name}/versions?hash=...&hashVersion=202208 finds an upload by hash
        wanted = parse_qs(sent.query).get("hash", [None])[0]
        found = [
            c
            for (n, _), c in self.codes.items()
            if n == name
            and (wanted is None or c["properties"].get("properties", {}).get("hash_sha256") == wanted)
        ]
        return Reply(200, {"value": found})


# DEPLOY_CREATE: what the model and environment PUTs answer beyond what was sent
_ASSET_DEFAULTS: dict[str, dict[str, Any]] = {
    "models": {
        "description": None,
        "tags": {},
        "properties": {},
        "isArchived": False,
        "isAnonymous": False,
        "autoDeleteSetting": None,
        "flavors": {},
        "jobName": None,
        "stage": "Logged",
        "intellectualProperty": None,
    },
    "environments": {
        "description": None,
        "tags": {},
        "properties": {"azureml.labels": ""},
        "isArchived": False,
        "isAnonymous": False,
        "autoDeleteSetting": None,
        "environmentType": "UserCreated",
        "osType": "Linux",
        "autoRebuild": "Disabled",
        "stage": "Logged",
        "intellectualProperty": None,
    },
    "codes": {"description": None, "tags": {}, "properties": {}, "isArchived": False, "isAnonymous": False},
}
