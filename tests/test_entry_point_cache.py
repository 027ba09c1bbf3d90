"""The plugin listing is read from the environment once per state of it: a second start reads
the cache (and no distribution's metadata), an installed or removed plugin is seen at once,
and a broken or stale cache falls back to reading the environment."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tdsp_deploy import entry_point_cache
from tdsp_deploy.backends.registry import GROUP, Registry
from tdsp_deploy.errors import PluginError


@pytest.fixture(autouse=True)
def fresh_process_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry_point_cache, "_memo", None)  # each Registry.discover is a new start


def _new_start() -> None:
    entry_point_cache._memo = None


def _plugin(folder: Path, name: str, entry: str, group: str = GROUP) -> Path:
    info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    return info


def _no_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the environment was read although the cache is fresh")

    monkeypatch.setattr(importlib.metadata, "entry_points", refuse)


def test_the_second_start_reads_the_cache_and_finds_the_same_backends(monkeypatch, state_home: Path) -> None:
    first = Registry.discover()
    assert not first.from_cache and {"local", "azureml", "sqlserver", "synapse"} <= set(first.kinds)
    assert list((state_home / "cache").glob("entry-points-*.json"))
    _new_start()
    _no_scan(monkeypatch)
    second = Registry.discover()
    assert second.from_cache
    assert second.entry_points == first.entry_points
    assert second.factory("local").kind == "local"


def test_a_plugin_installed_later_is_seen_by_the_next_start(monkeypatch, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    assert "extra" not in Registry.discover().kinds
    _plugin(site, "extra-target", "extra = fake_backend:FakeBackend")  # the folder's time changes
    _new_start()
    registry = Registry.discover()
    assert not registry.from_cache and "extra" in registry.kinds
    assert registry.factory("extra").kind == "fake"
    _new_start()
    assert Registry.discover().from_cache  # and that listing is kept in turn


@pytest.mark.parametrize("content", [b"", b"not json", b'{"format": 1}', b'{"format": 1, "state": 3}', b"[]"])
def test_a_broken_cache_file_means_reading_the_environment(content: bytes) -> None:
    expected = Registry.discover().entry_points
    for file in entry_point_cache._cache_folder().glob("entry-points-*.json"):
        file.write_bytes(content)
    _new_start()
    registry = Registry.discover()
    assert not registry.from_cache and registry.entry_points == expected


def test_a_stale_entry_that_fails_to_load_is_read_again(tmp_path: Path) -> None:
    # A listing whose state matches but whose content is out of date (an entry point edited
    # in place): the cached `local` points nowhere; loading it rereads and finds the real one.
    Registry.discover()
    (file,) = entry_point_cache._cache_folder().glob("entry-points-*.json")
    listing = json.loads(file.read_text())
    listing["groups"][GROUP] = [
        [n, "no_such_module_anywhere:Gone" if n == "local" else v] for n, v in listing["groups"][GROUP]
    ]
    file.write_text(json.dumps(listing))
    _new_start()
    registry = Registry.discover()
    assert registry.from_cache and registry.entry_points["local"].value == "no_such_module_anywhere:Gone"
    assert registry.factory("local").kind == "local"
    assert not registry.from_cache


def test_the_manifest_rereads_a_stale_entry_too(tmp_path: Path) -> None:
    # The manifest reads the installed local target's schema from the same listing (manifest/
    # installed.py) without the registry: a stale cached entry makes it read the environment.
    from tdsp_deploy.backends.local.target import LocalTarget
    from tdsp_deploy.manifest.installed import target_models

    Registry.discover()
    (file,) = entry_point_cache._cache_folder().glob("entry-points-*.json")
    listing = json.loads(file.read_text())
    listing["groups"][GROUP] = [
        [n, "no_such_module_anywhere:Gone" if n == "local" else v] for n, v in listing["groups"][GROUP]
    ]
    file.write_text(json.dumps(listing))
    _new_start()
    assert target_models(lambda ref: ref.name == "local") == ((LocalTarget,), [])
    _new_start()
    assert Registry.discover().entry_points["local"].value != "no_such_module_anywhere:Gone"


def test_a_plugin_that_is_really_broken_still_says_so(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _plugin(tmp_path, "broken-plugin", "broken = no_such_module_anywhere:Backend")
    Registry.discover()
    _new_start()
    registry = Registry.discover()
    assert registry.from_cache
    with pytest.raises(PluginError, match="failed to load"):
        registry.factory("broken")


def test_an_unwritable_cache_is_no_error(monkeypatch, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("TDSP_DEPLOY_HOME", str(blocked))
    assert "local" in Registry.discover().kinds
    _new_start()
    assert not Registry.discover().from_cache


def test_entry_points_load_like_importlib_metadata() -> None:
    ref = entry_point_cache.PluginRef("x", "tdsp_deploy.backends.registry:Registry.discover [extra]", GROUP)
    assert ref.load() == Registry.discover
    assert entry_point_cache.PluginRef("m", "json", GROUP).load() is json


PROBE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from pydantic.plugin import _loader
    from tdsp_deploy.backends.registry import Registry
    Registry.discover()
    print("PRESET" if _loader._plugins == {} else "LEFT", _loader._plugins)
    """
)


def _probe(site: Path, home: Path) -> str:
    environment = {"TDSP_DEPLOY_HOME": str(home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(site)], capture_output=True, text=True, env=environment, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pydantic_is_spared_its_own_scan_only_when_it_has_no_plugin(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    assert _probe(site, tmp_path / "home").startswith("PRESET")
    (site / "a_pydantic_plugin.py").write_text(
        "class Plugin:\n"
        "    def new_schema_validator(self, *args, **kwargs):\n"
        "        return None, None, None\n"
        "plugin = Plugin()\n"
    )
    _plugin(site, "a-pydantic-plugin", "observe = a_pydantic_plugin:plugin", group="pydantic")
    assert _probe(site, tmp_path / "home").startswith("LEFT None")  # pydantic loads it itself


WARM_START = textwrap.dedent(
    """
    import sys
    from tdsp_deploy.cli import main
    code = main(sys.argv[1:])
    print("CODE", code, "METADATA", "importlib.metadata" in sys.modules, file=sys.stderr)
    from pydantic.plugin._loader import PYDANTIC_ENTRY_POINT_GROUP, _plugins, get_plugins
    print("LOADER", PYDANTIC_ENTRY_POINT_GROUP, _plugins, list(get_plugins()), file=sys.stderr)
    """
)


def test_a_warm_start_spares_pydantic_its_loader_while_it_has_no_plugin(iris: Path, tmp_path: Path) -> None:
    # pydantic's plugin loader imports importlib.metadata (email, zipfile, csv ...) to read
    # every distribution; with the listing cached and no plugin in it, a command runs without it
    environment = {"TDSP_DEPLOY_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}

    def start() -> str:
        done = subprocess.run(
            [sys.executable, "-c", WARM_START, "validate", str(iris)],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
        )
        return done.stderr

    start()  # the cold start reads the environment (and so imports importlib.metadata)
    warm = start()
    assert "CODE 0 METADATA False" in warm, warm
    assert "LOADER pydantic {} []" in warm, warm  # any other name: the real loader, told none


def test_the_start_reads_the_groups_the_registry_reads() -> None:
    from tdsp_deploy.backends.registry import GROUPS

    assert entry_point_cache.START_GROUPS == GROUPS  # one reading of the environment per start
