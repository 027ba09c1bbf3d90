"""Which slot a weighted request goes to: the traffic split kept, no request waiting behind a
busy slot while another has a worker free.

A random draw by weight (what a sticky key still gets, see routes.py) sends, now and then,
several requests in a row to one slot while the other idles: a 50/50 split between two
one-worker slots served 0.61-0.76 of what one slot alone did. Here each slot holds a credit:
every weighted request adds each candidate's share (its weight over the candidates' total)
to its credit, and the slot chosen gives one back, so the credits always sum to zero and a
slot's credit is how many requests it is owed (positive) or has had beyond its share
(negative). The request goes to the slot with the fewest requests in flight per worker
among those owed no less than ``-SLACK``; on a tie, the slot the previous request went to
(its processes are running and its caches warm: at concurrency 1 a split that sent every other
request to a slot idle since the one before served 0.61-0.82 of one slot), then the most owed.
So:

- with every slot idle (concurrency 1), a slot takes a short run of requests (about
  ``4 * (SLACK + 1)`` at 50/50), then the most owed: the split is kept within a few requests;
- under load, a request goes to a slot with a worker free (or the shortest queue) before
  one whose workers are busy;
- whatever the load, no slot ever has more than ``SLACK + 1`` requests beyond its share, so a
  90/10 canary gets 10% of the requests, not the half that queue lengths alone would give it.

Kept free of asyncio and of the pools: the caller says how loaded each slot is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tdsp_deploy.backends.local.routes import SlotRoute

# How many requests past its share a slot may take to spare a request a busy slot's queue.
SLACK = 3.0


class Balancer:
    """Credits per slot name; ``pick`` chooses and books one request."""

    def __init__(self) -> None:
        self.credit: dict[str, float] = {}
        self.last = ""  # the slot the previous request went to

    def pick(self, slots: Sequence[SlotRoute], in_flight: Callable[[SlotRoute], int]) -> SlotRoute:
        """One of ``slots`` (weight > 0, at least one) for the next request."""
        if len(slots) == 1:
            return slots[0]
        credit = self.credit
        total = sum(s.weight for s in slots)
        best: SlotRoute | None = None
        best_key: tuple[float, bool, float] = (0.0, False, 0.0)
        for slot in slots:
            owed = credit.get(slot.name, 0.0) + slot.weight / total
            credit[slot.name] = owed
            if owed < -SLACK:
                continue
            key = ((in_flight(slot) + 1) / max(slot.workers, 1), slot.name != self.last, -owed)
            if best is None or key < best_key:
                best, best_key = slot, key
        if best is None:  # not reachable while the credits sum to zero; kept for safety
            best = max(slots, key=lambda s: credit[s.name])
        credit[best.name] -= 1.0
        self.last = best.name
        return best

    def forget_others(self, names: set[str]) -> None:
        """Drop the credits of slots no longer in the routes (a new split starts even)."""
        for name in list(self.credit):
            if name not in names:
                del self.credit[name]
