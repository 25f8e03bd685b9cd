"""The worker side of a parallel loop: running one chunk of iterations in a worker process.

The caller sends the chunk function, the values it reads and its own per-thread settings
(:func:`thread_state`); :func:`run_chunk` answers with the events of each iteration (recorded
effect values, prints, warnings) and where and why the chunk stopped, if it did.
"""

from __future__ import annotations

import decimal
import io
import sys
import warnings
from typing import Any

import cloudpickle

from .checks import Unverified, check_immutable, check_method

__all__ = ["run_chunk", "thread_state"]

_WORKER_CACHE: dict[str, Any] = {}


class _Output(io.TextIOBase):
    def __init__(self, events: list, sid: int) -> None:
        self.events, self.sid = events, sid

    def write(self, text: str) -> int:
        if self.events:
            self.events[-1].append((self.sid, text))
        return len(text)

    def writable(self) -> bool:
        return True


def thread_state() -> dict[str, Any]:
    """The caller's per-thread settings an iteration may depend on, sent with its chunks."""
    state: dict[str, Any] = {
        "decimal": decimal.getcontext().copy(),
        "warnings": [
            (
                "always" if action in ("default", "module", "once") else action,
                getattr(message, "pattern", message) or "",
                category,
                getattr(module, "pattern", module) or "",
                lineno,
            )
            for action, message, category, module, lineno in warnings.filters
        ],
    }
    if "numpy" in sys.modules:
        state["numpy"] = sys.modules["numpy"].geterr()
    return state


def run_chunk(payload: bytes, items: bytes) -> bytes:
    """In a worker: run a chunk, answer (events per iteration, failing position, why)."""
    if _WORKER_CACHE.get("bytes") != payload:  # the same loop's chunks reuse the unpickled body
        chunk, ro, state, snapshots = cloudpickle.loads(payload)
        for func, values in snapshots:
            func.__globals__.update(values)
        _WORKER_CACHE.update(bytes=payload, value=(chunk, ro, state))
    chunk, ro, state = _WORKER_CACHE["value"]
    out: list[list] = []
    failed: int | None = None
    why = ""
    saved = (sys.stdout, sys.stderr, decimal.getcontext())
    numpy_saved = None
    if "numpy" in state and "numpy" in sys.modules:
        numpy_saved = sys.modules["numpy"].seterr(**state["numpy"])
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, message, category, module, lineno in reversed(state["warnings"]):
            warnings.filterwarnings(action, message, category, module, lineno)

        def record(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
            if out:
                out[-1].append((-3, (message, category, filename, lineno)))

        warnings.showwarning = record
        sys.stdout, sys.stderr = _Output(out, -1), _Output(out, -2)
        decimal.setcontext(state["decimal"])
        try:
            chunk(cloudpickle.loads(items), ro, check_method, check_immutable, out)
        except BaseException as exc:
            failed = max(len(out) - 1, 0)
            why = "unverified" if isinstance(exc, Unverified) else "raised"
        finally:
            sys.stdout, sys.stderr = saved[0], saved[1]
            decimal.setcontext(saved[2])
            if numpy_saved is not None:
                sys.modules["numpy"].seterr(**numpy_saved)
    events = out if failed is None else out[:failed]
    try:
        return cloudpickle.dumps((events, failed, why))
    except Exception:  # an unpicklable value: the caller runs this chunk itself, in order
        return cloudpickle.dumps(([], 0, "unpicklable"))
