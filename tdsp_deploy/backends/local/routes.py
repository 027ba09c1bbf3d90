"""The router's configuration: which slots exist, where they listen, and their traffic.

Written by the CLI (atomically) and read by the router process at start and on SIGHUP.
Kept free of asyncio so that both sides share it.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class SlotRoute:
    name: str
    port: int
    weight: int  # percent of unpinned traffic


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    endpoint: str
    host: str
    port: int
    keys_file: str
    slots: tuple[SlotRoute, ...] = ()
    generation: int = 0
    request_timeout_s: float = 60.0
    max_request_bytes: int = 100 * 1024 * 1024

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["slots"] = {s.name: {"port": s.port, "weight": s.weight} for s in self.slots}
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RouterConfig:
        slots = tuple(
            SlotRoute(name, int(s["port"]), int(s["weight"])) for name, s in sorted(doc.get("slots", {}).items())
        )
        return cls(
            endpoint=doc["endpoint"],
            host=doc["host"],
            port=int(doc["port"]),
            keys_file=doc["keys_file"],
            slots=slots,
            generation=int(doc.get("generation", 0)),
            request_timeout_s=float(doc.get("request_timeout_s", 60.0)),
            max_request_bytes=int(doc.get("max_request_bytes", 100 * 1024 * 1024)),
        )

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> RouterConfig:
        return cls.from_json(json.loads(path.read_text()))


class RouteTable:
    """Chooses a slot for each request: pinned by name, or by weight.

    Weights are percentages; choosing is a bisect over cumulative weights, so the cost per
    request does not grow with the number of slots.
    """

    def __init__(self, slots: tuple[SlotRoute, ...], rng: random.Random | None = None):
        self.by_name = {s.name: s for s in slots}
        weighted = [s for s in slots if s.weight > 0]
        self._weighted = weighted
        self._cumulative: list[int] = []
        total = 0
        for s in weighted:
            total += s.weight
            self._cumulative.append(total)
        self._total = total
        self._random = (rng or random.Random()).random

    def choose(self) -> SlotRoute | None:
        if not self._weighted:
            return None
        if len(self._weighted) == 1:
            return self._weighted[0]
        point = self._random() * self._total
        return self._weighted[bisect.bisect_right(self._cumulative, point)]

    def pinned(self, name: str) -> SlotRoute | None:
        return self.by_name.get(name)


def write_json_atomic(path: Path, doc: Any, *, mode: int = 0o644) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
