"""Where the CLI writes, and how.

One ``Environment`` object (after HTTPie's) carries the streams, whether they are terminals,
and the user's choices (``--json``, ``--debug``, ``NO_COLOR``). Commands render through it;
tests hand in their own to run the real CLI in-process.

- ``--json``: exactly one JSON document on stdout, nothing else there.
- Human output: data the user asked for (a response, a schema, keys) on stdout; tables,
  messages and progress on stderr.
- No colour and no spinner when stderr is not a terminal or NO_COLOR is set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from tdsp_deploy.backends.base import ProgressEvent


@dataclasses.dataclass
class Environment:
    stdout: IO[str] = dataclasses.field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = dataclasses.field(default_factory=lambda: sys.stderr)
    stdin_isatty: bool = dataclasses.field(default_factory=lambda: _isatty(sys.stdin))
    stderr_isatty: bool = dataclasses.field(default_factory=lambda: _isatty(sys.stderr))
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)
    json_mode: bool = False
    debug: bool = False

    @property
    def colors(self) -> bool:
        return self.stderr_isatty and "NO_COLOR" not in self.environ and self.environ.get("TERM") != "dumb"

    @property
    def interactive(self) -> bool:
        """May we ask the user a question? Never when stdin is not a terminal."""
        return self.stdin_isatty and not self.json_mode

    def console(self) -> Any:
        from rich.console import Console

        return Console(
            file=self.stderr,
            force_terminal=self.colors,
            no_color=not self.colors,
            highlight=False,
            soft_wrap=True,
            emoji=False,
            # off a terminal (CI logs) there is no width to measure: do not squeeze tables to 80
            width=None if self.stderr_isatty else 120,
        )

    # -- writing ---------------------------------------------------------------------------
    def emit_json(self, document: Any) -> None:
        self.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        self.stdout.flush()

    def write_data(self, text: str) -> None:
        """Data the user asked for, to stdout (pipeable)."""
        self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def say(self, message: str, *, style: str | None = None) -> None:
        """A human message, to stderr."""
        if self.colors and style:
            self.console().print(message, style=style, markup=False)
        else:
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def progress(self) -> ProgressDisplay:
        return ProgressDisplay(self)


class ProgressDisplay:
    """Renders backend progress events: a live spinner line on a terminal, plain lines
    elsewhere (CI logs), each step's message once rather than every tick."""

    def __init__(self, env: Environment):
        self.env = env
        self._status: Any = None
        self._last: tuple[str, str] | None = None
        self._last_tick = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.env.colors and not self.env.json_mode:
            self._status = self.env.console().status("")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: ProgressEvent) -> None:
        text = f"{event.step}: {event.message}"
        if event.done is not None and event.total:
            text += f" ({event.done}/{event.total})"
        if event.elapsed is not None and event.timeout:
            text += f" ({event.elapsed:.0f}s of {event.timeout:.0f}s)"
        if self._status is not None:
            self._status.update(text)
            key = (event.step, event.message)
            if key != self._last and event.done is None and event.elapsed is None:
                self.env.console().print(f"  {text}", markup=False, highlight=False)
            self._last = key
            return
        # Plain output: one line per new message; repeated ticks at most every 5 s.
        key = (event.step, event.message)
        now = time.monotonic()
        if key == self._last and now - self._last_tick < 5.0:
            return
        self._last = key
        self._last_tick = now
        self.env.stderr.write(f"  {text}\n")
        self.env.stderr.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
