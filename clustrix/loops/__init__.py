"""Automatic, correctness-first parallelisation of ``for`` loops in decorated functions.

``parallelize(func)`` returns a function with the same signature whose outermost provably
independent loops spread their iterations over worker processes when the measured cost model
says it pays; ``explain(func)`` says which loops qualify and why the others do not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .analysis import (
    LoopInfo,
    SafeRangeEvaluator,
    SourceUnavailable,
    detect_loops_in_function,
    estimate_work_size,
    find_parallelizable_loops,
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
    "assumption: functions and methods called in a loop body that are not known to be "
    "impure are treated as pure (no mutation of arguments or global state)"
)


def parallelize(
    func: Callable[..., Any],
    *,
    workers: int | None = None,
    threshold: float = 0.1,
    runner_factory: Callable[[Callable[..., Any], LoopInfo], Any] | None = None,
) -> Callable[..., Any]:
    """``func`` rewritten so its safe loops may run in parallel; ``func`` itself if none can.

    By default each loop gets a :class:`LoopRunner` over ``workers`` local processes;
    ``runner_factory(chunk, info)`` supplies another runner (a job array, say).
    """
    if runner_factory is None:

        def runner_factory(chunk: Callable[..., Any], info: LoopInfo) -> Any:
            return LoopRunner(chunk, workers, threshold)

    try:
        chosen = find_parallelizable_loops(func)
        if not chosen:
            return func
        new = transform_function(func, chosen, runner_factory)
    except (SourceUnavailable, TransformError, SyntaxError):
        return func
    new.__clustrix_loops__ = chosen  # type: ignore[attr-defined]
    return functools.wraps(func)(new) if new is not func else func


def explain(func: Callable[..., Any], args: tuple | None = None, kwargs: dict | None = None) -> str:
    """A readable report of every loop: line, nesting, verdict, reason, effects, iterations."""
    name = getattr(func, "__qualname__", repr(func))
    try:
        infos = detect_loops_in_function(func, tuple(args or ()), kwargs)
    except SourceUnavailable as exc:
        return f"{name}: {exc}"
    if not infos:
        return f"{name}: no loops"
    chosen = {id(i) for i in find_parallelizable_loops_from(infos)}
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
    import ast

    chosen: list[LoopInfo] = []
    for info in infos:
        if info.parallelizable and not any(
            c.node is not None and any(n is info.node for n in ast.walk(c.node)) for c in chosen
        ):
            chosen.append(info)
    return chosen
