"""Not starting cancelled calls: the start gate of a process pool.

A process pool hands up to one call more than it has workers to their queue ahead of time,
and marks those calls running: Future.cancel() cannot take them back, so after a Ctrl-C on a
map (or a cancel, or shutdown(cancel_futures=True)) they would still start as workers free
up. Each submission therefore carries a ticket, a slot in memory shared with the workers: a
worker claims the slot right before it starts the call, unless the caller marked it
cancelled first. Both sides decide under one shared lock, so exactly one of them wins.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from concurrent.futures import CancelledError, Future
from typing import Any

from .. import runner

GATE_WAIT = 5.0  # seconds; longer means a process died holding the lock (the pool is broken)
NO_TICKET = (-1, 0)

_GATE: tuple[Any, Any] | None = None  # in a worker: the pool's (slot states, lock)


def install_gate(states: Any, lock: Any) -> None:
    """In a worker process: the shared slot states and lock of the pool it belongs to."""
    global _GATE
    _GATE = (states, lock)


def gated_batch(
    ticket: tuple[int, int],
    function_bytes: bytes,
    calls_bytes: bytes,
    checkpoints: str | None = None,
) -> Any:
    """In a worker: run the batch, or return None if it was cancelled before starting.

    ``checkpoints``: the calls' checkpoint template (``runner.run_pickled_batch``), or None.
    """
    slot, seq = ticket
    if slot >= 0 and _GATE is not None:
        states, lock = _GATE
        if lock.acquire(timeout=GATE_WAIT):
            try:
                if states[slot] == -seq:
                    return None
                states[slot] = seq
            finally:
                lock.release()
    return runner.run_pickled_batch(function_bytes, calls_bytes, checkpoints)


def batch_data(inner: Future) -> bytes:
    """The result of a gated batch; CancelledError if the gate stopped it."""
    data = inner.result()
    if data is None:
        raise CancelledError()
    return data


class StartGate:
    """The caller's side of the tickets of one process pool."""

    SLOTS = 4096  # submissions beyond this many at once go without a ticket

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self.states = context.RawArray("q", self.SLOTS)  # seq: started; -seq: cancelled
        self.lock = context.Lock()
        self._guard = threading.Lock()
        self._free = list(range(self.SLOTS))
        self._numbers = itertools.count(1)
        self._live: dict[tuple[int, int], Future] = {}

    def ticket(self) -> tuple[int, int]:
        with self._guard:
            return (self._free.pop(), next(self._numbers)) if self._free else NO_TICKET

    def track(self, ticket: tuple[int, int], inner: Future) -> None:
        if ticket == NO_TICKET:
            return
        with self._guard:
            self._live[ticket] = inner
        inner.add_done_callback(lambda _: self.release(ticket))

    def release(self, ticket: tuple[int, int]) -> None:
        if ticket == NO_TICKET:
            return
        with self._guard:
            self._live.pop(ticket, None)
            self._free.append(ticket[0])

    def cancel(self, ticket: tuple[int, int], inner: Future) -> bool:
        """Make sure the submission never starts; False if it already has."""
        if inner.cancel():  # still with the pool, not yet queued for a worker
            return True
        with self._guard:
            if ticket not in self._live:  # no ticket, or finished
                return False
            slot, seq = ticket
            if not self.lock.acquire(timeout=GATE_WAIT):
                return False
            try:
                if self.states[slot] == seq:
                    return False
                self.states[slot] = -seq
                return True
            finally:
                self.lock.release()

    def cancel_all(self) -> None:
        with self._guard:
            live = list(self._live.items())
        for ticket, inner in live:
            self.cancel(ticket, inner)
