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

from .checks import check_immutable, check_method
from .iterables import Source, vouched
from .plans import Plan

__all__ = ["ArrayLoopRunner"]


class _ArrayPlan(Plan):
    """Replays the array's iterations in order; stops at the first failing one."""

    def __init__(self, items: list[Any], events: list[list], failure: BaseException | None):
        super().__init__(())
        self.items, self.events, self.failure = items, events, failure
        self.position = 0

    def __next__(self) -> tuple[int, Any]:
        if self.position < len(self.events):
            self.last = self.items[self.position]
            self.rebind = True
            self.position += 1
            return 1, self.events[self.position - 1]
        if self.failure is not None:
            failure, self.failure = self.failure, None
            if isinstance(failure, StopIteration):  # would end the loop: raise it in order
                self.rest = self.items[self.position :]
                raise StopIteration
            raise failure
        raise StopIteration


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

    def combine(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Source:
        return Source(fn, args, kwargs)

    def __call__(self, source: Iterable[Any], ro: tuple = (), targets: tuple = ()) -> Plan:
        obj = source.build() if isinstance(source, Source) else source
        leaves = source.leaves() if isinstance(source, Source) else [obj]
        if not vouched(leaves):
            self.last_decision = "sequential (the iterable is not a list, tuple, range, ...)"
            return Plan(obj)
        items = list(obj)
        if len(items) < 2:
            self.last_decision = "sequential (fewer than 2 iterations)"
            return Plan(items)
        chunk = self.chunk

        # The checks are referenced, not imported inside: the job that runs an iteration
        # learns from the pickle that it needs Clustrix's runtime shipped with it.
        checks = (check_method, check_immutable)

        def iteration(item: Any) -> list:
            out: list[list] = []
            chunk([item], ro, *checks, out)
            return out[0]

        outcomes = self.submit_map(iteration, items)
        events: list[list] = []
        failure: BaseException | None = None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                failure = outcome
                break
            events.append(outcome)
        self.last_decision = f"job array ({len(items)} iterations)"
        return _ArrayPlan(items, events, failure)
