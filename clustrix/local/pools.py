"""The worker pools of a local executor: started on first use, replaced when they break.

A process pool's workers start from the spawner thread so that they end with this process,
and each submission to it goes through the pool's start gate, so that a call cancelled
before it started never starts. A forked child gets pools of its own.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from ..errors import WorkerCrashedError
from .gate import StartGate, gated_batch
from .lifetime import start_from_spawner
from .worker import init_pool_worker


def process_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: fork on Linux, the platform's default elsewhere."""
    # fork starts workers in milliseconds and never re-imports the user's __main__ module;
    # the calls themselves travel with cloudpickle, so nothing relies on inherited state.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


class WorkerPools:
    """One process pool and one thread pool of ``max_workers`` each, started on first use."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._processes: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None
        # Worker Process objects of each pool, kept to read exit codes after a crash (the pool
        # forgets them when it breaks).
        self._workers: weakref.WeakKeyDictionary[
            ProcessPoolExecutor, list[multiprocessing.process.BaseProcess]
        ] = weakref.WeakKeyDictionary()
        self._gates: weakref.WeakKeyDictionary[ProcessPoolExecutor, StartGate] = (
            weakref.WeakKeyDictionary()
        )
        _all_pools.add(self)

    def process_pool(self) -> ProcessPoolExecutor:
        """The process pool, started if it was not."""
        with self._lock:
            if self._processes is None:
                context = process_context()
                gate = StartGate(context)
                pool = ProcessPoolExecutor(
                    self.max_workers,
                    mp_context=context,
                    initializer=init_pool_worker,
                    initargs=(os.getpid(), gate.states, gate.lock),
                )
                self._gates[pool] = gate
                self._processes = pool
                if context.get_start_method() == "fork":
                    # A fork pool starts all its workers at its first submission: make that
                    # one from the spawner thread, so the workers may use the parent-death
                    # signal.
                    start_from_spawner(lambda: pool.submit(int))
                    self._workers[pool] = _processes_of(pool)
            return self._processes

    def started_process_pool(self) -> ProcessPoolExecutor | None:
        """The process pool if it was started, without starting it."""
        return self._processes

    def thread_pool(self) -> ThreadPoolExecutor:
        """The thread pool, started if it was not."""
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.max_workers, thread_name_prefix="clustrix")
            return self._threads

    def discard(self, pool: ProcessPoolExecutor) -> None:
        """Stop handing out ``pool`` (it broke); the next use starts a new one."""
        with self._lock:
            if self._processes is pool:
                self._processes = None

    def submit_batch(
        self, function_bytes: bytes, calls_bytes: bytes, checkpoints: str | None = None
    ) -> tuple[ProcessPoolExecutor, Future, Callable[[], bool]]:
        """Submit one batch; also returns how to cancel it until the moment it starts.

        ``checkpoints`` is the calls' checkpoint template (``runner.run_pickled_batch``), or
        None. The batch's future holds None if its gate stopped it.
        """
        pool = self.process_pool()
        with self._lock:
            gate = self._gates[pool]
        ticket = gate.ticket()
        try:
            inner = pool.submit(gated_batch, ticket, function_bytes, calls_bytes, checkpoints)
        except BaseException:
            gate.release(ticket)
            raise
        gate.track(ticket, inner)
        processes = _processes_of(pool)
        with self._lock:
            if len(processes) > len(self._workers.get(pool, ())):  # started on demand
                self._workers[pool] = processes
        return pool, inner, lambda: gate.cancel(ticket, inner)

    def crash_error(self, pool: ProcessPoolExecutor, name: str) -> WorkerCrashedError:
        """Describe a dead worker from its exit code, and start a fresh pool for later calls."""
        self.discard(pool)
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

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop both pools; ``cancel_futures`` also stops the calls a worker has queued."""
        with self._lock:
            pools = [p for p in (self._processes, self._threads) if p is not None]
            self._processes = self._threads = None
            gates = [self._gates[p] for p in pools if p in self._gates]
        if cancel_futures:
            for gate in gates:
                gate.cancel_all()
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _forget_after_fork(self) -> list[Any]:
        """In a forked child: drop the parent's pools (returned) and use new ones."""
        self._lock = threading.Lock()
        inherited = [p for p in (self._processes, self._threads) if p is not None]
        self._processes = self._threads = None
        return inherited


def _processes_of(pool: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    # The pool keeps its worker Process objects in an attribute of its own; the standard
    # library offers no other way to read their exit codes.
    return list((getattr(pool, "_processes", None) or {}).values())


_all_pools: weakref.WeakSet[WorkerPools] = weakref.WeakSet()
_inherited: list[Any] = []


def _forget_inherited_pools() -> None:
    """In a forked child: the parent's pools have no threads or workers here, so use new ones.

    The old pool objects are kept, not shut down: their pipes and workers are the parent's.
    """
    for pools in list(_all_pools):
        _inherited.extend(pools._forget_after_fork())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_pools)
