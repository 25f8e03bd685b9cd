"""Runs pickled calls and packs their outcome into result envelopes.

This file is the part of Clustrix that executes user code, wherever that happens: in a local
worker process, or (shipped as a single file) on a compute node. It therefore depends on the
standard library and cloudpickle only, and must never import the rest of ``clustrix``.

An envelope is a plain dict, so that both sides can read it without sharing classes::

    {"ok": True, "value": ...}                                    # the call returned
    {"ok": False, "exception": pickled exc | None, "type": "mod.Name",  # the call raised
     "message": str, "traceback": str, "exit_code": int | None}
    common keys: "host", "pid", "started", "finished"
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


def _failure(exc: BaseException, exit_code: int | None = None) -> dict[str, Any]:
    # Start the traceback at the user's function: the frame of call_to_envelope is noise.
    trace = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return {
        "ok": False,
        "exception": exc,
        "type": _describe_type(exc),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, trace)),
        "exit_code": exit_code,
    }


def call_to_envelope(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Run one call; whatever happens, describe it as an envelope instead of raising."""
    started = time.time()
    try:
        envelope: dict[str, Any] = {"ok": True, "value": func(*args, **kwargs)}
    except SystemExit as exc:
        # Re-raising SystemExit on the client would end the caller's program; report it instead.
        code = exc.code if isinstance(exc.code, int) else 1
        envelope = _failure(exc, exit_code=code)
    except Exception as exc:
        envelope = _failure(exc)
    envelope.update(
        host=socket.gethostname(), pid=os.getpid(), started=started, finished=time.time()
    )
    return envelope


def dump_envelope(envelope: dict[str, Any]) -> bytes:
    """Pickle an envelope so that the caller can always read at least what happened.

    The exception is pickled on its own: if its class cannot be rebuilt on the caller's side,
    the type name, message and traceback text still arrive.
    """
    envelope = dict(envelope)
    if not envelope["ok"]:
        try:
            envelope["exception"] = cloudpickle.dumps(envelope["exception"])
        except Exception:
            envelope["exception"] = None
    try:
        return cloudpickle.dumps(envelope)
    except Exception as exc:
        value_type = type(envelope.pop("value")).__name__
        envelope.update(
            ok=False,
            exception=None,
            type="clustrix.SerializationError",
            message=f"the function's return value ({value_type}) could not be pickled: {exc}",
            traceback="",
            exit_code=None,
        )
        return cloudpickle.dumps(envelope)


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
    """Run a batch of ``(args, kwargs)`` pairs with one function; return pickled envelopes.

    Batching lets thousands of tiny calls share one round trip to a worker.
    """
    func = _load_function(function_bytes)
    calls = cloudpickle.loads(calls_bytes)
    return cloudpickle.dumps([dump_envelope(call_to_envelope(func, a, k)) for a, k in calls])
