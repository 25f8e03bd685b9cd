"""The worker's side: what runs in a local worker process or thread, and how a call knows.

A worker process is marked in its environment, a worker thread (or an inline call) by a
depth counter in the thread, so that decorated calls made inside a call run inline instead
of starting workers of their own.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from .. import runner
from .gate import install_gate
from .lifetime import end_with_parent

_IN_WORKER_ENV = "CLUSTRIX_IN_JOB"
_thread_state = threading.local()


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


def init_pool_worker(parent_pid: int, gate_states: Any, gate_lock: Any) -> None:
    """Initializer of the pool's worker processes."""
    end_with_parent(parent_pid)
    _mark_process_worker()
    install_gate(gate_states, gate_lock)


def child_main(connection: Any, function_bytes: bytes, calls_bytes: bytes, parent_pid: int) -> None:
    """Body of a process of its own (a call with a timeout): run it, send back the outcome."""
    end_with_parent(parent_pid)
    _mark_process_worker()
    connection.send_bytes(runner.run_pickled_batch(function_bytes, calls_bytes))
    connection.close()


def run_inline(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``func(*args, **kwargs)`` in this thread, marked as running inside a call."""
    _thread_state.depth = getattr(_thread_state, "depth", 0) + 1
    try:
        return func(*args, **kwargs)
    finally:
        _thread_state.depth -= 1


def capture(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """``run_inline`` as an outcome: ``(True, value)`` or ``(False, exception)``."""
    try:
        return True, run_inline(func, args, kwargs)
    except Exception as exc:
        return False, exc
