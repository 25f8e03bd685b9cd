"""``parallel="array"``: a loop's iterations as one job array, the rest of the body at the caller.

Why a separate runner: a cluster job has a fixed set of cores on one node, so a loop whose
iterations need more than one node's worth of time is better sent as many small jobs. The
function body before and after the loop then runs where the decorated function was called (the
laptop or notebook), which only needs to hold the loop's results; every iteration is one call
of a job array on the configured backend, with the decorator's resources each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .execute import Plan, _replay

__all__ = ["ArrayLoopRunner"]


class ArrayLoopRunner:
    """Called by the rewritten function: sends the iterations out with ``submit_map``.

    ``submit_map(func, items)`` runs ``func`` on every item somewhere (a ``ClusterFunction``
    built with the decorator's options) and returns one result or exception per item, in order.
    """

    def __init__(
        self,
        chunk: Callable[..., Any],
        submit_map: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]],
    ) -> None:
        self.chunk = chunk
        self.submit_map = submit_map
        self.last_decision = ""

    def __call__(self, iterable: Iterable[Any], ro: tuple) -> Plan:
        items = list(iterable)
        if len(items) < 2:
            self.last_decision = "sequential (fewer than 2 iterations)"
            return Plan((), items)
        chunk = self.chunk

        def iteration(item: Any) -> list:
            events, exc = chunk([item], ro)
            if exc is not None:
                raise exc
            return events

        outcomes = self.submit_map(iteration, items)
        events: list = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self.last_decision = f"job array ({len(items)} iterations)"
                return Plan(_replay(events, outcome), None)
            events.extend(outcome)
        self.last_decision = f"job array ({len(items)} iterations)"
        return Plan(events, None)
