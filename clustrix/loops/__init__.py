"""Automatic, correctness-first parallelisation of ``for`` loops in decorated functions.

``parallelize(func)`` returns a function with the same signature whose outermost provably
independent loops may spread their iterations over worker processes, when the measured cost
model says it pays; ``explain(func)`` says which loops qualify and why the others do not.
"""

from __future__ import annotations

import inspect
import threading
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .analysis import (
    LoopInfo,
    SafeRangeEvaluator,
    SourceUnavailable,
    detect_loops_in_function,
    estimate_work_size,
    find_parallelizable_loops,
    outermost,
)
from .execute import LoopRunner
from .transform import TransformError, transform_function

__all__ = [
    "LoopInfo",
    "SafeRangeEvaluator",
    "SourceUnavailable",
    "detect_loops_in_function",
    "estimate_work_size",
    "explain",
    "find_parallelizable_loops",
    "parallelize",
]

ASSUMPTION = (
    "assumption: operators, indexing and attribute reads in a loop body behave as those of "
    "numbers, strings, containers and numpy arrays (they change nothing)"
)

_CACHE: weakref.WeakKeyDictionary[Callable[..., Any], dict[Any, Any]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def parallelize(
    func: Callable[..., Any],
    *,
    workers: int | None = None,
    threshold: float = 0.1,
    runner_factory: Callable[[Callable[..., Any], LoopInfo], Any] | None = None,
    pure: Iterable[Callable[..., Any]] = (),
) -> Callable[..., Any]:
    """``func`` rewritten so its safe loops may run in parallel; ``func`` itself if none can.

    By default each loop gets a :class:`LoopRunner` over ``workers`` local processes;
    ``runner_factory(chunk, info)`` supplies another runner (a job array, say). ``pure`` names
    functions the body may call that the analysis should take as pure. A bound method is
    rewritten once for its class and bound to the instance.
    """
    if inspect.ismethod(func):
        new = parallelize(
            func.__func__,
            workers=workers,
            threshold=threshold,
            runner_factory=runner_factory,
            pure=pure,
        )
        return func if new is func.__func__ else types.MethodType(new, func.__self__)
    pure = tuple(pure)
    key = (workers, threshold, runner_factory, tuple(id(p) for p in pure))
    try:
        with _CACHE_LOCK:
            cached = _CACHE.setdefault(func, {}).get(key)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None:
        return cached
    factory = runner_factory
    if factory is None:

        def factory(chunk: Callable[..., Any], info: LoopInfo) -> Any:
            return LoopRunner(chunk, workers, threshold, info=info)

    try:
        chosen = find_parallelizable_loops(func, pure=pure)
        new = transform_function(func, chosen, factory) if chosen else func
    except (SourceUnavailable, TransformError, SyntaxError):
        new = func
    try:
        with _CACHE_LOCK:
            _CACHE.setdefault(func, {})[key] = new
    except TypeError:
        pass
    return new


def explain(
    func: Callable[..., Any],
    args: tuple | None = None,
    kwargs: dict | None = None,
    pure: Iterable[Callable[..., Any]] = (),
) -> str:
    """A readable report of every loop: line, nesting, verdict, reason, effects, iterations."""
    name = getattr(func, "__qualname__", repr(func))
    try:
        infos = detect_loops_in_function(func, tuple(args or ()), kwargs, pure=tuple(pure))
    except SourceUnavailable as exc:
        return f"{name}: {exc}"
    if not infos:
        return f"{name}: no loops"
    chosen = {id(i) for i in outermost(infos)}
    lines = [f"{name}:"]
    for info in infos:
        verdict = (
            "parallel"
            if id(info) in chosen
            else (
                "safe (runs inside the enclosing parallel chunk)"
                if info.parallelizable
                else "sequential"
            )
        )
        lines.append(
            f"  line {info.line} [{info.kind}, level {info.level}] "
            f"`{info.iterable}`: {verdict}: {info.reason}"
        )
        if info.reductions:
            lines.append(
                "    reductions: " + ", ".join(f"{k} ({v})" for k, v in info.reductions.items())
            )
        if info.collectors:
            lines.append(
                "    collectors: " + ", ".join(f"{k} ({v})" for k, v in info.collectors.items())
            )
        count = "unknown" if info.iterations is None else str(info.iterations)
        lines.append(f"    estimated iterations: {count}")
    lines.append("  " + ASSUMPTION)
    return "\n".join(lines)


def find_parallelizable_loops_from(infos: list[LoopInfo]) -> list[LoopInfo]:
    """The outermost safe loops among already analysed ``infos``."""
    return outermost(infos)
