"""The future returned by ``f.submit`` on every backend.

It *is* a ``concurrent.futures.Future``, so ``wait``, ``as_completed``, ``add_done_callback``
and ``result(timeout)`` behave exactly as users know them. What it adds: the name of the call,
the backend that runs it, how many attempts it took, and cancellation that reaches the work
itself rather than only the local bookkeeping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from .errors import ClustrixError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One run of a job that requeues itself (``@cluster(requeue=N)``).

    ``started`` and ``ended`` are epoch seconds (``ended`` None while it runs); ``reason`` says
    how it ended (``clustrix.requeue``'s words: requeued itself, stopped by the scheduler,
    finished...); ``scheduler_id`` is the scheduler's id of the job that ran it.
    """

    number: int
    host: str
    scheduler_id: str
    started: float
    ended: float | None
    reason: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Attempt:
        """An attempt from its ``attempts-<task>.json`` entry."""
        return cls(
            number=int(record.get("attempt", 0)),
            host=str(record.get("host", "")),
            scheduler_id=str(record.get("scheduler_id", "")),
            started=float(record.get("started", 0.0)),
            ended=None if record.get("ended") is None else float(record["ended"]),
            reason=str(record.get("reason", "")),
        )


class ClusterFuture(Future):
    """A ``Future`` whose ``cancel()`` also cancels the job behind it."""

    def __init__(self, name: str, backend: str) -> None:
        super().__init__()
        self.name = name
        self.backend = backend
        #: Runs of the call so far: resubmissions (``retries``) and requeues count.
        self.attempts = 1
        #: For a job that requeues itself: each run, in order (``Attempt``).
        self.attempt_history: list[Attempt] = []
        #: Clustrix's id of a remote job, the scheduler's id, and the job's folder there.
        self.job_id: str | None = None
        self.scheduler_id: str | None = None
        self.remote_folder: str | None = None
        #: For remote jobs: the array task running the call, the call's place in that
        #: task's batch, and the tracked job (what a pipeline needs to wait on the call).
        self.task_index: int | None = None
        self.position = 0
        self.job: Any = None
        #: For remote jobs: which environment ran the call and whether it had to be built.
        self.environment: Any = None
        self._cancel_job: Callable[[], bool] | None = None
        self._read_log: Callable[[str], str] | None = None
        self._before_result: list[Callable[[Any], Any]] | None = []
        self._hooks_lock = threading.Lock()

    def before_result(self, hook: Callable[[Any], Any]) -> None:
        """Call ``hook(value)`` when the call succeeds, before anyone waiting sees the value.

        A done callback runs only after ``result()`` has returned to waiting threads; the
        result cache stores values here instead, so a call made as soon as this one returned
        finds its value. A call that already succeeded (a short one, finished while its
        submission went on) gets the hook at once, here. A hook must not raise; nothing it
        raises reaches the future.
        """
        with self._hooks_lock:
            if self._before_result is not None:
                self._before_result.append(hook)
                return
        # Its value is being set, or was: wait for it (failures run no hook).
        if not self.cancelled() and self.exception() is None:
            self._run_hooks([hook], self.result())

    def set_result(self, result: Any) -> None:
        with self._hooks_lock:
            hooks, self._before_result = self._before_result or [], None
        self._run_hooks(hooks, result)
        super().set_result(result)

    def _run_hooks(self, hooks: list[Callable[[Any], Any]], result: Any) -> None:
        for hook in hooks:
            try:
                hook(result)
            except Exception:
                logger.exception("a result hook of %s failed", self.name)

    def bind_cancel(self, cancel_job: Callable[[], bool]) -> None:
        """Set how to cancel the underlying work; it returns False once that is too late."""
        self._cancel_job = cancel_job

    def bind_logs(self, read_log: Callable[[str], str]) -> None:
        """Set how to read the job's ``"stdout"`` or ``"stderr"``."""
        self._read_log = read_log

    def stdout(self) -> str:
        """What the job printed to stdout so far (all of it once it finished)."""
        return self._log("stdout")

    def stderr(self) -> str:
        """What the job printed to stderr so far (all of it once it finished)."""
        return self._log("stderr")

    def _log(self, stream: str) -> str:
        if self._read_log is None:
            raise ClustrixError(
                f"{self.name} ran on {self.backend}: local calls print to this process's own "
                f"{stream}, which Clustrix does not capture"
            )
        return self._read_log(stream)

    def cancel(self) -> bool:
        """Cancel the work itself (the job, or a call not started); False once too late.

        A plain ``Future`` could only forget the result; a job left running would keep
        using the allocation.
        """
        if self.done():
            return self.cancelled()
        if self._cancel_job is not None and not self._cancel_job():
            return False
        # Cancelling the work may already have settled this future as cancelled.
        return mark_cancelled(self) or self.cancelled()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<ClusterFuture {self.name} on {self.backend}: {state}>"


def mark_cancelled(future: Future) -> bool:
    """Cancel the future itself (not the work), and wake ``wait``/``as_completed`` callers.

    A plain ``Future.cancel`` leaves the state at CANCELLED, which ``wait`` does not count
    as done until an executor acknowledges it; no executor will, so acknowledge it here.
    """
    if not Future.cancel(future):
        return False
    # Acknowledge only once: a second acknowledgement logs a critical error. The state name
    # has been part of CPython's Future since 3.2.
    if getattr(future, "_state", None) == "CANCELLED":
        future.set_running_or_notify_cancel()
    return True


def add_note(exc: BaseException, note: str) -> None:
    """Attach context to an exception without changing its type (PEP 678 where available)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)


def settle(future: Future, ok: bool, value: Any) -> bool:
    """Finish ``future`` with a value (``ok``) or an exception, unless it is already done
    (cancelled meanwhile, say); whether this call finished it. The one way Clustrix
    settles a future."""
    if future.done():
        return False
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:  # finished by another thread between the check and here
        return False
    return True


def chain(inner: Future, future: ClusterFuture) -> None:
    """Settle ``future`` as ``inner`` ends (a plain future of a thread or process pool), and
    let cancelling ``future`` cancel ``inner``."""
    future.bind_cancel(inner.cancel)

    def transfer(done: Future) -> None:
        if done.cancelled() or isinstance(done.exception(), CancelledError):
            mark_cancelled(future)
        elif done.exception() is not None:
            settle(future, False, done.exception())
        else:
            settle(future, True, done.result())

    inner.add_done_callback(transfer)


def resolved(name: str, backend: str, outcome: tuple[bool, Any]) -> ClusterFuture:
    """A future that is already finished, for work that ran synchronously."""
    future = ClusterFuture(name, backend)
    settle(future, *outcome)
    return future
