"""Running the command line: ``main(argv, env)`` runs it in-process and returns the exit code
(tests call it with their own Environment); ``run`` is the console script.

``main`` is the only place that prints errors: every TdspError renders itself (message,
hint, log tail), other exceptions become exit 1 with a one-line message, and a traceback
appears only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any

from tdsp_deploy.cli import context, validation
from tdsp_deploy.errors import ExitCode, TdspError, UsageError
from tdsp_deploy.output import Environment

# The same as build.HELP_FLAGS and the variable build._completing reads; build imports typer.
HELP_FLAGS = ("--help", "-h")
COMPLETE_VARIABLE = "_TDSP_DEPLOY_COMPLETE"


def main(argv: list[str] | None = None, env: Environment | None = None, *, exiting: bool = False) -> int:
    """Run the CLI; return the exit code. ``exiting``: the caller exits with that code (the
    console script), so SIGINT and SIGTERM stay ignored once it is decided, instead of getting
    their handlers back: a late Ctrl-C must not replace it with death by SIGINT."""
    env = env or Environment()
    args = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that even a usage error answers in JSON when asked to.
    env.json_mode = "--json" in args
    env.debug = "--debug" in args
    token = context.bind(env)
    previous_sigterm = _sigterm_interrupts()
    held: dict[int, Any] = {}
    try:
        if args and not any(a in HELP_FLAGS for a in args):
            # typer parses options with pydantic, before any command reads the plugin listing
            from tdsp_deploy.entry_point_cache import START_GROUPS, skip_pydantic_plugin_scan

            skip_pydantic_plugin_scan(START_GROUPS)
        manifest = validation.plain_validate(args)
        # the parser would call the same function with the same values (unless the shell asks
        # it for completions, which it answers whatever the arguments)
        if manifest is not None and COMPLETE_VARIABLE not in os.environ:
            command = context.Command.start(manifest, env.json_mode, env.debug)
            if not validation.quick_validate(command, manifest):
                validation.validate(command, manifest)
            return 0
        return _parsed(args, env)
    except TdspError as exc:
        if exc.exit_code == ExitCode.INTERRUPTED:  # a second Ctrl-C must not cut the message
            held = _hold_interrupts()
        return _render_error(env, exc)
    except KeyboardInterrupt:
        held = _hold_interrupts()
        return _render_error(env, _interrupted())
    except Exception as exc:  # the last line of defence: no traceback unless asked
        if env.debug:
            import traceback  # here: on every start it would cost more than validate's own work

            env.write_error_text(traceback.format_exc())
        error = TdspError(
            f"unexpected error: {type(exc).__name__}: {exc}",
            hint="rerun with --debug for the traceback, and report it if it looks like a bug",
        )
        return _render_error(env, error)
    finally:
        if exiting:
            _hold_interrupts()
            held, previous_sigterm = {}, None
        context.unbind(token)
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _parsed(args: list[str], env: Environment) -> int:
    """The command line parsed and run by typer (only the part of it ``args`` use)."""
    import typer

    from tdsp_deploy.cli import build
    from tdsp_deploy.cli.commands import app

    try:
        command = build.click_command(app, args, "tdsp-deploy")
        with _streams(env):
            result = command.main(args=args, prog_name="tdsp-deploy", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:  # click's word for an interrupt
        raise KeyboardInterrupt from None
    except typer.TyperException as exc:  # the command line itself is wrong
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tdsp-deploy`: help was the answer
            env.write_data(exc.format_message())
            return 0
        error = UsageError(
            exc.format_message(), hint="see `tdsp-deploy --help` or `tdsp-deploy COMMAND --help`"
        )
        return _render_error(env, error)


def _sigterm_interrupts() -> Any:
    """SIGTERM (a CI job cancelled, `kill`) gets the same care as Ctrl-C: a push in progress
    rolls back and the command exits 130. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _hold_interrupts() -> dict[int, Any]:
    """While an interrupted command says so and exits 130, further Ctrl-C or SIGTERM (the
    second of two Ctrl-C, a CI cancellation's SIGTERM after its SIGINT) are ignored: one landing
    there used to escape as a KeyboardInterrupt and end the process by SIGINT instead of 130.
    Returns the handlers to put back (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}


def _streams(env: Environment) -> contextlib.AbstractContextManager[object]:
    """Help and parser messages are printed by typer to sys.stdout/stderr: send them to the
    environment's streams (a no-op for the real console)."""
    stack = contextlib.ExitStack()
    if env.stdout is not sys.stdout:
        stack.enter_context(contextlib.redirect_stdout(env.stdout))
    if env.stderr is not sys.stderr:
        stack.enter_context(contextlib.redirect_stderr(env.stderr))
    return stack


def _interrupted() -> TdspError:
    from tdsp_deploy.errors import Interrupted

    return Interrupted("interrupted")


def _render_error(env: Environment, error: TdspError) -> int:
    if env.debug and error.__cause__ is not None:
        import traceback

        env.write_error_text("".join(traceback.format_exception(error)))
    if env.json_mode:
        env.emit_json(error.to_json())
    else:
        from tdsp_deploy import render_text

        render_text.error(env, error)
    return int(error.exit_code)


def run() -> None:
    """The console script."""
    try:
        code = main(exiting=True)
    except KeyboardInterrupt:  # one that landed in main()'s last statements
        _hold_interrupts()
        code = int(ExitCode.INTERRUPTED)
    sys.exit(code)
