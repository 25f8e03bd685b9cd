"""Running calls on this machine: worker processes, threads, or inline.

Processes are the default because they use every core and a crash in user code (``os._exit``,
a segfault) cannot take the caller down. Threads are chosen automatically when the call cannot
be pickled (a lock, an open connection...), and inline execution runs in the caller's thread so
that breakpoints work. Many small calls are batched so that the per-task cost of a process pool
is paid once per batch rather than once per call.

Every process started here ends with the process that started it, however that one ends
(``SIGKILL`` and ``os._exit`` included), and a call that was cancelled before it started never
starts, even if the pool had already queued it for a worker.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
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


def _init_pool_worker(parent_pid: int, gate_states: Any, gate_lock: Any) -> None:
    """Initializer of the pool's worker processes."""
    global _GATE
    _end_with_parent(parent_pid)
    _mark_process_worker()
    _GATE = (gate_states, gate_lock)


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


def _child_main(
    connection: Any, function_bytes: bytes, calls_bytes: bytes, parent_pid: int
) -> None:
    _end_with_parent(parent_pid)
    _mark_process_worker()
    connection.send_bytes(runner.run_pickled_batch(function_bytes, calls_bytes))
    connection.close()


# ------------------------------------------------------------------ ending with the parent
#
# A pool worker waits for work on a pipe whose writing end every forked worker holds too, so
# it never sees end-of-file: when the caller is killed (SIGKILL, os._exit, a crash), nothing
# would tell its workers, and they would wait forever under PID 1. Two mechanisms end them:
# on Linux the kernel's parent-death signal, and everywhere a thread in each child that
# checks every second whether its parent is still the process that started it.

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_CHECK_INTERVAL = 1.0


def _end_with_parent(parent_pid: int) -> None:
    """In a child Clustrix started: exit as soon as ``parent_pid`` is gone."""
    # The kernel sends the parent-death signal when the *thread* that forked this process
    # ends, not the process. Only a fork from the spawner thread (which lives as long as its
    # process) may ask for it; a call made from a short-lived thread would otherwise lose its
    # workers with that thread. The flag is the forking thread's, copied by fork.
    forked_by_spawner = getattr(_thread_state, "spawner", False)
    _thread_state.spawner = False
    if forked_by_spawner and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was asked for
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="clustrix-parent-watch", daemon=True
    ).start()


def _watch_parent(parent_pid: int) -> None:
    # An orphan is adopted by init or a subreaper, so its parent pid changes.
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_CHECK_INTERVAL)
    os._exit(1)


_spawner_lock = threading.Lock()
_spawner: tuple[int, queue.SimpleQueue] | None = None


def _start_from_spawner(start: Callable[[], Any]) -> Any:
    """Run ``start`` (which starts processes) in a thread that lives as long as this process.

    Children started there can be tied to this process with the parent-death signal.
    """
    global _spawner
    if getattr(_thread_state, "spawner", False):
        return start()
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or a forked copy
            tasks: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(
                target=_serve_spawns, args=(tasks,), name="clustrix-spawner", daemon=True
            ).start()
            _spawner = (os.getpid(), tasks)
        tasks = _spawner[1]
    done: Future = Future()
    tasks.put((start, done))
    return done.result()


def _forget_spawner() -> None:
    global _spawner, _spawner_lock
    _spawner, _spawner_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spawner)


def _serve_spawns(tasks: queue.SimpleQueue) -> None:
    _thread_state.spawner = True
    while True:
        start, done = tasks.get()
        try:
            done.set_result(start())
        except BaseException as exc:  # handed to the waiting caller
            done.set_exception(exc)


# ------------------------------------------------------------- not starting cancelled calls
#
# A process pool hands up to one call more than it has workers to their queue ahead of time,
# and marks those calls running: Future.cancel() cannot take them back, so after a Ctrl-C on a
# map (or a cancel, or shutdown(cancel_futures=True)) they would still start as workers free
# up. Each submission therefore carries a ticket, a slot in memory shared with the workers: a
# worker claims the slot right before it starts the call, unless the caller marked it
# cancelled first. Both sides decide under one shared lock, so exactly one of them wins.

_GATE: tuple[Any, Any] | None = None  # in a worker: the pool's (slot states, lock)
_GATE_WAIT = 5.0  # seconds; longer means a process died holding the lock (the pool is broken)
_NO_TICKET = (-1, 0)


