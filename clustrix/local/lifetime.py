"""Every process Clustrix starts here ends with the process that started it.

A pool worker waits for work on a pipe whose writing end every forked worker holds too, so
it never sees end-of-file: when the caller is killed (SIGKILL, os._exit, a crash), nothing
would tell its workers, and they would wait forever under PID 1. Two mechanisms end them:
on Linux the kernel's parent-death signal, and everywhere a thread in each child that
checks every second whether its parent is still the process that started it.

The kernel sends the parent-death signal when the *thread* that forked a process ends, not
the process. Processes are therefore started from the spawner thread, which lives as long
as its process; only a child forked from it asks for the signal.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_CHECK_INTERVAL = 1.0

# ``spawner`` is True in the spawner thread, and (copied by fork) in a child it forked.
_thread_state = threading.local()
_spawner_lock = threading.Lock()
_spawner: tuple[int, queue.SimpleQueue] | None = None


def end_with_parent(parent_pid: int) -> None:
    """In a child Clustrix started: exit as soon as ``parent_pid`` is gone."""
    # A call made from a short-lived thread would otherwise lose its workers with that
    # thread, so only a fork from the spawner thread asks for the parent-death signal.
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


def start_from_spawner(start: Callable[[], Any]) -> Any:
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


def _serve_spawns(tasks: queue.SimpleQueue) -> None:
    _thread_state.spawner = True
    while True:
        start, done = tasks.get()
        try:
            done.set_result(start())
        except BaseException as exc:  # handed to the waiting caller
            done.set_exception(exc)


def _forget_spawner() -> None:
    global _spawner, _spawner_lock
    _spawner, _spawner_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spawner)
