"""Local backends: a process pool, a thread pool, or inline execution in the caller."""

from __future__ import annotations

import atexit
import os
import threading

from .executor import LocalExecutor, available_cores
from .kinds import KINDS
from .worker import in_worker

__all__ = ["KINDS", "LocalExecutor", "available_cores", "in_worker", "shared_executor"]

_shared: dict[tuple[int, str], LocalExecutor] = {}
_shared_lock = threading.Lock()


def shared_executor(max_workers: int, kind: str) -> LocalExecutor:
    """One long-lived executor per (workers, kind), so decorated calls reuse warm workers."""
    key = (max_workers, kind)
    with _shared_lock:
        executor = _shared.get(key)
        if executor is None:
            executor = _shared[key] = LocalExecutor(max_workers=max_workers, kind=kind)
        return executor


def _after_fork_in_child() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _shutdown_shared() -> None:
    with _shared_lock:
        executors = list(_shared.values())
        _shared.clear()
    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)
