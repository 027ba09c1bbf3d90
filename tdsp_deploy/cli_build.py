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

The commands' behaviour and output do not change; tests compare them with the full build.
"""

from __future__ import annotations

import copy
import os
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
    if name is None or asks_root_help:
        return typer.main.get_command(_listing_only(app))
    commands = [info for info in app.registered_commands if _command_name(info) == name]
    groups = [info for info in app.registered_groups if info.name == name]
    if not commands and not groups:
        return typer.main.get_command(app)  # an unknown command: typer says so, with suggestions
    narrowed = copy.copy(app)
    narrowed.registered_commands = commands
    narrowed.registered_groups = groups
    return typer.main.get_command(narrowed)


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
