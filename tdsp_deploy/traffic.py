"""Traffic splits: parsing, the rules every target enforces, and the history `rollback` uses.

The rules are Azure ML's, so that a split valid here is valid there: live weights are whole
percentages adding up to 100 (or all 0); at most one slot is mirrored, with at most 50%; a
mirrored slot takes no live traffic. They are checked before any backend is called.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tdsp_deploy import paths
from tdsp_deploy.errors import UsageError

MAX_MIRROR = 50


@dataclasses.dataclass(frozen=True)
class TrafficSplit:
    live: dict[str, int]
    mirror: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"traffic": dict(self.live), "mirror": dict(self.mirror)}

    def describe(self) -> str:
        live = (
            ", ".join(f"{name}={weight}%" for name, weight in sorted(self.live.items()) if weight) or "none"
        )
        mirror = ", ".join(f"{name}={weight}%" for name, weight in sorted(self.mirror.items()) if weight)
        return live + (f" (mirror {mirror})" if mirror else "")

    def normalized(self, slots: Iterable[str]) -> TrafficSplit:
        """Every known slot named, zeros included, so that two splits compare by value."""
        names = sorted(set(slots) | set(self.live) | set(self.mirror))
        return TrafficSplit(
            {n: self.live.get(n, 0) for n in names}, {n: w for n, w in sorted(self.mirror.items()) if w}
        )


def parse_assignments(items: Iterable[str], *, option: str) -> dict[str, int]:
    """`blue=90 green=10` -> {"blue": 90, "green": 10}."""
    weights: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip().isdigit():
            raise UsageError(f"{option}: '{item}' is not SLOT=PERCENT", hint="e.g. blue=90 green=10")
        if name in weights:
            raise UsageError(f"{option}: '{name}' is given twice")
        weights[name] = int(value)
    return weights


def validate(split: TrafficSplit, slots: Iterable[str]) -> None:
    """Raise UsageError when the split breaks a rule or names a slot that does not exist."""
    known = set(slots)
    unknown = sorted((set(split.live) | set(split.mirror)) - known)
    if unknown:
        raise UsageError(
            f"no deployment named {', '.join(unknown)}",
            hint=f"deployments: {', '.join(sorted(known)) or 'none'}",
        )
    for name, weight in {**split.live, **split.mirror}.items():
        if not 0 <= weight <= 100:
            raise UsageError(f"{name}={weight}: a weight is a percentage from 0 to 100")
    total = sum(split.live.values())
    if total not in (0, 100):
        raise UsageError(
            f"live traffic adds up to {total}%: it must add up to 100 (or 0)",
            hint="give every deployment's share, e.g. blue=90 green=10",
        )
    mirrored = {name: weight for name, weight in split.mirror.items() if weight > 0}
    if len(mirrored) > 1:
        raise UsageError("traffic can be mirrored to one deployment only", hint="as on Azure ML")
    for name, weight in mirrored.items():
        if weight > MAX_MIRROR:
            raise UsageError(
                f"mirror {name}={weight}%: at most {MAX_MIRROR}% of live traffic can be mirrored"
            )
        if split.live.get(name, 0) > 0:
            raise UsageError(
                f"'{name}' takes live traffic and cannot also be mirrored",
                hint=f"give '{name}' 0% live traffic, or mirror another deployment",
            )


class TrafficHistory:
    """Every split an endpoint had, as JSON lines under the state home (per target kind).

    A rollback entry undoes the entry before it; replaying the file as a stack gives the
    current split and the one a rollback returns to.
    """

    def __init__(self, kind: str, endpoint: str, home: Path | None = None):
        self.path = (home or paths.state_home()) / "history" / kind / f"{endpoint}.jsonl"

    def entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def record(self, split: TrafficSplit, reason: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"t": round(time.time(), 3), "reason": reason, **split.to_json()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def stack(self) -> list[dict[str, Any]]:
        stack: list[dict[str, Any]] = []
        for entry in self.entries():
            if entry["reason"] == "rollback":
                if stack:
                    stack.pop()
            else:
                stack.append(entry)
        return stack

    def previous(self) -> TrafficSplit | None:
        """The split before the current one, or None when there is nothing to go back to."""
        stack = self.stack()
        if len(stack) < 2:
            return None
        entry = stack[-2]
        return TrafficSplit(dict(entry["traffic"]), dict(entry.get("mirror", {})))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
