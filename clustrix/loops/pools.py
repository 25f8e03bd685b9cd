"""The worker processes and watchdog threads a parallel loop runs with, kept between loops."""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from ..local import shared_executor

__all__ = ["STARTUP", "forget_pool", "pool_is_warm", "watchdogs", "worker_pool"]

STARTUP: dict[int, float] = {}  # measured seconds to start a pool of n workers
_WARM: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
_POOL_LOCK = threading.Lock()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The worker processes decorated calls use too, started in full before the first chunk."""
    pool = shared_executor(workers, "auto").worker_pool()
    with _POOL_LOCK:
        if pool not in _WARM:
            start = time.perf_counter()
            for future in [pool.submit(int) for _ in range(workers)]:
                future.result()
            STARTUP[workers] = time.perf_counter() - start
            _WARM.add(pool)
    return pool


def pool_is_warm(workers: int) -> bool:
    """Whether the shared pool of ``workers`` processes has all of them started."""
    pool = shared_executor(workers, "auto").started_pool()
    return pool is not None and (pool in _WARM or len(getattr(pool, "_processes", {})) >= workers)


def forget_pool(workers: int, pool: ProcessPoolExecutor | None) -> None:
    """Drop a broken pool, so that the next loop or call starts a new one."""
    if pool is not None:
        shared_executor(workers, "auto").discard_pool(pool)


_watchdog_pool: ThreadPoolExecutor | None = None


def watchdogs() -> ThreadPoolExecutor:
    """Long-lived watchdog threads: starting a thread per loop costs more than a tiny loop."""
    global _watchdog_pool
    with _POOL_LOCK:
        if _watchdog_pool is None:
            _watchdog_pool = ThreadPoolExecutor(4, thread_name_prefix="clustrix-loop-probe")
        return _watchdog_pool
