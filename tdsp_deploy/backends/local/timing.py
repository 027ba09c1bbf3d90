"""Where the router's time goes, request by request: cheap enough to stay on.

Every request answered by a slot is stamped with ``time.perf_counter()`` at six points, and
the gaps between them are summed per phase:

- parse: from the request's first byte handed to the parser to its last (the head, the
  credential check and the body as far as it had arrived);
- queue: from there to the moment its task runs (pipelined requests wait here for the ones
  before them);
- pick: choosing the slot and checking the body;
- connect: taking a kept-alive connection from the slot's pool (or opening one) and writing
  the request on it;
- slot: from the request written to the slot's whole answer read (a streamed answer: its head);
- relay: from the answer read to the answer written to the client.

``accept`` is counted per client connection: from the connection's accept to its first
request's first byte (mostly the client's own time to send). Connections to the slots are
counted as opened or reused, so a pool that keeps failing to reuse shows.

Eight clock reads and six additions per request: cheap enough to stay on (the router's
instructions per request, counted with callgrind, are in BENCHMARKS.md). The totals are
served at ``GET /-/timing`` (the admin key); a reader takes the difference of two readings
around the load it measures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tdsp_deploy.backends.local.request import Request
    from tdsp_deploy.backends.local.upstream import UpstreamAnswer

PHASES = ("parse", "queue", "pick", "connect", "slot", "relay")


class RouterTiming:
    """Running totals of the router's per-request phases."""

    __slots__ = (
        "requests",
        "sums",
        "slowest",
        "accepted",
        "accept_sum",
        "accept_max",
        "opened",
        "reused",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.sums = [0.0] * len(PHASES)
        self.slowest = 0.0  # the longest a request spent from its first byte to its answer written
        self.accepted = 0
        self.accept_sum = 0.0
        self.accept_max = 0.0
        self.opened = 0  # connections to a slot opened for a request
        self.reused = 0  # requests sent on a kept-alive connection

    def first_byte(self, seconds: float) -> None:
        """A client connection's first request began ``seconds`` after the connection was accepted."""
        self.accepted += 1
        self.accept_sum += seconds
        if seconds > self.accept_max:
            self.accept_max = seconds

    def add(self, request: Request, answer: UpstreamAnswer, written: float) -> None:
        """One request a slot answered: the request's stamps (http1.Request), the answer's (sent,
        answered, on a new connection or not), and when the answer was written."""
        # Written out rather than looped: this runs on every request.
        self.requests += 1
        if answer.fresh:
            self.opened += 1
        else:
            self.reused += 1
        begun, parsed, picked = request.begun, request.started, request.picked
        sent, answered = answer.sent, answer.answered
        sums = self.sums
        sums[0] += parsed - begun
        sums[1] += request.served - parsed
        sums[2] += picked - request.served
        sums[3] += sent - picked
        sums[4] += answered - sent
        sums[5] += written - answered
        slowest = written - begun
        if slowest > self.slowest:
            self.slowest = slowest

    def document(self) -> dict[str, Any]:
        """The totals so far: sums in milliseconds, means and the slowest accept in microseconds."""
        count = self.requests or 1
        return {
            "requests": self.requests,
            "phases": {
                name: {
                    "total_ms": round(self.sums[i] * 1e3, 3),
                    "mean_us": round(self.sums[i] / count * 1e6, 2),
                }
                for i, name in enumerate(PHASES)
            },
            "accept": {
                "connections": self.accepted,
                "total_ms": round(self.accept_sum * 1e3, 3),
                "max_us": round(self.accept_max * 1e6, 1),
            },
            "slot_connections": {"opened": self.opened, "reused": self.reused},
            "slowest_request_ms": round(self.slowest * 1e3, 3),
        }


def difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What happened between two readings of ``GET /-/timing``: per phase, the requests' total
    and mean (the slowest request is since the router started, so it is left out)."""
    requests = after["requests"] - before["requests"]
    phases = {}
    for name in PHASES:
        total_ms = after["phases"][name]["total_ms"] - before["phases"][name]["total_ms"]
        phases[name] = {
            "total_ms": round(total_ms, 3),
            "mean_us": round(total_ms / requests * 1e3, 2) if requests else None,
        }
    opened = after["slot_connections"]["opened"] - before["slot_connections"]["opened"]
    reused = after["slot_connections"]["reused"] - before["slot_connections"]["reused"]
    inside = sum(p["mean_us"] or 0.0 for name, p in phases.items() if name != "slot")
    return {
        "requests": requests,
        "phases": phases,
        "router_us_per_request": round(inside, 2) if requests else None,
        "slot_connections": {"opened": opened, "reused": reused},
    }
