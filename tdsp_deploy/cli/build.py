"""Build only the part of the command line that this invocation uses.

typer turns every command into a click command by reading its signature and evaluating its
type hints; for all the commands of the CLI that is a large share of a start-up that should
cost almost nothing (``validate``, ``--help``). So, from the arguments, before parsing:

- a command or group named first (``validate x.yaml``, ``ab status``): only it is built, with
  its parameters, exactly as typer builds it;
- no command (``--help``, ``-h``, ``--version``, nothing): the root's help lists every command
  by name and help text, which is all it shows; each command is built as a stand-in with no
  parameters (same name, help, panel, flags), so the listing is the same;
- anything else (an unknown command, shell completion): the whole CLI, as typer builds it.

When help will be printed, typer's rich formatter is imported without the two renderers it
imports but help in this CLI's markup mode never uses: rich's Markdown (markdown-it) and
Traceback (attrs, pygments). Each stands in until first used, then is the real class.

The commands' behaviour and output do not change; tests compare them with the full build.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import typer
from typer.models import CommandInfo, TyperInfo

HELP_FLAGS = ("--help", "-h")


def click_command(app: typer.Typer, args: Sequence[str], prog_name: str) -> Any:
    """The click command that runs ``args``; see the module's docstring."""
    if _completing(prog_name):
        return typer.main.get_command(app)
    position, name = next(((i, a) for i, a in enumerate(args) if not a.startswith("-")), (len(args), None))
    asks_root_help = any(a in HELP_FLAGS for a in args[:position])
    commands = [info for info in app.registered_commands if _command_name(info) == name]
    groups = [info for info in app.registered_groups if info.name == name]
    bare_group = bool(groups) and all(a.startswith("-") for a in args[position + 1 :])
    if not args or any(a in HELP_FLAGS for a in args) or bare_group:
        import_help_formatter()
    if name is None or asks_root_help:
        return typer.main.get_command(_listing_only(app))
    if not commands and not groups:
        return typer.main.get_command(app)  # an unknown command: typer says so, with suggestions
    narrowed = copy.copy(app)
    narrowed.registered_commands = commands
    narrowed.registered_groups = groups
    return typer.main.get_command(narrowed)


# The renderers typer's help formatter imports by name, and the names it takes from them.
DEFERRED = {"rich.markdown": ("Markdown",), "rich.traceback": ("Traceback",)}


def import_help_formatter() -> None:
    """Import typer's rich help formatter with stand-ins for ``DEFERRED``; if that fails (a
    typer that takes other names from them), import it as it is."""
    if "typer.rich_utils" in sys.modules or any(name in sys.modules for name in DEFERRED):
        return
    stand_ins = {module: _stand_in_module(module, names) for module, names in DEFERRED.items()}
    sys.modules.update(stand_ins)
    try:
        importlib.import_module("typer.rich_utils")
    except ImportError:
        pass  # a failed import leaves nothing behind; the plain import below is the answer
    finally:
        for module_name, module in stand_ins.items():
            if sys.modules.get(module_name) is module:
                del sys.modules[module_name]  # from now on, importing it gives the real module
    importlib.import_module("typer.rich_utils")


class _Deferred(type):
    """A class that is its real counterpart as soon as it is used (called, asked for an
    attribute, or used in isinstance)."""

    _module: str

    def _real(cls) -> type:
        return getattr(importlib.import_module(cls._module), cls.__name__)  # type: ignore[no-any-return]

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        return getattr(cls._real(), name)

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, cls._real())


def _stand_in_module(module_name: str, names: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(module_name)
    for name in names:
        setattr(module, name, _Deferred(name, (), {"_module": module_name}))
    return module


def _completing(prog_name: str) -> bool:
    # click's shell completion asks through this variable; it may list any command
    return f"_{prog_name}_COMPLETE".replace("-", "_").upper() in os.environ


def _command_name(info: CommandInfo) -> str:
    return info.name or typer.main.get_command_name(info.callback.__name__)  # type: ignore[union-attr]


def _listing_only(app: typer.Typer) -> typer.Typer:
    """A copy of ``app`` whose commands (and groups' commands) take no parameters."""
    listing = copy.copy(app)
    listing.registered_commands = [_stand_in(info) for info in app.registered_commands]
    listing.registered_groups = [_group_stand_in(info) for info in app.registered_groups]
    return listing


def _stand_in(info: CommandInfo) -> CommandInfo:
    stand_in = copy.copy(info)
    stand_in.name = _command_name(info)
    stand_in.help = info.help if info.help is not None else _doc(info.callback)
    stand_in.callback = _never_called
    return stand_in


def _group_stand_in(info: TyperInfo) -> TyperInfo:
    stand_in = copy.copy(info)
    if info.typer_instance is not None:
        stand_in.typer_instance = _listing_only(info.typer_instance)
    return stand_in


def _doc(callback: Any) -> str | None:
    import inspect

    return inspect.getdoc(callback)


def _never_called() -> None:  # pragma: no cover - a stand-in only lists a command
    raise RuntimeError("a command stand-in was invoked")
