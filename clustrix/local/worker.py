"""The worker's side: what runs in a local worker process or thread, and how a call knows.

A worker process is marked in its environment, a worker thread (or an inline call) by a
depth counter in the thread, so that decorated calls made inside a call run inline instead
of starting workers of their own.

Each call runs at its checkpoint place (``clustrix.checkpointing.call_place``), given by the
caller: a file path, or None for no checkpoints. The checkpoint of a call that succeeded is
removed; a failed call's stays, so that a retry resumes from it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from .. import runner
from ..checkpointing import CHECKPOINT_ENV, call_place, call_places, remove_saved
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
    # A worker forked while its parent ran a call would otherwise hand that call's place to
    # every call it runs: each call gets its own, from the caller.
    os.environ.pop(CHECKPOINT_ENV, None)
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


def child_main(
    connection: Any,
    function_bytes: bytes,
    calls_bytes: bytes,
    parent_pid: int,
    checkpoints: str | None = None,
) -> None:
    """Body of a process of its own (a call with a timeout): run it, send back the outcome.

    ``checkpoints``: the call's checkpoint template (``runner.run_pickled_batch``), or None.
    """
    end_with_parent(parent_pid)
    _mark_process_worker()
    connection.send_bytes(runner.run_pickled_batch(function_bytes, calls_bytes, checkpoints))
    connection.close()


def run_inline(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``func(*args, **kwargs)`` in this thread, marked as running inside a call."""
    _thread_state.depth = getattr(_thread_state, "depth", 0) + 1
    try:
        return func(*args, **kwargs)
    finally:
        _thread_state.depth -= 1


def run_at(func: Callable[..., Any], args: tuple, kwargs: dict, place: str | None) -> Any:
    """``run_inline`` as a call whose checkpoint is at ``place`` (None: it has none, even
    inside another call); the checkpoint is removed if the call succeeds."""
    with call_place(place):
        value = run_inline(func, args, kwargs)
    if place is not None:
        remove_saved(place)
    return value


def capture(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """``run_inline`` as an outcome: ``(True, value)`` or ``(False, exception)``."""
    try:
        return True, run_inline(func, args, kwargs)
    except Exception as exc:
        return False, exc


def capture_at(
    func: Callable[..., Any], args: tuple, kwargs: dict[str, Any], place: str | None
) -> tuple[bool, Any]:
    """``run_at`` as an outcome: ``(True, value)`` or ``(False, exception)``."""
    try:
        return True, run_at(func, args, kwargs, place)
    except Exception as exc:
        return False, exc


def capture_in_batch(
    func: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    template: str | None,
    position: int,
) -> tuple[bool, Any]:
    """``capture`` as call ``position`` of a batch whose checkpoints are at ``template``
    (``clustrix.checkpointing.call_places``); the caller removes those of calls that
    succeeded, for the whole batch at once."""
    with call_places(template, position):
        return capture(func, args, kwargs)
