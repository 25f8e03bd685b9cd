"""Checkpoints of a running call: ``checkpoint(state)``, ``restore()``, ``on_requeue(fn)``.

A call that may be stopped before it ends (a time limit, a preemption, a lost node) saves its
progress with ``checkpoint`` and starts with ``restore``: when the job runs again, it goes on
from the last saved state instead of from zero. Each call has a place for its checkpoint,
set by whatever runs the call (the runner in a job, a local worker, a pool's worker) with
``call_place`` (one call) or ``call_places`` (calls run one after another): a file path, held
in a context variable while the call runs, and in the ``CLUSTRIX_CHECKPOINT`` environment
variable too once the call uses it, for the programs the call starts from then on.

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
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import cloudpickle

#: The environment variable naming the running call's checkpoint file.
CHECKPOINT_ENV = "CLUSTRIX_CHECKPOINT"
#: Appended to a checkpoint's path: its size (bytes) and when it was saved (epoch seconds).
INFO_SUFFIX = ".json"

_T = TypeVar("_T")

_callbacks: dict[str, list[Callable[[], Any]]] = {}
_callbacks_lock = threading.Lock()
# Places whose checkpoint this process saved or restored: the only ones ``remove_saved`` has
# to look at, so that the many calls that never checkpoint cost no file system access.
_known: set[str] = set()


class call_places:
    """Run calls one after another in this thread, call ``position`` with its checkpoint at
    ``template.format(position=position)`` (None: no checkpoints, so ``checkpoint`` does
    nothing and ``restore`` returns its default, even inside another call). Without
    ``each``, the block is the one call at ``position``::

        with call_places(template) as places:
            for call in places.each(calls):
                ...  # run it: it is the running call until the next one is taken

    The places are names only, made into paths when a call asks for its own, so that a map
    of many tiny calls pays for no string or environment variable per call. Once a call in
    the process's main thread uses its place (``checkpoint``, ``restore``, ``on_requeue``),
    the ``CLUSTRIX_CHECKPOINT`` environment variable holds it for the rest of the call, for
    the programs and threads the call starts; a call in another thread has the context
    variable only, since the environment is the whole process's. When a call ends, the
    environment is restored and its ``on_requeue`` callbacks are forgotten.
    """

    __slots__ = ("_path", "_position", "_saved", "_template", "_token")

    def __init__(self, template: str | None, position: int = 0) -> None:
        self._template = template
        self._position = position
        self._path: str | None = None
        self._saved: str | bool | None = False  # False: the environment was not changed

    def __enter__(self) -> call_places:
        self._token = _place.set(None if self._template is None else self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._end_call()
        _place.reset(self._token)

    def each(self, calls: Iterable[_T]) -> Iterator[_T]:
        """``calls`` one by one, each the running call from when it is taken until the next."""
        for position, call in enumerate(calls):
            self._end_call()
            self._position = position
            yield call
        self._end_call()

    def path(self) -> str | None:
        """The running call's checkpoint file (None: it has none)."""
        if self._path is None and self._template is not None:
            self._path = self._template.format(position=self._position)
        return self._path

    def used(self) -> str | None:
        """``path()``, also put in the environment (main thread) for the rest of the call."""
        path = self.path()
        main = threading.current_thread() is threading.main_thread()
        if path is not None and self._saved is False and main:
            self._saved = os.environ.get(CHECKPOINT_ENV)
            os.environ[CHECKPOINT_ENV] = path
        return path

    def _end_call(self) -> None:
        if self._path is None:
            return  # the call never asked for its place: nothing to undo
        if self._saved is not False:
            if self._saved is None:
                os.environ.pop(CHECKPOINT_ENV, None)
            else:
                os.environ[CHECKPOINT_ENV] = self._saved  # type: ignore[assignment]
            self._saved = False
        if _callbacks:
            with _callbacks_lock:
                _callbacks.pop(self._path, None)
        self._path = None


def call_place(path: str | os.PathLike[str] | None) -> call_places:
    """Run the block as one call whose checkpoint lives at ``path`` (None: no checkpoints,
    even inside another call); see ``call_places``."""
    if path is None:
        return call_places(None)
    return call_places(os.fspath(path).replace("{", "{{").replace("}", "}}"))


# What runs now: unset, the call's place is the environment variable's (a process started
# for the call, or a thread the call started); None, explicitly no place.
_place: contextvars.ContextVar[call_places | None] = contextvars.ContextVar("clustrix_checkpoint")
_UNSET: Any = object()


def current_place() -> str | None:
    """The running call's checkpoint file, or None outside a call Clustrix runs (and in a
    call run without checkpoints)."""
    running = _place.get(_UNSET)
    if running is _UNSET:
        return os.environ.get(CHECKPOINT_ENV) or None
    return None if running is None else running.path()


