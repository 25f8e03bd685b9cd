"""Running calls on this machine: worker processes, threads, or inline.

Processes are the default because they use every core and a crash in user code (``os._exit``,
a segfault) cannot take the caller down. Threads are chosen automatically when the call cannot
be pickled (a lock, an open connection...), and inline execution runs in the caller's thread so
that breakpoints work. Many small calls are batched so that the per-task cost of a process pool
is paid once per batch rather than once per call.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .. import runner
from ..errors import ConfigError, JobTimeoutError, WorkerCrashedError
from ..futures import ClusterFuture, add_note, mark_cancelled, resolved
from ..payload import (
    CallArgs,
    batch_outcomes,
    function_name,
    is_picklable_call,
    pickle_calls,
    pickle_function,
)

logger = logging.getLogger("clustrix.local")

KINDS = ("auto", "processes", "threads", "inline")
_IN_WORKER_ENV = "CLUSTRIX_IN_JOB"
_thread_state = threading.local()
_WHERE = "a local worker process"


def in_worker() -> bool:
    """True inside a call Clustrix is running, where nested decorated calls run inline."""
    return bool(os.environ.get(_IN_WORKER_ENV)) or getattr(_thread_state, "depth", 0) > 0


def in_local_worker() -> bool:
    """True inside a local pool's worker or thread, whose cores the pool already uses.

    Unlike ``in_worker()``, False at the top of a cluster job: that process owns the cores
    the scheduler gave it, so it may spread a loop over them.
    """
    return os.environ.get(_IN_WORKER_ENV) == "local" or getattr(_thread_state, "depth", 0) > 0


def _mark_process_worker() -> None:
    os.environ[_IN_WORKER_ENV] = "local"
    # Ctrl-C in a terminal and a notebook's "interrupt kernel" signal the whole process group.
    # The caller decides what an interrupt means; a worker that died of it would break the
    # pool for every later call. A handler (unlike SIG_IGN) is not inherited across exec, so
    # programs a call starts still get the default behaviour.
    signal.signal(signal.SIGINT, _ignore_signal)


def _ignore_signal(signum: int, frame: Any) -> None:
    pass


def available_cores() -> int:
    """Cores this process may use (respects CPU affinity, as a scheduler's cgroup sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def auto_chunksize(items: int, workers: int) -> int:
    """About four batches per worker: few round trips for tiny calls, balance for big ones."""
    return max(1, math.ceil(items / (workers * 4)))


def _process_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and never re-imports the user's __main__ module;
    # the calls themselves travel with cloudpickle, so nothing relies on inherited state.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _run_inline(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    _thread_state.depth = getattr(_thread_state, "depth", 0) + 1
    try:
        return func(*args, **kwargs)
    finally:
        _thread_state.depth -= 1


def _child_main(connection: Any, function_bytes: bytes, calls_bytes: bytes) -> None:
    _mark_process_worker()
    connection.send_bytes(runner.run_pickled_batch(function_bytes, calls_bytes))
    connection.close()


class LocalExecutor:
    """Runs functions on this machine's cores; usable on its own as a context manager.

    ``kind`` is ``"auto"`` (processes, or threads when a call cannot be pickled),
    ``"processes"``, ``"threads"`` or ``"inline"``. ``max_workers`` defaults to the cores
    available to this process.
    """

    def __init__(self, max_workers: int | None = None, kind: str = "auto") -> None:
        if kind not in KINDS:
            raise ConfigError(
                f"executor={kind!r} is not valid: expected one of {', '.join(KINDS)}",
                field="executor",
                value=kind,
            )
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigError(
                f"max_workers={max_workers!r} is not valid: expected an integer >= 1",
                field="max_workers",
                value=max_workers,
            )
        self.max_workers = max_workers or available_cores()
        self.kind = kind
        self._lock = threading.Lock()
        self._processes: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None
        # Worker Process objects of each pool, kept to read exit codes after a crash (the pool
        # forgets them when it breaks).
        self._workers: weakref.WeakKeyDictionary[
            ProcessPoolExecutor, list[multiprocessing.process.BaseProcess]
        ] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the worker pools; they start again on the next call if there is one."""
        with self._lock:
            pools = [p for p in (self._processes, self._threads) if p is not None]
            self._processes = self._threads = None
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _process_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._processes is None:
                self._processes = ProcessPoolExecutor(
                    self.max_workers,
                    mp_context=_process_context(),
                    initializer=_mark_process_worker,
                )
            return self._processes

    def worker_pool(self) -> ProcessPoolExecutor:
        """The worker processes themselves, for code that schedules its own work on them
        (parallel loops), so that one set of workers serves every kind of local call."""
        return self._process_pool()

    def started_pool(self) -> ProcessPoolExecutor | None:
        """The process pool if it was started, without starting it."""
        return self._processes

    def discard_pool(self, pool: ProcessPoolExecutor) -> None:
        """Stop handing out ``pool`` (it broke); the next use starts a new one."""
        self._forget_broken_pool(pool)

    def _thread_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.max_workers, thread_name_prefix="clustrix")
            return self._threads

    def _submit_to_processes(self, *call: Any) -> tuple[ProcessPoolExecutor, Future]:
        pool = self._process_pool()
        inner = pool.submit(*call)
        with self._lock:
            if pool not in self._workers:
                self._workers[pool] = list(getattr(pool, "_processes", {}).values())
        return pool, inner

    def _forget_broken_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._processes is pool:
                self._processes = None

    # ------------------------------------------------------------------ choosing

    def choose_kind(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> str:
        """Resolve ``auto`` for one call, logging why at debug level."""
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
    ) -> ClusterFuture:
        """Start one call; with ``timeout`` it runs in a process of its own that can be killed."""
        kwargs = kwargs or {}
        kind = self.choose_kind(func, args, kwargs)
        name = function_name(func)
        if kind == "inline":
            return resolved(name, "local:inline", _capture(func, args, kwargs))
        if kind == "threads":
            future = ClusterFuture(name, "local:threads")
            inner = self._thread_pool().submit(_run_inline, func, args, kwargs)
            chain_native(inner, future)
            if timeout is not None:
                _expire_after(
                    future, timeout, "a thread cannot be stopped; it may still be running"
                )
            return future
        function_bytes = pickle_function(func)
        calls_bytes = pickle_calls(func, [(args, kwargs)])
        if timeout is not None:
            return self._submit_with_deadline(func, function_bytes, calls_bytes, timeout)
        future = ClusterFuture(name, "local:processes")
        pool, inner = self._submit_to_processes(
            runner.run_pickled_batch, function_bytes, calls_bytes
        )
        future.bind_cancel(inner.cancel)
        inner.add_done_callback(lambda done: self._settle_single(done, future, pool, func))
        return future

    def _settle_single(
        self,
        inner: Future,
        future: ClusterFuture,
        pool: ProcessPoolExecutor,
        func: Callable[..., Any],
    ) -> None:
        if inner.cancelled():
            mark_cancelled(future)
            return
        try:
            (outcome,) = batch_outcomes(inner.result(), where=_WHERE, func=func)
        except BrokenProcessPool:
            outcome = (False, self._pool_crashed(pool, future.name))
        _settle(future, outcome)

    def _pool_crashed(self, pool: ProcessPoolExecutor, name: str) -> WorkerCrashedError:
        """Describe a dead worker from its exit code, and start a fresh pool for later calls."""
        self._forget_broken_pool(pool)
        with self._lock:
            processes = self._workers.get(pool, [])
        for process in processes:
            process.join(timeout=1)
        codes = [p.exitcode for p in processes if p.exitcode not in (None, 0, -signal.SIGTERM)]
        code = codes[0] if codes else None
        how = (
            f"exited with code {code}"
            if code is not None and code >= 0
            else (f"was killed by signal {-code}" if code is not None else "died")
        )
        return WorkerCrashedError(
            f"the worker process running {name!r} {how} before returning a result "
            "(os._exit, a crash in native code, or the out-of-memory killer); "
            "calls running in the same pool at that moment fail too. The caller is unaffected",
            state="CRASHED",
            exit_code=code,
            host=os.uname().nodename,
        )

    def _submit_with_deadline(
        self, func: Callable[..., Any], function_bytes: bytes, calls_bytes: bytes, timeout: float
    ) -> ClusterFuture:
        name = function_name(func)
        future = ClusterFuture(name, "local:process")
        context = _process_context()
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_child_main, args=(sender, function_bytes, calls_bytes), daemon=True
        )

        def watch() -> None:
            try:
                ready = receiver.poll(timeout)
                data = receiver.recv_bytes() if ready else None
            except EOFError:
                data = None
            finally:
                if process.is_alive():
                    process.terminate()
                process.join()
                receiver.close()
            if future.cancelled():
                return
            if data is not None:
                (outcome,) = batch_outcomes(data, where=_WHERE, func=func)
                _settle(future, outcome)
            elif not ready:
                _settle(future, (False, _timeout_error(name, timeout, "its process was stopped")))
            else:
                _settle(
                    future,
                    (
                        False,
                        WorkerCrashedError(
                            f"the process running {name!r} exited with code "
                            f"{process.exitcode} before returning a result",
                            state="CRASHED",
                            exit_code=process.exitcode,
                        ),
                    ),
                )

        def cancel_job() -> bool:
            process.terminate()
            return True

        process.start()
        sender.close()
        future.bind_cancel(cancel_job)
        threading.Thread(target=watch, name=f"clustrix-deadline-{name}", daemon=True).start()
        return future

    def execute_single(
        self, func: Callable[..., Any], args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Run one call and return its value (or raise its exception)."""
        return self.submit_call(func, args, kwargs).result()

    # ------------------------------------------------------------------ many calls

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``[func(*items) for items in zip(*iterables)]`` in parallel, results in input order."""
        calls: list[CallArgs] = [(tuple(items), {}) for items in zip(*iterables, strict=False)]
        return self.run_calls(func, calls, chunksize=chunksize, return_exceptions=return_exceptions)

    def run_calls(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        *,
        chunksize: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run many argument sets of one function; results (or exceptions) in input order."""
        if not calls:
            return []
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise ConfigError(
                f"chunksize={chunksize!r} is not valid: expected an integer >= 1",
                field="chunksize",
                value=chunksize,
            )
        first_args, first_kwargs = calls[0]
        kind = self.choose_kind(func, first_args, first_kwargs)
        if kind == "processes":
            outcomes = self._run_batches(
                func,
                calls,
                chunksize or auto_chunksize(len(calls), self.max_workers),
                return_exceptions,
            )
        elif kind == "threads":
            inner = [self._thread_pool().submit(_capture, func, a, k) for a, k in calls]
            outcomes = _gather(inner, return_exceptions)
        else:
            outcomes = []
            for args, kwargs in calls:
                outcomes.append(_capture(func, args, kwargs))
                if not outcomes[-1][0] and not return_exceptions:
                    break
        return _unwrap_outcomes(outcomes, return_exceptions)

    def _run_batches(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        chunksize: int,
        return_exceptions: bool,
    ) -> list[tuple[bool, Any]]:
        function_bytes = pickle_function(func)
        batches = [calls[start : start + chunksize] for start in range(0, len(calls), chunksize)]
        submitted = [
            self._submit_to_processes(
                runner.run_pickled_batch, function_bytes, pickle_calls(func, batch)
            )
            for batch in batches
        ]
        pool = submitted[0][0]
        inner = [future for _, future in submitted]
        outcomes: list[tuple[bool, Any]] = []
        try:
            for batch, done in zip(batches, inner, strict=True):
                try:
                    batch_results = batch_outcomes(done.result(), where=_WHERE, func=func)
                except BrokenProcessPool:
                    crash = self._pool_crashed(pool, function_name(func))
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
            for pending in inner:
                pending.cancel()

    def execute_parallel(
        self, func: Callable[..., Any], chunks: Iterable[tuple | dict[str, Any]]
    ) -> list[Any]:
        """Call ``func`` once per chunk (a tuple of positional or a dict of keyword arguments)."""
        calls = [((), dict(c)) if isinstance(c, dict) else (tuple(c), {}) for c in chunks]
        return self.run_calls(func, calls)

    def execute_loop_parallel(
        self,
        func: Callable[..., Any],
        loop_var: str,
        iterable: Iterable[Any],
        func_args: tuple = (),
        func_kwargs: dict[str, Any] | None = None,
        chunk_size: int | None = None,
    ) -> list[Any]:
        """``[func(*func_args, **func_kwargs, loop_var=item) for item in iterable]`` in parallel."""
        base = dict(func_kwargs or {})
        calls = [(tuple(func_args), {**base, loop_var: item}) for item in iterable]
        return self.run_calls(func, calls, chunksize=chunk_size)


def _capture(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> tuple[bool, Any]:
    try:
        return True, _run_inline(func, args, kwargs)
    except Exception as exc:
        return False, exc


def _settle(future: ClusterFuture, outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _timeout_error(name: str, timeout: float, consequence: str) -> JobTimeoutError:
    return JobTimeoutError(
        f"{name!r} did not finish within its timeout of {timeout:g} s; {consequence}",
        state="TIMEOUT",
        host=os.uname().nodename,
    )


def _expire_after(future: ClusterFuture, timeout: float, consequence: str) -> None:
    timer = threading.Timer(
        timeout, lambda: _settle(future, (False, _timeout_error(future.name, timeout, consequence)))
    )
    timer.daemon = True
    timer.start()
    future.add_done_callback(lambda _: timer.cancel())


def chain_native(inner: Future, future: ClusterFuture) -> None:
    future.bind_cancel(inner.cancel)

    def transfer(done: Future) -> None:
        if done.cancelled() or isinstance(done.exception(), CancelledError):
            mark_cancelled(future)
        elif done.exception() is not None:
            _settle(future, (False, done.exception()))
        else:
            _settle(future, (True, done.result()))

    inner.add_done_callback(transfer)


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
