"""What the client reads back from Azure ML, as small records instead of SDK entities, and
how a deployment's record becomes the contract's ``SlotStatus``."""

from __future__ import annotations

import dataclasses
from typing import Any

from tdsp_deploy.backends.base import SlotStatus

#: tags on a deployment: what it runs, read back by ``status``
PACKAGE_TAG = "tdsp-deploy-package-id"
CONFIG_TAG = "tdsp-deploy-config-id"
MODEL_VERSION_TAG = "tdsp-deploy-model-version"

#: Azure ML provisioning states as the contract's slot states
SLOT_STATES = {
    "succeeded": "healthy",
    "creating": "starting",
    "updating": "starting",
    "scaling": "starting",
    "failed": "unhealthy",
    "canceled": "unhealthy",
    "cancelled": "unhealthy",
    "deleting": "stopped",
}


@dataclasses.dataclass(frozen=True)
class EndpointInfo:
    name: str
    provisioning_state: str | None
    scoring_uri: str | None
    auth_mode: str | None
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DeploymentInfo:
    name: str
    endpoint_name: str
    provisioning_state: str | None
    instance_type: str | None
    instance_count: int | None
    model: str | None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the SDK entity as Azure returned it; handed back to ``begin_create_deployment`` to
    #: restore this revision after a failed update
    spec: Any = dataclasses.field(default=None, compare=False, repr=False)


def asset_reference(asset: Any) -> str:
    """How a deployment names a registered model or environment: its ARM id, or
    ``azureml:name:version``."""
    asset_id = getattr(asset, "id", None)
    if isinstance(asset_id, str) and asset_id.startswith("/subscriptions/"):
        return asset_id
    return f"azureml:{asset.name}:{asset.version}"


def endpoint_info(entity: Any) -> EndpointInfo:
    return EndpointInfo(
        name=entity.name,
        provisioning_state=_state_text(entity.provisioning_state),
        scoring_uri=entity.scoring_uri,
        auth_mode=entity.auth_mode,
        traffic={k: int(v) for k, v in (entity.traffic or {}).items()},
        mirror_traffic={k: int(v) for k, v in (entity.mirror_traffic or {}).items() if v},
        tags=dict(entity.tags or {}),
    )


def deployment_info(entity: Any, endpoint: str) -> DeploymentInfo:
    model = entity.model
    if model is not None and not isinstance(model, str):
        model = getattr(model, "id", None) or f"{model.name}:{model.version}"
    return DeploymentInfo(
        name=entity.name,
        endpoint_name=entity.endpoint_name or endpoint,
        provisioning_state=_state_text(entity.provisioning_state),
        instance_type=entity.instance_type,
        instance_count=entity.instance_count,
        model=model,
        tags=dict(entity.tags or {}),
        spec=entity,
    )


def _state_text(state: Any) -> str | None:
    """A provisioning state as Azure spells it ("Creating"), whether the SDK gives a string or
    one of its enums (whose str() is "DeploymentProvisioningState.CREATING")."""
    if state is None:
        return None
    return str(getattr(state, "value", state))


def slot_status(deployment: DeploymentInfo, endpoint: EndpointInfo) -> SlotStatus:
    """A deployment as the contract's slot: its state, its shares of the endpoint's traffic and
    mirror, and what it runs (from its tags)."""
    state = (deployment.provisioning_state or "").lower()
    return SlotStatus(
        name=deployment.name,
        state=SLOT_STATES.get(state, "starting"),
        traffic=endpoint.traffic.get(deployment.name, 0),
        mirror=endpoint.mirror_traffic.get(deployment.name, 0),
        model_version=deployment.tags.get(MODEL_VERSION_TAG),
        package_id=deployment.tags.get(PACKAGE_TAG),
        config_id=deployment.tags.get(CONFIG_TAG),
        details={
            "provisioning_state": deployment.provisioning_state,
            "instance_type": deployment.instance_type,
            "instance_count": deployment.instance_count,
            "model": deployment.model,
        },
    )
