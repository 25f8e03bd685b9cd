"""Runs pickled calls and packs their outcomes into a result batch.

This file is the part of Clustrix that executes user code, wherever that happens: in a local
worker process, or (shipped as a single file) on a compute node. It therefore depends on the
standard library and cloudpickle only, and must never import the rest of ``clustrix``.

A result batch is plain data, so that both sides can read it without sharing classes::

    {"host": str, "pid": int, "started": float, "finished": float,
     "outcomes": [(True, value), (False, failure), ...]}    # one per call, in call order

    failure = {"exception": pickled exception | None, "type": "module.Name",
               "message": str, "traceback": str, "exit_code": int | None}

Exceptions are pickled on their own so that, if a class cannot be rebuilt on the caller's
side, its name, message and traceback still arrive.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from typing import Any

import cloudpickle

ENVELOPE_VERSION = 1


def _describe_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _pickled_or_none(exc: BaseException) -> bytes | None:
    try:
        return cloudpickle.dumps(exc)
    except Exception:
        return None


def _failure(exc: BaseException, exit_code: int | None = None) -> dict[str, Any]:
    # Start the traceback at the user's function: the runner's own frame is noise.
    trace = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return {
        "exception": _pickled_or_none(exc),
        "type": _describe_type(exc),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, trace)),
        "exit_code": exit_code,
    }


def run_calls(func: Any, calls: list[tuple[tuple, dict]]) -> dict[str, Any]:
    """Run calls in order; whatever happens, describe each outcome instead of raising."""
    started = time.time()
    outcomes: list[tuple[bool, Any]] = []
    for args, kwargs in calls:
        try:
            outcomes.append((True, func(*args, **kwargs)))
        except SystemExit as exc:
            # Re-raising SystemExit on the client would end the caller's program; report it.
            code = exc.code if isinstance(exc.code, int) else 1
            outcomes.append((False, _failure(exc, exit_code=code)))
        except Exception as exc:
            outcomes.append((False, _failure(exc)))
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "finished": time.time(),
        "outcomes": outcomes,
    }


def dump_batch(batch: dict[str, Any]) -> bytes:
    """Pickle a result batch; a return value that will not pickle becomes a failure."""
    try:
        return cloudpickle.dumps(batch)
    except Exception:
        batch = dict(batch, outcomes=[_picklable_outcome(o) for o in batch["outcomes"]])
        return cloudpickle.dumps(batch)


def _picklable_outcome(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    ok, value = outcome
    if not ok:
        return outcome
    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        return False, {
            "exception": None,
            "type": "clustrix.SerializationError",
            "message": f"the function's return value ({type(value).__name__}) could not be "
            f"pickled: {exc}",
            "traceback": "",
            "exit_code": None,
        }
    return outcome


_function_cache: dict[bytes, Any] = {}


def _load_function(function_bytes: bytes) -> Any:
    """Unpickle a function once per worker, however many batches it arrives with."""
    func = _function_cache.get(function_bytes)
    if func is None:
        if len(_function_cache) > 32:
            _function_cache.clear()
        func = cloudpickle.loads(function_bytes)
        _function_cache[function_bytes] = func
    return func


def run_pickled_batch(function_bytes: bytes, calls_bytes: bytes) -> bytes:
    """Run a batch of ``(args, kwargs)`` pairs with one function; return the pickled batch.

    Batching lets thousands of tiny calls share one round trip to a worker.
    """
    return dump_batch(run_calls(_load_function(function_bytes), cloudpickle.loads(calls_bytes)))
