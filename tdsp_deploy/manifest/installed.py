"""The installed targets' schemas, read from the entry-point group where targets register.

The manifest needs a target's schema (its ``target_model``), never a backend: a manifest
loaded without schemas handed in is validated with the installed local target's, and the
published reference documents the built-in targets'. Both are read here, through the group
and cache the registry reads, so the manifest names no backend module; making backends stays
the registry's job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tdsp_deploy import entry_point_cache
from tdsp_deploy.entry_point_cache import BACKENDS_GROUP, START_GROUPS, PluginRef


def target_models(
    wanted: Callable[[PluginRef], bool], *, refresh: bool = False
) -> tuple[tuple[Any, ...], list[str]]:
    """The schemas of the registered targets that ``wanted`` accepts, in kind order, and why
    each of the others it accepts could not be loaded."""
    listed, from_cache = entry_point_cache.entry_points(BACKENDS_GROUP, START_GROUPS, refresh=refresh)
    refs: dict[str, PluginRef] = {}
    for ref in listed:
        refs.setdefault(ref.name, ref)  # first on sys.path wins, as in the registry
    models: list[Any] = []
    failures: list[str] = []
    for kind, ref in sorted(refs.items()):
        if not wanted(ref):
            continue
        try:
            models.append(ref.load().target_model)
        except Exception as exc:  # a plugin's import error must not take the caller down
            if from_cache:  # the cached listing may be stale: read the environment again
                return target_models(wanted, refresh=True)
            failures.append(f"the backend for target kind '{kind}' ({ref.value}) failed to load: {exc}")
    return tuple(models), failures
