"""Checkpoints of a running call: ``checkpoint(state)``, ``restore()``, ``on_requeue(fn)``.

A call that may be stopped before it ends (a time limit, a preemption, a lost node) saves its
progress with ``checkpoint`` and starts with ``restore``: when the job runs again, it goes on
from the last saved state instead of from zero. Each call has a place for its checkpoint,
set by whatever runs the call (the runner in a job, a local worker, a pool's worker) with
``call_place``: a file path, passed to worker processes (and to programs the call starts) in
the ``CLUSTRIX_CHECKPOINT`` environment variable, and to threads in a context variable.

This module runs inside jobs, shipped in Clustrix's runtime zip: it uses only the standard
library and cloudpickle, and imports nothing else of Clustrix.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

#: The environment variable naming the running call's checkpoint file.
CHECKPOINT_ENV = "CLUSTRIX_CHECKPOINT"
#: Appended to a checkpoint's path: its size (bytes) and when it was saved (epoch seconds).
INFO_SUFFIX = ".json"

_place: contextvars.ContextVar[str | None] = contextvars.ContextVar("clustrix_checkpoint")
_callbacks: dict[str, list[Callable[[], Any]]] = {}
_callbacks_lock = threading.Lock()


def current_place() -> str | None:
    """The running call's checkpoint file, or None outside a call Clustrix runs."""
    return _place.get(None) or os.environ.get(CHECKPOINT_ENV) or None


@contextlib.contextmanager
def call_place(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Run the block as a call whose checkpoint lives at ``path`` (None: no checkpoints).

    Sets the context variable (threads) and the environment variable (this process and the
    programs it starts); both are restored afterwards, and the call's ``on_requeue``
    callbacks are forgotten.
    """
    place = os.fspath(path) if path is not None else None
    token = _place.set(place)
    saved = os.environ.get(CHECKPOINT_ENV)
    if place is not None:
        os.environ[CHECKPOINT_ENV] = place
    try:
        yield
    finally:
        _place.reset(token)
        if place is not None:
            if saved is None:
                os.environ.pop(CHECKPOINT_ENV, None)
            else:
                os.environ[CHECKPOINT_ENV] = saved
            with _callbacks_lock:
                _callbacks.pop(place, None)


def checkpoint(state: Any) -> None:
    """Save ``state`` as the running call's checkpoint; the last one saved wins.

    ``state`` must be picklable with cloudpickle. The file is replaced atomically (written
    aside, flushed to disk, renamed over the old one), so a job killed while saving keeps the
    previous checkpoint. Outside a call run by Clustrix (a plain function call) this does
    nothing, so that a decorated function also runs as ordinary Python.

    Raises whatever pickling ``state`` raises (``TypeError``, ``pickle.PicklingError``).
    """
    place = current_place()
    if place is None:
        return
    data = cloudpickle.dumps(state)
    _write_atomically(place, data)
    info = {"size": len(data), "saved": time.time()}
    _write_atomically(place + INFO_SUFFIX, json.dumps(info).encode())


def restore(default: Any = None) -> Any:
    """The last state this call saved with ``checkpoint`` (in an earlier attempt of its job,
    or earlier in this one), or ``default`` when there is none (or outside a Clustrix call).

    Raises what unpickling the saved state raises (a module missing in this environment).
    """
    place = current_place()
    if place is None:
        return default
    try:
        with open(place, "rb") as handle:
            return cloudpickle.load(handle)
    except FileNotFoundError:
        return default


def on_requeue(callback: Callable[[], Any]) -> Callable[[], Any]:
    """Call ``callback()`` when the running call's job is about to be stopped and requeued.

    That is when the scheduler warns of the time limit (``requeue_grace`` seconds before it)
    or stops the job (preemption, ``scontrol requeue``): the callback's chance to save a last
    ``checkpoint``. It runs in the call's main thread, interrupting the call, and must be
    quick: the scheduler kills the job soon after. Callbacks run in the order registered;
    they are forgotten when the call ends. Returns ``callback``, so it can be a decorator.
    Outside a job that can be requeued it is never called.
    """
    place = current_place()
    if place is not None:
        with _callbacks_lock:
            _callbacks.setdefault(place, []).append(callback)
    return callback


def run_requeue_callbacks() -> list[BaseException]:
    """Run the running call's ``on_requeue`` callbacks; the exceptions they raised (a failing
    callback must not keep the others, or the requeue, from happening)."""
    place = current_place()
    with _callbacks_lock:
        callbacks = list(_callbacks.get(place, [])) if place is not None else []
    errors = []
    for callback in callbacks:
        try:
            callback()
        except BaseException as exc:  # reported by the runner, never raised
            errors.append(exc)
    return errors


def saved_info(path: str) -> dict[str, float] | None:
    """``{"size": bytes, "saved": epoch seconds}`` of the checkpoint at ``path``, or None."""
    try:
        with open(path + INFO_SUFFIX, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
