"""`validate`: the command's work, and its plain form answered without the command-line parser.

``validate MANIFEST`` (with --json, --debug or both) is what editors, CI jobs and pre-commit
hooks run most, and it must start fast: building the command line (typer and click, and
the types typer evaluates) would cost more than the command itself. ``plain_validate``
recognises that form from the arguments alone; any other form (--help, a missing or extra
argument, an unknown option, ``--``) goes to the parser, which answers as it always did.
The answer and the exit code are the same either way: both call ``validate`` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tdsp_deploy.cli.context import Command

SHARED_FLAGS = ("--json", "--debug")


def plain_validate(args: Sequence[str]) -> Path | None:
    """The manifest of ``validate MANIFEST [--json] [--debug]``; None for any other command line."""
    if not args or args[0] != "validate":
        return None
    rest = [a for a in args[1:] if a not in SHARED_FLAGS]
    if len(rest) != 1 or not rest[0] or rest[0].startswith("-"):
        return None
    return Path(rest[0])


def validate(ctx: Command, manifest: Path) -> None:
    """Check a manifest without deploying anything (and without importing your code)."""
    from tdsp_deploy.errors import PluginError
    from tdsp_deploy.manifest import check_manifest

    loaded = ctx.loaded
    warnings = check_manifest(loaded)
    try:
        warnings += ctx.backend().preflight()
        if loaded.manifest.rollout.staged_steps():  # only then is the rollout package worth loading
            from tdsp_deploy.rollout import validation_warnings

            warnings += validation_warnings(loaded.manifest)
    except PluginError as exc:
        warnings.append(f"{exc.message}; {exc.hint}")
    _answer(ctx, manifest, warnings)


def quick_validate(ctx: Command, manifest: Path) -> bool:
    """``validate`` for a manifest of the built-in local target that the quick check vouches for
    (manifest/quick.py): the same checks and answer as ``validate``, without pydantic or the
    backend's package. False, having said nothing, for any other manifest (or any doubt): then
    ``validate`` answers, with the loader's messages and exit codes."""
    from tdsp_deploy import entry_point_cache
    from tdsp_deploy.backends.local_preflight import preflight
    from tdsp_deploy.manifest.checks import check_manifest
    from tdsp_deploy.manifest.quick import quick_load

    try:
        # The registry would make the first `local` on sys.path: it must be the built-in one.
        refs, _ = entry_point_cache.entry_points(
            entry_point_cache.BACKENDS_GROUP, entry_point_cache.START_GROUPS
        )
        local = next((ref for ref in refs if ref.name == "local"), None)
        if local is None or local.value != BUILT_IN_LOCAL:
            return False
        loaded = quick_load(manifest)
        if loaded is None:
            return False
        warnings = check_manifest(loaded) + preflight(loaded.manifest)
    except Exception:  # whatever it is, the full path meets it again and reports it as it always has
        return False
    ctx.loaded = loaded  # type: ignore[misc]  (a cached property, made here)
    ctx.env.add_secrets(loaded.secrets)
    _answer(ctx, manifest, warnings)
    return True


BUILT_IN_LOCAL = "tdsp_deploy.backends.local:LocalBackend"  # as pyproject.toml registers it


def _answer(ctx: Command, manifest: Path, warnings: list[str]) -> None:
    loaded = ctx.loaded

    def human() -> None:
        ctx.warn(warnings)
        ctx.env.say(
            f"{manifest} is valid: endpoint '{loaded.manifest.name}', target {ctx.kind}", style="green"
        )

    ctx.answer(
        {
            "valid": True,
            "manifest": str(manifest),
            "name": loaded.manifest.name,
            "target": ctx.kind,
            "warnings": warnings,
        },
        human,
    )
