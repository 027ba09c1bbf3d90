"""The `local` target's schema: inference-server processes behind a router on loopback.

The manifest's default target (a manifest without ``target:`` deploys here): the loader finds
it among the target schemas it is handed, by its kind, so the manifest never imports it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tdsp_deploy.manifest.fields import Strict

__all__ = ["LivenessProbe", "LocalTarget"]


class LivenessProbe(Strict):
    """How the local target's supervisor checks that a slot still answers (``GET /``): Azure ML's
    ``liveness_probe`` settings and defaults. After ``failure_threshold`` failed probes in a row
    the slot process is killed and restarted. A slot's worker answers one request at a time, so
    a probe waits behind a long request: keep period x failure_threshold above the longest one."""

    initial_delay: int = Field(
        default=10, ge=1, le=3600, description="Seconds after a slot starts before the first probe."
    )
    period: int = Field(default=10, ge=1, le=3600, description="Seconds between probes.")
    timeout: int = Field(default=2, ge=1, le=3600, description="Seconds a probe waits for its answer.")
    failure_threshold: int = Field(
        default=30, ge=1, le=10_000, description="Failed probes in a row before the slot is restarted."
    )
    success_threshold: int = Field(
        default=1,
        ge=1,
        le=1,
        description="Fixed at 1 for a liveness probe, as on Azure ML: one answer clears the failures.",
    )


class LocalTarget(Strict):
    """The embedded target: inference-server processes behind a router on loopback."""

    kind: Literal["local"] = "local"
    host: str = Field(
        default="127.0.0.1", description="Address the router binds; loopback unless you mean it."
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Router port (default: a free port, kept)."
    )
    workers: int = Field(default=1, ge=1, le=64, description="Inference-server workers per slot.")
    http_server: Literal["granian", "gunicorn"] = Field(
        default="granian",
        description=(
            "HTTP server of each slot's inference-server app: granian (faster) or gunicorn "
            "(the server Azure ML's containers run, for exact parity)."
        ),
    )
    startup_timeout: float = Field(
        default=120, gt=0, le=3600, description="Seconds to wait for a slot to be healthy."
    )
    request_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    max_request_mb: float = Field(default=100, gt=0, le=2048, description="Bodies above this get 413.")
    liveness_probe: LivenessProbe = Field(
        default_factory=LivenessProbe, description="When a slot that stopped answering is restarted."
    )
