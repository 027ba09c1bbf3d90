"""One error tree for everything the user can see.

Each error knows its exit code (``ExitCode``, as the README lists them), carries a hint that
says how to fix the problem, and renders itself for humans and for ``--json``. The CLI's top
level is the only place that prints them; nothing below it catches and prints.
"""

from __future__ import annotations

import enum
from typing import Any


class ExitCode(enum.IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2  # bad command line or bad manifest
    BACKEND = 3  # backend, auth or connection
    DEPLOYMENT_FAILED = 4  # deployment failed or timed out
    SMOKE_FAILED = 5  # smoke test answers wrong
    LATENCY_MISSED = 6  # latency or error-rate objective missed
    PLUGIN = 7  # backend plugin missing or broken
    AB_INCONCLUSIVE = 8
    ROLLED_BACK = 9
    INTERRUPTED = 130


class TdspError(Exception):
    """Base of every error a user may see."""

    exit_code: ExitCode = ExitCode.UNEXPECTED
    kind: str = "error"

    def __init_subclass__(cls, *, exit_code: ExitCode | None = None, kind: str | None = None, **kw: Any):
        # an error class names its exit code and kind in its header; the others inherit them
        super().__init_subclass__(**kw)
        if exit_code is not None:
            cls.exit_code = exit_code
        if kind is not None:
            cls.kind = kind

    def __init__(self, message: str, *, hint: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or {}

    def format_message(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "error": self.kind,
            "message": self.format_message(),
            "exit_code": int(self.exit_code),
        }
        if self.hint:
            doc["hint"] = self.hint
        if self.details:
            doc["details"] = self.details
        return doc


class UsageError(TdspError, exit_code=ExitCode.USAGE, kind="usage"): ...


class ManifestError(TdspError):
    """A manifest that cannot be used. ``problems`` holds one line per finding."""

    exit_code = ExitCode.USAGE
    kind = "manifest"

    def __init__(self, problems: list[ManifestProblem] | str, *, hint: str | None = None):
        if isinstance(problems, str):
            problems = [ManifestProblem(file=None, line=None, field=None, message=problems)]
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems), hint=hint)

    def to_json(self) -> dict[str, Any]:
        doc = super().to_json()
        doc["problems"] = [p.to_json() for p in self.problems]
        return doc


class ManifestProblem:
    """One finding in a manifest: ``deploy.yaml:14: target.port: must be >= 1``."""

    def __init__(self, file: str | None, line: int | None, field: str | None, message: str):
        self.file = file
        self.line = line
        self.field = field
        self.message = message

    def render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}

    def __repr__(self) -> str:
        return f"ManifestProblem({self.render()!r})"


class BackendError(TdspError, exit_code=ExitCode.BACKEND, kind="backend"):
    """The platform refused, could not be reached, or said something we cannot use."""


class EndpointNotFound(BackendError, kind="not_found"): ...


class DeploymentFailed(TdspError, exit_code=ExitCode.DEPLOYMENT_FAILED, kind="deployment_failed"): ...


class DeploymentTimeout(DeploymentFailed, kind="deployment_timeout"): ...


class SmokeFailed(TdspError, exit_code=ExitCode.SMOKE_FAILED, kind="smoke_failed"): ...


class LatencyObjectiveMissed(
    TdspError, exit_code=ExitCode.LATENCY_MISSED, kind="latency_objective_missed"
): ...


class PluginError(TdspError, exit_code=ExitCode.PLUGIN, kind="plugin"): ...


class Interrupted(TdspError, exit_code=ExitCode.INTERRUPTED, kind="interrupted"): ...
