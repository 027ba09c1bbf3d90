"""A fake deployment target for the pipeline's tests, installed through the real entry-point
group (see the dist-info folder beside it), as a third-party backend would be.

State lives in memory for the test process. The target's fields choose where it fails, so
every rollback path can be driven. It enforces the rules a real platform enforces: traffic
adds up to 100 or 0, only existing slots take traffic, a slot with traffic is not deleted.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tdsp_deploy.backends.base import (
    Backend,
    Capabilities,
    EndpointStatus,
    InvokeResult,
    ProgressEvent,
    SlotStatus,
)
from tdsp_deploy.errors import BackendError, DeploymentFailed, EndpointNotFound, UsageError

# endpoint name -> {"slots": {name: {...}}, "events": [...]}
ENDPOINTS: dict[str, dict] = {}


class FakeTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["fake"] = "fake"
    fail_health: bool = False  # the new slot never becomes healthy
    wrong_answer: bool = False  # the new slot answers something else than expected
    error_status: int | None = None  # the new slot answers with this HTTP status
    delay_ms: float = 0.0  # each answer takes this long
    raise_unexpected: bool = False  # status() raises a bug (not a TdspError)
    interrupt_at: str | None = None  # "smoke": KeyboardInterrupt while smoke-testing


class FakeBackend(Backend):
    kind = "fake"
    target_model = FakeTarget
    capabilities = Capabilities(weighted_traffic=True, mirror=True)

    @property
    def state(self) -> dict:
        return ENDPOINTS.setdefault(self.manifest.name, {"slots": {}, "events": []})

    def _event(self, *event: object) -> None:
        self.state["events"].append(event)

    def status(self) -> EndpointStatus:
        if self.target.raise_unexpected:
            raise RuntimeError("a bug in the backend")
        slots = self.state["slots"]
        return EndpointStatus(
            name=self.manifest.name,
            kind=self.kind,
            exists=bool(slots),
            scoring_uri=f"fake://{self.manifest.name}/score" if slots else None,
            slots=[
                SlotStatus(
                    name=name,
                    state=slot["state"],
                    traffic=slot["traffic"],
                    mirror=slot.get("mirror", 0),
                    model_version=slot["model_version"],
                    package_id=slot["package_id"],
                    config_id=slot["config_id"],
                )
                for name, slot in sorted(slots.items())
            ],
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        if slot not in self.state["slots"]:
            raise UsageError(f"no deployment '{slot}'")
        return f"log of {slot}\nlast line of {slot}"

    def credentials(self) -> dict[str, str]:
        return {"primary_key": "fake-primary", "secondary_key": "fake-secondary"}

    def deploy_slot(self, slot, package):  # type: ignore[no-untyped-def]
        slots = self.state["slots"]
        previous = slots.get(slot)
        slots[slot] = {
            "state": "starting",
            "traffic": previous["traffic"] if previous else 0,
            "model_version": package.lock.model_version,
            "package_id": package.package_id,
            "config_id": self.config_id(package),
            "previous": previous,
            "faulty": self.target.wrong_answer or self.target.error_status is not None,
        }
        self._event("deploy", slot)
        self.progress(ProgressEvent(step="deploy", message=f"fake deploy of {slot}"))
        return self.status().slot(slot)

    def wait_healthy(self, slot: str) -> SlotStatus:
        if self.target.fail_health:
            self.state["slots"][slot]["state"] = "unhealthy"
            raise DeploymentFailed(f"deployment '{slot}' failed to start", hint="see the log")
        self.state["slots"][slot]["state"] = "healthy"
        return self.status().slot(slot)

    def finalize_slot(self, slot: str) -> None:
        self.state["slots"][slot]["previous"] = None
        self._event("finalize", slot)

    def discard_slot(self, slot: str) -> None:
        slots = self.state["slots"]
        failed = slots.pop(slot)
        if failed["previous"] is not None:
            restored = failed["previous"]
            restored["traffic"] = failed["traffic"]
            slots[slot] = restored
        self._event("discard", slot)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        from tdsp_deploy.traffic import TrafficSplit, validate

        slots = self.state["slots"]
        if mirror is None:
            mirror = {name: slot.get("mirror", 0) for name, slot in slots.items() if slot.get("mirror")}
        validate(TrafficSplit(traffic, mirror), slots)  # the platform's own rules say no
        for name, slot in slots.items():
            slot["traffic"] = traffic.get(name, 0)
            slot["mirror"] = mirror.get(name, 0)
        self._event("traffic", dict(traffic))

    def delete(self, slot: str | None = None) -> None:
        if not self.state["slots"]:
            raise EndpointNotFound(f"endpoint '{self.manifest.name}' does not exist")
        if slot is None:
            ENDPOINTS.pop(self.manifest.name, None)
            return
        if self.state["slots"][slot]["traffic"]:
            raise UsageError("deployment takes traffic")
        del self.state["slots"][slot]

    @contextlib.contextmanager
    def callers(self, slot: str | None = None) -> Iterator[Iterator]:
        slots = self.state["slots"]
        if slot is not None and slot not in slots:
            raise BackendError(f"no deployment '{slot}'")
        if self.target.interrupt_at == "smoke":
            raise KeyboardInterrupt
        expected_path = self.manifest.smoke_test.expect if self.manifest.smoke_test else None
        expected = json.loads(Path(expected_path).read_text()) if expected_path else {"ok": True}

        def call(body: bytes) -> InvokeResult:
            started = time.perf_counter()
            chosen = slot or max(slots, key=lambda n: slots[n]["traffic"])
            if self.target.delay_ms:
                time.sleep(self.target.delay_ms / 1000)
            faulty = slots[chosen]["faulty"]
            if faulty and self.target.error_status:
                status, answer = self.target.error_status, {"message": "boom"}
            elif faulty:
                status, answer = 200, {"wrong": True}
            else:
                status, answer = 200, expected
            elapsed = (time.perf_counter() - started) * 1000
            return InvokeResult(
                status, json.dumps(answer).encode(), {"azureml-model-deployment": chosen}, elapsed
            )

        def endless() -> Iterator:
            while True:
                yield call

        yield endless()

    def render(self, package, out_dir: Path) -> list[Path]:  # type: ignore[no-untyped-def]
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "fake-plan.json"
        path.write_text(json.dumps({"endpoint": self.manifest.name, "package": package.package_id}))
        return [path]


class NeedsExtraTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["needs-extra"] = "needs-extra"


class NeedsExtraBackend(FakeBackend):
    """A backend whose SDK is not installed: using it must say which extra to install."""

    kind = "needs-extra"
    target_model = NeedsExtraTarget  # type: ignore[assignment]
    extra = "needs-extra"
    requires = ("a_platform_sdk_that_is_not_installed",)


class NoMirrorTarget(FakeTarget):
    kind: Literal["fake-nomirror"] = "fake-nomirror"  # type: ignore[assignment]


class NoMirrorBackend(FakeBackend):
    """A target that splits traffic but cannot mirror it."""

    kind = "fake-nomirror"
    target_model = NoMirrorTarget
    capabilities = Capabilities(weighted_traffic=True)