def _gated_batch(ticket: tuple[int, int], function_bytes: bytes, calls_bytes: bytes) -> Any:
    """In a worker: run the batch, or return None if it was cancelled before starting."""
    slot, seq = ticket
    if slot >= 0 and _GATE is not None:
        states, lock = _GATE
        if lock.acquire(timeout=_GATE_WAIT):
            try:
                if states[slot] == -seq:
                    return None
                states[slot] = seq
            finally:
                lock.release()
    return runner.run_pickled_batch(function_bytes, calls_bytes)


class _StartGate:
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
            return (self._free.pop(), next(self._numbers)) if self._free else _NO_TICKET

    def track(self, ticket: tuple[int, int], inner: Future) -> None:
        if ticket == _NO_TICKET:
            return
        with self._guard:
            self._live[ticket] = inner
        inner.add_done_callback(lambda _: self.release(ticket))

    def release(self, ticket: tuple[int, int]) -> None:
        if ticket == _NO_TICKET:
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
            if not self.lock.acquire(timeout=_GATE_WAIT):
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


def _batch_data(inner: Future) -> bytes:
    """The result of a gated batch; CancelledError if the gate stopped it."""
    data = inner.result()
    if data is None:
        raise CancelledError()
    return data


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
        self._gates: weakref.WeakKeyDictionary[ProcessPoolExecutor, _StartGate] = (
            weakref.WeakKeyDictionary()
        )
        _executors.add(self)

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
        with self._lock:
            pools = [p for p in (self._processes, self._threads) if p is not None]
            self._processes = self._threads = None
            gates = [self._gates[p] for p in pools if p in self._gates]
        if cancel_futures:
            for gate in gates:
                gate.cancel_all()
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _process_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._processes is None:
                context = _process_context()
                gate = _StartGate(context)
                pool = ProcessPoolExecutor(
                    self.max_workers,
                    mp_context=context,
                    initializer=_init_pool_worker,
                    initargs=(os.getpid(), gate.states, gate.lock),
                )
                self._gates[pool] = gate
                self._processes = pool
                if context.get_start_method() == "fork":
                    # A fork pool starts all its workers at its first submission: make that
                    # one from the spawner thread, so the workers may use the parent-death
                    # signal.
                    _start_from_spawner(lambda: pool.submit(int))
                    self._workers[pool] = list((getattr(pool, "_processes", None) or {}).values())
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

    def _submit_to_processes(
        self, function_bytes: bytes, calls_bytes: bytes
    ) -> tuple[ProcessPoolExecutor, Future, Callable[[], bool]]:
        """Submit one batch; also returns how to cancel it until the moment it starts."""
        pool = self._process_pool()
        with self._lock:
            gate = self._gates[pool]
        ticket = gate.ticket()
        try:
            inner = pool.submit(_gated_batch, ticket, function_bytes, calls_bytes)
        except BaseException:
            gate.release(ticket)
            raise
        gate.track(ticket, inner)
        processes = getattr(pool, "_processes", None) or {}
        with self._lock:
            if len(processes) > len(self._workers.get(pool, ())):  # started on demand
                self._workers[pool] = list(processes.values())
        return pool, inner, lambda: gate.cancel(ticket, inner)

    def _forget_broken_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._processes is pool:
                self._processes = None

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
        pool, inner, cancel = self._submit_to_processes(function_bytes, calls_bytes)
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
            target=_child_main,
            args=(sender, function_bytes, calls_bytes, os.getpid()),
            daemon=True,
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

        _start_from_spawner(process.start)
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
        submitted: list[tuple[ProcessPoolExecutor, Future, Callable[[], bool]]] = []
        outcomes: list[tuple[bool, Any]] = []
        try:
            for batch in batches:
                submitted.append(
                    self._submit_to_processes(function_bytes, pickle_calls(func, batch))
                )
            for batch, (pool, done, _) in zip(batches, submitted, strict=True):
                try:
                    batch_results = batch_outcomes(_batch_data(done), where=_WHERE, func=func)
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
            # After a failure or an interrupt (Ctrl-C), no batch that has not started starts.
            for _, _, cancel in submitted:
                cancel()

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


_executors: weakref.WeakSet[LocalExecutor] = weakref.WeakSet()
_inherited: list[Any] = []


def _forget_inherited_pools() -> None:
    """In a forked child: the parent's pools have no threads or workers here, so use new ones.

    The old pool objects are kept, not shut down: their pipes and workers are the parent's.
    """
    for executor in list(_executors):
        executor._lock = threading.Lock()
        _inherited.extend(p for p in (executor._processes, executor._threads) if p is not None)
        executor._processes = executor._threads = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_pools)


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
