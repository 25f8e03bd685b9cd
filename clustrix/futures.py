"""The future returned by ``f.submit`` on every backend.

It *is* a ``concurrent.futures.Future``, so ``wait``, ``as_completed``, ``add_done_callback``
and ``result(timeout)`` behave exactly as users know them. What it adds: the name of the call,
the backend that runs it, how many attempts it took, and cancellation that reaches the work
itself rather than only the local bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class ClusterFuture(Future):
    """A ``Future`` whose ``cancel()`` also cancels the job behind it."""

    def __init__(self, name: str, backend: str) -> None:
        super().__init__()
        self.name = name
        self.backend = backend
        self.attempts = 1
        self._cancel_job: Callable[[], bool] | None = None

    def bind_cancel(self, cancel_job: Callable[[], bool]) -> None:
        """Set how to cancel the underlying work; it returns False once that is too late."""
        self._cancel_job = cancel_job

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if self._cancel_job is not None and not self._cancel_job():
            return False
        return super().cancel()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<ClusterFuture {self.name} on {self.backend}: {state}>"


def add_note(exc: BaseException, note: str) -> None:
    """Attach context to an exception without changing its type (PEP 678 where available)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)


def resolved(name: str, backend: str, outcome: tuple[bool, Any]) -> ClusterFuture:
    """A future that is already finished, for work that ran synchronously."""
    future = ClusterFuture(name, backend)
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
    return future