def _used_place() -> str | None:
    """``current_place()``, put in the environment for the programs the call starts."""
    running = _place.get(_UNSET)
    if running is _UNSET:
        return os.environ.get(CHECKPOINT_ENV) or None
    return None if running is None else running.used()


def checkpoint(state: Any) -> None:
    """Save ``state`` as the running call's checkpoint; the last one saved wins.

    ``state`` must be picklable with cloudpickle. The file is replaced atomically (written
    aside, flushed to disk, renamed over the old one), so a job killed while saving keeps the
    previous checkpoint; a missing folder on the way to it is made (mode 700, files 600).
    Outside a call run by Clustrix (a plain function call) this does nothing, so that a
    decorated function also runs as ordinary Python.

    Raises whatever pickling ``state`` raises (``TypeError``, ``pickle.PicklingError``).
    """
    place = _used_place()
    if place is None:
        return
    data = cloudpickle.dumps(state)
    _write_atomically(place, data)
    info = {"size": len(data), "saved": time.time()}
    _write_atomically(place + INFO_SUFFIX, json.dumps(info).encode())
    _known.add(place)


def restore(default: Any = None) -> Any:
    """The last state this call saved with ``checkpoint`` (in an earlier attempt of its job,
    or earlier in this one), or ``default`` when there is none (or outside a Clustrix call).

    Raises what unpickling the saved state raises (a module missing in this environment).
    """
    place = _used_place()
    if place is None:
        return default
    try:
        with open(place, "rb") as handle:
            state = cloudpickle.load(handle)
    except FileNotFoundError:
        return default
    _known.add(place)
    return state


def on_requeue(callback: Callable[[], Any]) -> Callable[[], Any]:
    """Call ``callback()`` when the running call's job is about to be stopped and requeued.

    That is when the scheduler warns of the time limit (``requeue_grace`` seconds before it)
    or stops the job (preemption, ``scontrol requeue``): the callback's chance to save a last
    ``checkpoint``. It runs in the call's main thread, interrupting the call, and must be
    quick: the scheduler kills the job soon after. Callbacks run in the order registered;
    they are forgotten when the call ends. Returns ``callback``, so it can be a decorator.
    Outside a job that can be requeued it is never called.
    """
    place = _used_place()
    if place is not None:
        with _callbacks_lock:
            _callbacks.setdefault(place, []).append(callback)
    return callback


def call_running() -> bool:
    """Whether this thread runs a call now (set by ``call_places``; also a call without a
    checkpoint place, such as a decorated call nested in another)."""
    return _place.get(_UNSET) is not _UNSET


def forget_requeue_callbacks() -> None:
    """Forget every ``on_requeue`` callback (in a process forked from a running call)."""
    _callbacks.clear()


def run_requeue_callbacks() -> list[BaseException]:
    """Run the ``on_requeue`` callbacks of the calls running in this process (a job that
    may be requeued runs one call, which may be inside a decorated call it made); the
    exceptions they raised (a failing callback must not keep the others, or the requeue,
    from happening).

    Called from a signal handler, which may interrupt this thread while it holds
    ``_callbacks_lock``: the callbacks are copied without taking it (each step is atomic
    under the GIL).
    """
    callbacks = [callback for found in list(_callbacks.values()) for callback in found]
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


def remove_saved(place: str) -> bool:
    """Remove the checkpoint at ``place`` and its info, once its call has succeeded; True if
    there was one.

    Only a checkpoint this process saved or restored is looked for, so a call that never
    checkpointed costs nothing (one saved by a program the call started is left). The
    checkpoint of a call that failed is kept on purpose, so that a run of it again resumes.
    Raises nothing: a file already gone, or one that cannot be removed, is left as it is.
    """
    if place not in _known:
        return False
    _known.discard(place)
    removed = False
    for path in (place, place + INFO_SUFFIX):
        with contextlib.suppress(OSError):
            os.remove(path)
            removed = True
    return removed


def remove_succeeded(template: str, succeeded: Iterable[bool]) -> None:
    """``remove_saved`` for each call that succeeded, by position: ``succeeded`` says, in
    call order, which of the calls run at ``template``'s places (see ``call_places``) did.
    Costs nothing unless this process saved or restored a checkpoint; raises nothing."""
    if not _known:
        return
    for position, ok in enumerate(succeeded):
        if ok:
            remove_saved(template.format(position=position))


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        descriptor = os.open(temporary, flags, 0o600)
    except FileNotFoundError:
        # Places are handed out without making their folder: most calls never checkpoint.
        _make_folder(os.path.dirname(temporary))
        descriptor = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _make_folder(folder: str) -> None:
    """Make ``folder`` and the missing folders above it, each private (mode 700)."""
    if not folder or os.path.isdir(folder):
        return
    _make_folder(os.path.dirname(folder))
    with contextlib.suppress(FileExistsError):  # made by another call meanwhile
        os.mkdir(folder, 0o700)
