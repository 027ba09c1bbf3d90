"""Finds backends through the entry-point group ``tdsp_deploy.backends``, and makes them.

An entry point names a Backend class or a ``TargetPlugin``; either way the registry builds a
backend through its one factory, ``make_backend(manifest, progress, **seams)``, so a test
hands its fakes (client, connection, store, home) to the registry like any command would.

Built-in targets register there too (pyproject.toml), so a third-party backend takes exactly
the path ours do. A backend module is imported only when a command needs its kind; its
platform SDK only when it acts. A plugin that fails to import is reported as a warning and
the other targets keep working; using it is an error with exit code 7.

The group is read through ``entry_point_cache`` (kept per state of the environment), so a
start does not read every installed distribution's metadata; a plugin that fails to load from
a cached listing makes the registry read the environment again before it gives up.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tdsp_deploy import entry_point_cache
from tdsp_deploy.backends.base import (
    Backend,
    BackendFactory,
    Importer,
    Progress,
    TargetPlugin,
    check_requirements,
    no_progress,
)
from tdsp_deploy.entry_point_cache import PluginRef
from tdsp_deploy.errors import PluginError

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase

__all__ = ["GROUP", "Registry", "check_requirements"]

GROUP = entry_point_cache.BACKENDS_GROUP
# Read together: ours, and pydantic's plugins (which pydantic would otherwise look for itself).
GROUPS = entry_point_cache.START_GROUPS


@dataclasses.dataclass
class Registry:
    entry_points: dict[str, PluginRef]
    loaded: dict[str, BackendFactory] = dataclasses.field(default_factory=dict)
    from_cache: bool = False

    @classmethod
    def discover(cls, *, refresh: bool = False) -> Registry:
        refs, from_cache = entry_point_cache.entry_points(GROUP, GROUPS, refresh=refresh)
        entry_point_cache.skip_pydantic_plugin_scan(GROUPS)
        found: dict[str, PluginRef] = {}
        for entry_point in refs:
            found.setdefault(entry_point.name, entry_point)  # first on sys.path wins
        return cls(found, from_cache=from_cache)

    def _reread(self) -> bool:
        """After an entry point from a cached listing failed to load: read the environment
        again (the listing may be stale). False when the listing was fresh already."""
        if not self.from_cache:
            return False
        fresh = Registry.discover(refresh=True)
        self.entry_points, self.from_cache = fresh.entry_points, False
        return True

    @property
    def kinds(self) -> list[str]:
        return sorted(self.entry_points)

    def factory(self, kind: str) -> BackendFactory:
        """What makes backends of ``kind``, imported now; PluginError when it cannot be used."""
        if kind in self.loaded:
            return self.loaded[kind]
        entry_point = self.entry_points.get(kind)
        if entry_point is None:
            raise PluginError(
                f"no backend for target kind '{kind}'; installed: {', '.join(self.kinds) or 'none'}",
                hint="install the package that provides it"
                f" (for built-ins: pip install 'tdsp-deploy[{kind}]')",
            )
        try:
            backend = entry_point.load()
        except Exception as exc:  # a plugin's import error must not take the CLI down
            if self._reread() and self.entry_points.get(kind) != entry_point:
                return self.factory(kind)  # the cached listing was stale
            raise PluginError(
                f"the backend for target kind '{kind}' ({entry_point.value}) failed to load: {exc}",
                hint=f"reinstall it, e.g. pip install 'tdsp-deploy[{kind}]'",
            ) from exc
        if not (
            isinstance(backend, type) and issubclass(backend, Backend) or isinstance(backend, TargetPlugin)
        ):
            raise PluginError(
                f"entry point '{kind}' ({entry_point.value}) is not a tdsp_deploy Backend class"
            )
        self.loaded[kind] = backend
        return backend

    def importer(self, kind: str) -> Importer:
        """`tdsp-deploy import` from the ``kind`` platform's own files; PluginError when the
        target has none."""
        importer = self.factory(kind).importer
        if importer is None:
            raise PluginError(f"the {kind} target imports no files of its platform")
        return importer

    def make_backend(self, manifest: ManifestBase, progress: Progress = no_progress, **seams: Any) -> Backend:
        """The backend for the manifest's target, its SDK checked first; ``seams`` go to the
        backend's factory (a test's fake client, connection, store or home)."""
        factory = self.factory(manifest.target.kind)  # type: ignore[attr-defined]
        check_requirements(factory)
        return factory.make_backend(manifest, progress, **seams)

    def target_models(self, only: str | None = None) -> tuple[tuple[type[BaseModel], ...], list[str]]:
        """The loadable target schemas (for the manifest union), and warnings for broken plugins.

        With ``only`` (a kind that is installed), just that one is loaded: every backend module
        loaded costs start-up time, and a manifest names one target. Otherwise all are, so
        that an unknown kind's error can list the installed ones."""
        models: list[type[BaseModel]] = []
        warnings: list[str] = []
        for kind in [only] if only in self.entry_points else self.kinds:
            try:
                models.append(self.factory(kind).target_model)
            except PluginError as exc:
                warnings.append(f"{exc.message} (other targets keep working)")
        return tuple(models), warnings
