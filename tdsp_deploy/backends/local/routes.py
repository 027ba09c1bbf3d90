"""The router's configuration: which slots exist, where they listen, and their traffic.

Written by the CLI (atomically) and read by the router process at start and on SIGHUP.
Kept free of asyncio so that both sides share it.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

# Moved to the core (experiments.py writes with it too); still importable from here.
from tdsp_deploy.json_files import write_json_atomic  # noqa: F401


@dataclasses.dataclass(frozen=True)
class SlotRoute:
    name: str
    port: int
    weight: int  # percent of unpinned traffic
    mirror: int = 0  # percent of live requests copied to this slot (its answers are dropped)
    raw_http: bool = False  # its run() takes the raw request (@rawhttp): the router checks no body
    revision: str = ""  # the slot's revision (r1, r2...): with admin.json's slot key, its secret
    workers: int = 1  # its server's worker processes: how many requests it serves at once


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
    sticky_header: str | None = None  # requests with the same value reach the same slot
    experiment_id: str = ""  # salts the sticky hash, so each experiment reshuffles keys
    request_log: str | None = None  # append-only JSON lines, one per request
    admin_file: str | None = None  # admin.json (0600): the admin key and the slots' key
    max_connections: int = 0  # client connections open at once; 0: as many as file descriptors allow
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its head

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["slots"] = {
            s.name: {
                "port": s.port,
                "weight": s.weight,
                "mirror": s.mirror,
                "raw_http": s.raw_http,
                "revision": s.revision,
                "workers": s.workers,
            }
            for s in self.slots
        }
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RouterConfig:
        slots = tuple(
            SlotRoute(
                name,
                int(s["port"]),
                int(s["weight"]),
                int(s.get("mirror", 0)),
                bool(s.get("raw_http", False)),
                str(s.get("revision", "")),
                max(1, int(s.get("workers", 1))),
            )
            for name, s in sorted(doc.get("slots", {}).items())
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
            sticky_header=doc.get("sticky_header"),
            experiment_id=str(doc.get("experiment_id", "")),
            request_log=doc.get("request_log"),
            admin_file=doc.get("admin_file"),
            max_connections=int(doc.get("max_connections", 0)),
            head_timeout_s=float(doc.get("head_timeout_s", 10.0)),
        )

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> RouterConfig:
        return cls.from_json(json.loads(path.read_text()))


class RouteTable:
    """Chooses a slot for each request: pinned by name, by a sticky key, or by weight.

    Weights are percentages; choosing is a bisect over cumulative weights, so the cost per
    request does not grow with the number of slots. A sticky key is hashed with the
    experiment id into the same [0, total) range, so a key always lands on the same slot
    while the split stays the same, and a new experiment reshuffles keys.
    """

    def __init__(self, slots: tuple[SlotRoute, ...], rng: random.Random | None = None, salt: str = ""):
        self.by_name = {s.name: s for s in slots}
        weighted = [s for s in slots if s.weight > 0]
        self._weighted = self.weighted = weighted
        self._cumulative: list[int] = []
        total = 0
        for s in weighted:
            total += s.weight
            self._cumulative.append(total)
        self._total = total
        self._random = (rng or random.Random()).random
        self._salt = salt.encode()
        self.mirrors = tuple(s for s in slots if s.mirror > 0)

    def choose(
        self, key: bytes | None = None, avoid: frozenset[str] | set[str] = frozenset()
    ) -> SlotRoute | None:
        """A slot by weight (or by the sticky ``key``), leaving out the slots named in ``avoid``
        (draining, or not reachable just now); None when no slot with weight is left."""
        if avoid:
            return self._choose_among([s for s in self._weighted if s.name not in avoid], key)
        if not self._weighted:
            return None
        if len(self._weighted) == 1:
            return self._weighted[0]
        fraction = self._random() if key is None else key_fraction(self._salt, key)
        return self._weighted[bisect.bisect_right(self._cumulative, fraction * self._total)]

    def _choose_among(self, slots: list[SlotRoute], key: bytes | None) -> SlotRoute | None:
        if len(slots) <= 1:
            return slots[0] if slots else None
        total = sum(s.weight for s in slots)
        point = (self._random() if key is None else key_fraction(self._salt, key)) * total
        for slot in slots:
            point -= slot.weight
            if point < 0:
                return slot
        return slots[-1]

    def pinned(self, name: str) -> SlotRoute | None:
        return self.by_name.get(name)

    def mirrored(self) -> list[SlotRoute]:
        """The shadow slots this request is copied to (each by its own percentage)."""
        return [s for s in self.mirrors if self._random() * 100 < s.mirror]


def key_fraction(salt: bytes, key: bytes) -> float:
    """A stable number in [0, 1) for a sticky key."""
    digest = hashlib.blake2b(key, digest_size=8, key=salt[:64]).digest()
    return int.from_bytes(digest, "big") / 2**64
