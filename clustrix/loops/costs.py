"""The cost model: whether the rest of a loop pays on the workers, and its chunk size."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .pools import STARTUP, pool_is_warm

__all__ = ["DISPATCH_COST", "EVENT_COST", "SHIP_COST", "CostModel", "overhead"]

DISPATCH_COST = 0.002  # seconds per chunk round trip, a conservative default
# seconds the caller spends per iteration that ran in a worker: pickling its item, unpickling
# and replaying its events; refined by what each parallel run measures
SHIP_COST = 4e-6
EVENT_COST = 3e-6


@dataclass
class CostModel:
    """Whether the rest of a loop pays on ``workers`` processes, and how to cut it in chunks."""

    workers: int
    threshold: float
    ship: float = SHIP_COST  # caller seconds per iteration sent to a worker and replayed

    def worth(self, remaining: int, per_item: float) -> bool:
        chunks = self.chunks_needed(remaining, per_item)
        saving = remaining * per_item * (1 - 1 / self.workers)
        cost = overhead(self.workers, chunks) + remaining * self.ship
        return saving - cost > self.threshold

    def chunk_size(self, remaining: int, per_item: float) -> int:
        target = max(0.01, min(0.25, remaining * per_item / (self.workers * 8)))
        size = max(1, round(target / max(per_item, 1e-9)))
        return min(size, max(1, math.ceil(remaining / self.workers)))

    def chunks_needed(self, remaining: int, per_item: float) -> int:
        return math.ceil(remaining / self.chunk_size(remaining, per_item))


def overhead(workers: int, chunks: int) -> float:
    """Seconds of starting the workers (unless warm) and sending ``chunks`` chunks to them."""
    startup = 0.0 if pool_is_warm(workers) else STARTUP.get(workers, 0.02 + 0.01 * workers)
    return startup + DISPATCH_COST * chunks / workers
