"""Entry points, read once per state of the Python environment instead of on every start.

Finding the entry points of a group means reading the metadata of every installed
distribution; beside the Azure and Spark SDKs that is hundreds of folders, on every command.
pydantic does the same once more, for its own plugins, the first time a model is validated.

The answer is kept in the user's cache folder (``$TDSP_DEPLOY_HOME/cache`` when that is set),
in one file per interpreter and ``sys.path``, together with the modification time of every
``sys.path`` entry. Installing, removing or upgrading a distribution adds or removes entries
in its folder and so changes that folder's time; a cache whose times differ from the current
ones is stale and the environment is read again. A missing, unreadable or malformed cache
file is the same as a stale one, and a cache that cannot be written is not an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

FORMAT = 1
PYDANTIC_GROUP = "pydantic"
PYDANTIC_LOADER = "pydantic.plugin._loader"
# The group where targets register (backends.registry reads it; the manifest reads the target
# schemas from it).
BACKENDS_GROUP = "tdsp_deploy.backends"
# What a start reads in one go: the backends' group (backends.registry.GROUPS is the same) and
# pydantic's, which pydantic would otherwise read itself.
START_GROUPS = (BACKENDS_GROUP, PYDANTIC_GROUP)
CACHE_VARIABLE = "TDSP_DEPLOY_HOME"

# This process's reading: ((groups, state), listing, whether it came from the cache file); a
# process that changes sys.path (or installs something) meanwhile gets a new reading.
_memo: tuple[tuple[tuple[str, ...], dict[str, Any]], dict[str, Any], bool] | None = None


@dataclasses.dataclass(frozen=True)
class PluginRef:
    """An entry point as ``importlib.metadata`` gives it: ``name = module:attribute``."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        """Import the module and return the attribute, as ``EntryPoint.load`` does."""
        target = self.value.split("[", 1)[0].strip()  # `module:attr [extra]`
        module_name, _, attribute = target.partition(":")
        loaded: Any = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            loaded = getattr(loaded, part)
        return loaded


def entry_points(
    group: str, groups: tuple[str, ...], *, refresh: bool = False
) -> tuple[list[PluginRef], bool]:
    """The entry points of ``group`` in ``sys.path`` order, and whether they came from the cache.

    ``groups`` are all the groups worth keeping from one reading of the environment (it must
    include ``group``); ``refresh`` reads the environment whatever the cache says.
    """
    global _memo
    state = _state()
    if refresh or _memo is None or _memo[0] != (groups, state):
        listing = None if refresh else _read(groups, state)
        from_cache = listing is not None
        if listing is None:
            listing = _scan(groups)
            _write(listing)
        _memo = ((groups, state), listing, from_cache)
    _, listing, from_cache = _memo
    return [PluginRef(name, value, group) for name, value in listing["groups"].get(group, [])], from_cache


def skip_pydantic_plugin_scan(groups: tuple[str, ...]) -> None:
    """Tell pydantic that no installed distribution declares a plugin for it, when the cached
    listing (which must include the ``pydantic`` group) says so: pydantic then neither reads
    every distribution's metadata itself nor, when its plugin loader is not imported yet,
    imports ``importlib.metadata`` for it. Its answer would have been the same empty set; with
    a plugin installed, or a pydantic that keeps this elsewhere, nothing changes."""
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") is not None:
        return  # the user chose; pydantic reads that variable itself
    plugins, _ = entry_points(PYDANTIC_GROUP, groups)
    if plugins:
        return
    loader = sys.modules.get(PYDANTIC_LOADER)
    if loader is None:
        sys.modules[PYDANTIC_LOADER] = _no_plugins_loader()
        return
    with contextlib.suppress(Exception):
        if getattr(loader, "_plugins", 0) is None and not getattr(loader, "_loading_plugins", True):
            loader._plugins = {}  # type: ignore[attr-defined]


def _no_plugins_loader() -> types.ModuleType:
    """Stands for pydantic's plugin loader while no plugin is installed: ``get_plugins`` is what
    pydantic asks it for, and the answer is the real loader's, none. Any other name imports the
    real loader (told that there are none) in its place."""
    stand_in = types.ModuleType(PYDANTIC_LOADER)

    def get_plugins(*args: Any, **kwargs: Any) -> tuple[()]:
        return ()

    def real(name: str) -> Any:
        if name.startswith("__"):  # the import system asking what kind of module this is
            raise AttributeError(name)
        if sys.modules.get(PYDANTIC_LOADER) is stand_in:
            del sys.modules[PYDANTIC_LOADER]
        loader = importlib.import_module(PYDANTIC_LOADER)
        if getattr(loader, "_plugins", 0) is None:
            loader._plugins = {}
        return getattr(loader, name)

    stand_in.get_plugins = get_plugins  # type: ignore[attr-defined]
    stand_in._plugins = {}  # type: ignore[attr-defined]  # as the real one holds them once read
    stand_in._loading_plugins = False  # type: ignore[attr-defined]
    stand_in.__getattr__ = real  # type: ignore[attr-defined]
    return stand_in


# -- the cache file ---------------------------------------------------------------------------


def _state() -> dict[str, Any]:
    paths = []
    for entry in sys.path:
        try:
            mtime: int | None = os.stat(entry or ".").st_mtime_ns
        except OSError:
            mtime = None
        paths.append([entry, mtime])
    return {"executable": sys.executable, "version": sys.version, "path": paths}


def _cache_folder() -> Path:
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured).expanduser() / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("tdsp-deploy", appauthor=False))


def _cache_file() -> Path:
    identity = json.dumps([sys.executable, sys.path]).encode()
    return _cache_folder() / f"entry-points-{hashlib.sha256(identity).hexdigest()[:16]}.json"


def _read(groups: tuple[str, ...], state: dict[str, Any]) -> dict[str, Any] | None:
    try:
        listing = json.loads(_cache_file().read_bytes())
        if listing.get("format") != FORMAT or listing.get("state") != state:
            return None
        kept = listing["groups"]
        if not all(
            isinstance(kept.get(g), list)
            and all(isinstance(n, str) and isinstance(v, str) for n, v in kept[g])
            for g in groups
        ):
            return None
        return listing
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _scan(groups: tuple[str, ...]) -> dict[str, Any]:
    import importlib.metadata

    state = _state()  # before reading: a change made meanwhile makes this listing stale
    found = importlib.metadata.entry_points()
    return {
        "format": FORMAT,
        "state": state,
        "groups": {group: [[ep.name, ep.value] for ep in found.select(group=group)] for group in groups},
    }


def _write(listing: dict[str, Any]) -> None:
    file = _cache_file()
    partial = file.with_name(f".{file.name}.{os.getpid()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(listing))
        os.replace(partial, file)  # readers see the old file or the new one, never a part
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
