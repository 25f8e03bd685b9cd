"""Running calls on this machine: worker processes, threads, or inline.

Processes are the default because they use every core and a crash in user code (``os._exit``,
a segfault) cannot take the caller down. Threads are chosen automatically when the call cannot
be pickled (a lock, an open connection...), and inline execution runs in the caller's thread so
that breakpoints work. Many small calls are batched so that the per-task cost of a process pool
is paid once per batch rather than once per call.

Every process started here ends with the process that started it, however that one ends
(``SIGKILL`` and ``os._exit`` included; see ``lifetime``), and a call that was cancelled
before it started never starts, even if the pool had already queued it for a worker (see
``gate``).

Checkpoints (``clustrix.checkpoint``): a call run here has the checkpoint place its caller
gives (the local backend gives every call one, see ``checkpoints``); without one, as for a
bare ``LocalExecutor`` or a decorated call nested in another call, ``checkpoint`` does
nothing and ``restore`` returns its default. A call's checkpoint is removed when it
succeeds; a failed call's is kept, so that running it again at the same place resumes.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..checkpointing import call_places, remove_succeeded
from ..errors import ConfigError
from ..futures import ClusterFuture, add_note, chain, mark_cancelled, resolved, settle
from ..payload import (
    CallArgs,
    batch_outcomes,
    function_name,
    is_picklable_call,
    pickle_calls,
    pickle_function,
)
from .checkpoints import as_template, batch_template
from .deadline import WHERE, expire_after, submit_with_deadline
from .gate import batch_data
from .kinds import KINDS
from .pools import WorkerPools
from .worker import capture, capture_at, capture_in_batch, in_local_worker, in_worker, run_at

__all__ = [
    "KINDS",
    "LocalExecutor",
    "auto_chunksize",
    "available_cores",
    "in_local_worker",
    "in_worker",
]

logger = logging.getLogger("clustrix.local")


def available_cores() -> int:
    """Cores this process may use (respects CPU affinity, as a scheduler's cgroup sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def auto_chunksize(items: int, workers: int) -> int:
    """About four batches per worker: few round trips for tiny calls, balance for big ones."""
    return max(1, math.ceil(items / (workers * 4)))


def _positive_int(name: str, value: Any) -> None:
    """Raise ``ConfigError`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{name}={value!r} is not valid: expected an integer >= 1", field=name, value=value
        )


class LocalExecutor:
    """Runs functions on this machine's cores; usable on its own as a context manager.

    ``kind`` is ``"auto"`` (processes, or threads when a call cannot be pickled),
    ``"processes"``, ``"threads"`` or ``"inline"``. ``max_workers`` defaults to the cores
    available to this process. Calls have no checkpoint place unless one is given
    (``submit_call``'s ``checkpoint``, ``map``'s and ``run_calls``' ``checkpoints``).
    """

    def __init__(self, max_workers: int | None = None, kind: str = "auto") -> None:
        if kind not in KINDS:
            raise ConfigError(
                f"executor={kind!r} is not valid: expected one of {', '.join(KINDS)}",
                field="executor",
                value=kind,
            )
        if max_workers is not None:
            _positive_int("max_workers", max_workers)
        self.max_workers = max_workers or available_cores()
        self.kind = kind
        self._pools = WorkerPools(self.max_workers)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the worker pools; they start again on the next call if there is one.

        ``cancel_futures`` cancels every call not started yet, including those the process
        pool had already queued for a worker.
        """
        self._pools.shutdown(wait=wait, cancel_futures=cancel_futures)

    def worker_pool(self) -> ProcessPoolExecutor:
        """The worker processes themselves, for code that schedules its own work on them
        (parallel loops), so that one set of workers serves every kind of local call."""
        return self._pools.process_pool()

    def started_pool(self) -> ProcessPoolExecutor | None:
        """The process pool if it was started, without starting it."""
        return self._pools.started_process_pool()

    def discard_pool(self, pool: ProcessPoolExecutor) -> None:
        """Stop handing out ``pool`` (it broke); the next use starts a new one."""
        self._pools.discard(pool)

    # ------------------------------------------------------------------ choosing

    def choose_kind(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> str:
        """Resolve ``auto`` for one call, logging why at debug level."""
        if self.kind in ("auto", "processes") and multiprocessing.current_process().daemon:
            logger.debug(
                "running %s in a thread: this process is a daemonic worker (of a "
                "multiprocessing.Pool, say), which may not start processes",
                function_name(func),
            )
            return "threads"
        if self.kind != "auto":
            return self.kind
        reason = is_picklable_call(func, args, kwargs)
        if reason is not None:
            logger.debug("running %s in a thread: %s", function_name(func), reason)
            return "threads"
        logger.debug("running %s in a worker process", function_name(func))
        return "processes"

    # ------------------------------------------------------------------ single calls

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ClusterFuture:
        """Start ``func(*args, **kwargs)``, as ``concurrent.futures`` executors do."""
        return self.submit_call(func, args, kwargs)

    def submit_call(
        self,
        func: Callable[..., Any],
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        checkpoint: str | None = None,
    ) -> ClusterFuture:
        """Start one call; with ``timeout`` (seconds) it runs in a process of its own that
        can be killed. ``checkpoint`` is the call's checkpoint file (None: it has none);
        give the same one to each run of a call, so that a run resumes where the last
        stopped. It is removed when the call succeeds, kept when it fails."""
        kwargs = kwargs or {}
        kind = self.choose_kind(func, args, kwargs)
        name = function_name(func)
        if kind == "inline":
            return resolved(name, "local:inline", capture_at(func, args, kwargs, checkpoint))
        if kind == "threads":
            future = ClusterFuture(name, "local:threads")
            threads = self._pools.thread_pool()
            chain(threads.submit(run_at, func, args, kwargs, checkpoint), future)
            if timeout is not None:
                expire_after(future, timeout, "a thread cannot be stopped; it may still be running")
            return future
        function_bytes = pickle_function(func)
        calls_bytes = pickle_calls(func, [(args, kwargs)])
        template = None if checkpoint is None else as_template(checkpoint)
        if timeout is not None:
            return submit_with_deadline(func, function_bytes, calls_bytes, timeout, template)
        future = ClusterFuture(name, "local:processes")
        pool, inner, cancel = self._pools.submit_batch(function_bytes, calls_bytes, template)
        future.bind_cancel(cancel)
        inner.add_done_callback(lambda done: self._settle_single(done, future, pool, func))
        return future

    def _settle_single(
        self,
        inner: Future,
        future: ClusterFuture,
        pool: ProcessPoolExecutor,
        func: Callable[..., Any],
    ) -> None:
        if inner.cancelled() or (inner.exception() is None and inner.result() is None):
            mark_cancelled(future)  # cancelled with the pool, or stopped at its gate
            return
        try:
            (outcome,) = batch_outcomes(inner.result(), where=WHERE, func=func)
        except BrokenProcessPool:
            outcome = (False, self._pools.crash_error(pool, future.name))
        settle(future, *outcome)

    # ------------------------------------------------------------------ many calls

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        return_exceptions: bool = False,
        checkpoints: str | None = None,
    ) -> list[Any]:
        """``[func(*items) for items in zip(*iterables)]`` in parallel, results in input order.

        ``checkpoints``: see ``run_calls``.
        """
        calls: list[CallArgs] = [(tuple(items), {}) for items in zip(*iterables, strict=False)]
        return self.run_calls(
            func,
            calls,
            chunksize=chunksize,
            return_exceptions=return_exceptions,
            checkpoints=checkpoints,
        )

    def run_calls(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        *,
        chunksize: int | None = None,
        return_exceptions: bool = False,
        checkpoints: str | None = None,
    ) -> list[Any]:
        """Run many argument sets of one function; results (or exceptions) in input order.

        ``checkpoints``: a folder for the calls' checkpoints (made when a call first
        checkpoints; ``checkpoints.batch_template`` names them), or None for none. The
        checkpoints of the calls that succeed are removed, those of failed calls kept.
        """
        if not calls:
            return []
        if chunksize is not None:
            _positive_int("chunksize", chunksize)
        first_args, first_kwargs = calls[0]
        kind = self.choose_kind(func, first_args, first_kwargs)
        if kind == "processes":
            size = chunksize or auto_chunksize(len(calls), self.max_workers)
            outcomes = self._run_batches(func, calls, size, return_exceptions, checkpoints)
        elif kind == "threads":
            template = None if checkpoints is None else batch_template(checkpoints, 0)
            threads = self._pools.thread_pool()
            inner = [
                threads.submit(capture_in_batch, func, a, k, template, item)
                for item, (a, k) in enumerate(calls)
            ]
            outcomes = _gather(inner, return_exceptions)
            if template is not None:
                remove_succeeded(template, (ok for ok, _ in outcomes))
        else:
            outcomes = self._run_inline(func, calls, return_exceptions, checkpoints)
        return _unwrap_outcomes(outcomes, return_exceptions)

    def _run_inline(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        return_exceptions: bool,
        checkpoints: str | None,
    ) -> list[tuple[bool, Any]]:
        """The calls one after another in this thread, as one batch (``run_calls``)."""
        template = None if checkpoints is None else batch_template(checkpoints, 0)
        outcomes: list[tuple[bool, Any]] = []
        with call_places(template) as places:
            for args, kwargs in places.each(calls):
                outcomes.append(capture(func, args, kwargs))
                if not outcomes[-1][0] and not return_exceptions:
                    break
        if template is not None:
            remove_succeeded(template, (ok for ok, _ in outcomes))
        return outcomes

    def _run_batches(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        chunksize: int,
        return_exceptions: bool,
        checkpoints: str | None = None,
    ) -> list[tuple[bool, Any]]:
        function_bytes = pickle_function(func)
        starts = range(0, len(calls), chunksize)
        batches = [calls[start : start + chunksize] for start in starts]
        submitted: list[tuple[ProcessPoolExecutor, Future, Callable[[], bool]]] = []
        outcomes: list[tuple[bool, Any]] = []
        try:
            for start, batch in zip(starts, batches, strict=True):
                calls_bytes = pickle_calls(func, batch)
                template = None if checkpoints is None else batch_template(checkpoints, start)
                submitted.append(self._pools.submit_batch(function_bytes, calls_bytes, template))
            for batch, (pool, done, _) in zip(batches, submitted, strict=True):
                try:
                    batch_results = batch_outcomes(batch_data(done), where=WHERE, func=func)
                except BrokenProcessPool:
                    crash = self._pools.crash_error(pool, function_name(func))
                    outcomes.extend((False, crash) for _ in batch)
                    if not return_exceptions:
                        return outcomes
                    continue
                for outcome in batch_results:
                    outcomes.append(outcome)
                    if not outcome[0] and not return_exceptions:
                        return outcomes
            return outcomes
        finally:
            # After a failure or an interrupt (Ctrl-C), no batch that has not started starts.
            for _, _, cancel in submitted:
                cancel()


def _gather(inner: list[Future], return_exceptions: bool) -> list[tuple[bool, Any]]:
    outcomes = []
    try:
        for done in inner:
            outcomes.append(done.result())
            if not outcomes[-1][0] and not return_exceptions:
                break
    finally:
        for pending in inner:
            pending.cancel()
    return outcomes


def _unwrap_outcomes(outcomes: list[tuple[bool, Any]], return_exceptions: bool) -> list[Any]:
    results = []
    for index, (ok, value) in enumerate(outcomes):
        if not ok and not return_exceptions:
            add_note(value, f"(raised by item {index} of the map)")
            raise value
        results.append(value)
    return results
