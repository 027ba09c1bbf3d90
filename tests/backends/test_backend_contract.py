"""The backend contract: one factory the registry calls with a test's seams, one capability
value the pipeline and the CLI read instead of probing the backend object."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fake_backend
import pytest

from tdsp_deploy.backends.base import Backend, Capabilities, SlotCounters
from tdsp_deploy.backends.registry import Registry
from tdsp_deploy.backends.synapse.storage import FolderStore
from tdsp_deploy.errors import BackendError, ExitCode
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.pipeline import _allow_forced
from tdsp_deploy.status_view import EndpointWatcher
from tests.fakes.fake_backend_project import make_project as make_fake_project
from tests.fakes.synapse_spark_project import STORAGE, load
from tests.fakes.synapse_spark_project import make_project as make_spark_project


@pytest.fixture(autouse=True)
def fresh_fake_state():  # type: ignore[no-untyped-def]
    fake_backend.ENDPOINTS.clear()
    yield
    fake_backend.ENDPOINTS.clear()


def test_the_registry_makes_the_backend_with_the_seams_a_test_hands_in(tmp_path: Path) -> None:
    registry = Registry.discover()
    store = FolderStore(STORAGE, tmp_path / "container")
    spark = registry.make_backend(load(make_spark_project(tmp_path / "p")).manifest, store=store)
    # the mode's backend itself, not a wrapper forwarding to it
    assert type(spark).__name__ == "SparkBackend"
    assert spark.store is store  # type: ignore[attr-defined]
    assert spark.capabilities == Capabilities(weighted_traffic=True, batch_jobs=True)

    local = make_fake_project(tmp_path / "local", target={"kind": "local"})
    backend = registry.make_backend(load_manifest(local).manifest, home=tmp_path / "home")
    assert backend.files.root == tmp_path / "home" / "endpoints" / "fakey"  # type: ignore[attr-defined]


def test_every_built_in_target_declares_its_capabilities() -> None:
    registry = Registry.discover()
    declared = {
        kind: registry.factory(kind).capabilities  # type: ignore[union-attr]
        for kind in ("local", "azureml", "sqlserver")
    }
    assert declared == {
        "local": Capabilities(weighted_traffic=True, mirror=True, metrics=True),
        "azureml": Capabilities(weighted_traffic=True, mirror=True),
        "sqlserver": Capabilities(weighted_traffic=True, forceable_preflight=True),
    }


class Forceable(fake_backend.FakeBackend):
    capabilities = Capabilities(weighted_traffic=True, forceable_preflight=True)


def manifest(name: str = "fakey") -> Any:
    return SimpleNamespace(name=name, target=fake_backend.FakeTarget())


def test_force_reaches_only_a_backend_whose_preflight_may_be_forced() -> None:
    plain = fake_backend.FakeBackend(manifest())
    assert _allow_forced(plain) == "--force has no effect on the fake target"
    assert plain.force is False
    forceable = Forceable(manifest())
    assert _allow_forced(forceable) == "--force: pre-flight refusals become warnings"
    assert forceable.force is True


class Counting(fake_backend.FakeBackend):
    """A target whose front end counts requests; ``answer`` is what it reports (or raises)."""

    capabilities = Capabilities(weighted_traffic=True, metrics=True)
    answer: Any = None

    def live_counters(self, status: Any) -> dict[str, SlotCounters]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def deployed(name: str = "fakey") -> None:
    fake_backend.ENDPOINTS[name] = {
        "slots": {
            "blue": {
                "state": "healthy",
                "traffic": 100,
                "model_version": "1",
                "package_id": "p",
                "config_id": "c",
            }
        },
        "events": [],
    }


def test_status_asks_the_backend_for_its_counters() -> None:
    deployed()
    counting = Counting(manifest())
    counting.answer = {"blue": SlotCounters(requests=10, errors=1, buckets=((0.005, 9), (float("inf"), 10)))}
    watcher = EndpointWatcher(counting)
    first = watcher.snapshot()
    assert first.rates["blue"]["requests"] == 10 and first.rates["blue"]["errors"] == 1
    counting.answer = {"blue": SlotCounters(requests=14, errors=1, buckets=((0.005, 13), (float("inf"), 14)))}
    second = watcher.snapshot()
    assert second.rates["blue"]["requests"] == 14
    assert second.rates["blue"]["error_rate"] == 0.0  # no error among the 4 since the first look

    counting.answer = BackendError("the front end does not answer now")
    assert EndpointWatcher(counting).snapshot().rates == {}  # no rates, and no error either


def test_a_target_without_counters_is_not_asked_for_them() -> None:
    deployed()

    class Silent(fake_backend.FakeBackend):
        def live_counters(self, status: Any) -> dict[str, SlotCounters]:
            raise AssertionError("a target without capabilities.metrics was asked for counters")

    snapshot = EndpointWatcher(Silent(manifest())).snapshot()
    assert snapshot.rates == {} and snapshot.status.exists


def test_the_base_refuses_what_a_target_has_not_declared() -> None:
    from tdsp_deploy.errors import UsageError

    plain: Backend = fake_backend.FakeBackend(manifest())
    assert plain.capabilities.batch_jobs is False
    with pytest.raises(UsageError, match="runs no batch jobs"):
        plain.run_job()
    with pytest.raises(UsageError, match="no live request counters"):
        plain.live_counters(plain.status())


def test_run_on_a_target_without_batch_jobs_is_a_usage_error(cli: Any, tmp_path: Path) -> None:
    project = make_fake_project(tmp_path)
    result = cli("run", project, "--json")
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert "`run` is for batch targets; the fake target serves requests" in result.stdout


def test_an_entry_point_names_a_backend_class_or_a_target_plugin() -> None:
    from tdsp_deploy.backends.base import TargetPlugin
    from tdsp_deploy.backends.registry import GROUP
    from tdsp_deploy.entry_point_cache import PluginRef
    from tdsp_deploy.errors import PluginError

    registry = Registry(
        {
            "synapse": PluginRef("synapse", "tdsp_deploy.backends.synapse:plugin", GROUP),
            "fake": PluginRef("fake", "fake_backend:FakeBackend", GROUP),
            "odd": PluginRef("odd", "tdsp_deploy.backends.base:Capabilities", GROUP),
        }
    )
    assert isinstance(registry.factory("synapse"), TargetPlugin)
    assert registry.factory("fake") is fake_backend.FakeBackend
    with pytest.raises(PluginError, match="is not a tdsp_deploy Backend class"):
        registry.factory("odd")
