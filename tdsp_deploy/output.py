"""Where the CLI writes, and how.

One ``Environment`` object (after HTTPie's) carries the streams, whether they are terminals,
and the user's choices (``--json``, ``--debug``, ``NO_COLOR``). Commands render through it;
tests hand in their own to run the real CLI in-process.

- ``--json``: exactly one JSON document on stdout, nothing else there.
- Human output: data the user asked for (a response, a schema, keys) on stdout; tables,
  messages and progress on stderr.
- No colour and no spinner when stderr is not a terminal or NO_COLOR is set.
- Nothing written shows a secret: once a manifest is loaded, the values it took from the
  environment (``secrets``) are replaced by a marker in every message, document and error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from tdsp_deploy.secrets import NO_SECRETS, SecretValues

if TYPE_CHECKING:  # not at run time: every command starts here, and the backends import pydantic
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
    secrets: SecretValues = NO_SECRETS

    def add_secrets(self, secrets: SecretValues) -> None:
        self.secrets = self.secrets.union(secrets)

    def redact(self, text: str) -> str:
        return self.secrets.text(text)

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
            file=_Redacting(self.stderr, self.secrets) if self.secrets else self.stderr,
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
        if self.secrets:  # strings are redacted, not the JSON text: it stays valid JSON
            document = self.secrets.data(json.loads(json.dumps(document, default=str)))
        self.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        self.stdout.flush()

    def write_data(self, text: str) -> None:
        """Data the user asked for, to stdout (pipeable)."""
        text = self.redact(text)
        self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def say(self, message: str, *, style: str | None = None) -> None:
        """A human message, to stderr."""
        message = self.redact(message)
        if self.colors and style:
            self.console().print(message, style=style, markup=False)
        else:
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def write_error_text(self, text: str) -> None:
        """Text for stderr that did not come from us (a traceback with --debug), redacted."""
        self.stderr.write(self.redact(text))
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
        text = self.env.redact(f"{event.step}: {event.message}")
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


class _Redacting:
    """A text stream that takes secrets out of what rich writes to it (a table, a status)."""

    def __init__(self, stream: IO[str], secrets: SecretValues):
        self._stream = stream
        self._secrets = secrets

    def write(self, text: str) -> int:
        return self._stream.write(self._secrets.text(text))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the stream's
        return getattr(self._stream, name)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
