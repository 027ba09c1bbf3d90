"""What a command starts from: its Environment, and the manifest, registry and backend it works
on, each made once per invocation and only when the command first asks for it.

``main`` binds the invocation's Environment; a command is handed its Command, started by
``options.with_context`` from its MANIFEST, --json and --debug, and answers with ``answer``,
which is the one place that chooses between the JSON document and the human lines.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.errors import EndpointNotFound

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend, EndpointStatus, Progress
    from tdsp_deploy.backends.registry import Registry
    from tdsp_deploy.manifest import LoadedManifest
    from tdsp_deploy.output import Environment

_ENV: contextvars.ContextVar[Environment] = contextvars.ContextVar("tdsp_deploy_env")

# A command's human answer: one line, several, or a function that writes it or returns the lines.
Human = str | Iterable[str] | Callable[[], Iterable[str] | None] | None


def bind(env: Environment) -> contextvars.Token[Environment]:
    """Make ``env`` the Environment of the commands run until ``unbind``."""
    return _ENV.set(env)


def unbind(token: contextvars.Token[Environment]) -> None:
    _ENV.reset(token)


def environment(json_out: bool = False, debug: bool = False) -> Environment:
    """The invocation's Environment, with the command's --json and --debug taken into it."""
    env = _ENV.get()
    env.json_mode = env.json_mode or json_out
    env.debug = env.debug or debug
    return env


class Command:
    """One command's environment and, made on first use, its manifest, registry and backend."""

    def __init__(self, env: Environment, manifest: Path | None = None):
        self.env = env
        self.manifest_path = manifest

    @classmethod
    def start(cls, manifest: Path | None, json_out: bool, debug: bool) -> Command:
        return cls(environment(json_out, debug), manifest)

    @functools.cached_property
    def registry(self) -> Registry:
        """The installed backends, discovered once (from the entry-point cache)."""
        from tdsp_deploy.backends.registry import Registry

        return Registry.discover()

    @functools.cached_property
    def loaded(self) -> LoadedManifest:
        """The command's manifest, read and validated once."""
        if self.manifest_path is None:
            raise AssertionError("this command names no manifest")
        return self.load(self.manifest_path)

    def load(self, path: Path, environ: Mapping[str, str] | None = None) -> LoadedManifest:
        """Read and validate a manifest with the schema of the target kind it names; from
        then on, nothing printed shows the secrets it took from the environment."""
        from tdsp_deploy.manifest import load_manifest

        def target_models(kind: str | None) -> Any:
            # Only the backend of the kind the loader found is imported (None: the manifest
            # does not say plainly, and all are, so that the loader's error can list them).
            models, warnings = self.registry.target_models(only=kind)
            self.warn(warnings)
            return models

        loaded = load_manifest(path, targets=target_models, environ=environ)
        self.env.add_secrets(loaded.secrets)
        return loaded

    def checked(self) -> LoadedManifest:
        """The manifest, with the checks that need no backend run and their warnings said."""
        from tdsp_deploy.manifest import check_manifest

        loaded = self.loaded
        self.warn(check_manifest(loaded))
        return loaded

    @property
    def kind(self) -> str:
        return self.loaded.manifest.target.kind  # type: ignore[attr-defined,no-any-return]

    def backend(self, progress: Progress | None = None) -> Backend:
        """A backend for the manifest, reporting to ``progress``; PluginError when it cannot be
        used here."""
        from tdsp_deploy.backends.base import no_progress

        return self.registry.make_backend(self.loaded.manifest, progress or no_progress)

    def deployed(self) -> tuple[Backend, EndpointStatus]:
        """The backend and the endpoint's status; EndpointNotFound when it is not deployed."""
        backend = self.backend()
        return backend, existing(backend.status(), self.manifest_path)

    def warn(self, warnings: Iterable[str]) -> None:
        for warning in warnings:
            self.env.say(f"warning: {warning}", style="yellow")

    def answer(self, document: Any, human: Human = None) -> None:
        """``document`` on stdout with --json; otherwise the human answer."""
        if self.env.json_mode:
            self.env.emit_json(document)
            return
        lines = human() if callable(human) else human
        for line in [lines] if isinstance(lines, str) else lines or ():
            self.env.say(line)


def existing(current: EndpointStatus, manifest: Path | None) -> EndpointStatus:
    """``current``, or EndpointNotFound when the endpoint is not deployed."""
    if not current.exists:
        raise EndpointNotFound(
            f"endpoint '{current.name}' is not deployed on the {current.kind} target",
            hint=f"deploy it with `tdsp-deploy push {manifest}`",
        )
    return current
