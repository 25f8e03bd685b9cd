"""Read-only analysis of the loops in a function: which ones may run their iterations in parallel.

Why the rules are what they are: a loop runs in parallel only if (1) every call in its body is
to a function known to be pure (:mod:`.purity`, or the user's own functions, analysed in turn),
(2) every write outside the iteration is an *effect statement* on an outer object that the body
does not otherwise read (``acc += e``, ``out.append(e)``, ``counts[w] = counts.get(w, 0) + 1``),
and (3) names assigned in the body are private to the iteration. Effects are not merged from
partial results: the workers send back the values each iteration computed and the caller
replays the original statements in iteration order, so the final state is bit-identical to the
sequential run. What can only be known when the function runs (that an effect's target does not
alias what the loop reads, the types behind method calls) is checked then (see ``execute``).

The pieces: :mod:`.purity` (the effect tables), :mod:`.bounds` (the bounds evaluator),
:mod:`.context` (what is read of the function around a loop) and :mod:`.body` (the
``ast.NodeVisitor`` that walks bodies). Nothing here runs user code.
"""

from __future__ import annotations

import ast
import inspect
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .body import LoopBodyVisitor
from .bounds import SafeRangeEvaluator, estimate_iterations, int_bindings, int_env
from .context import (
    LoopCollector,
    bound_before,
    function_context,
    immutable_targets,
    iter_spec,
    iterated_names,
    method_class,
    uses_outside,
)
from .effects import Effect
from .scope import Scope, Sequential
from .syntax import SourceUnavailable, parse_source, target_names

__all__ = [
    "Effect",
    "LoopInfo",
    "SafeRangeEvaluator",
    "Sequential",
    "SourceUnavailable",
    "detect_loops_in_function",
    "estimate_work_size",
    "find_parallelizable_loops",
    "parse_function",
]


@dataclass
class LoopInfo:
    """What the analysis knows about one loop; ``line`` is the line in the source file."""

    line: int
    kind: str  # "for" or "while"
    level: int
    variables: tuple[str, ...]
    iterable: str
    range_bounds: tuple[int, int, int] | None
    iterations: int | None
    parallelizable: bool
    reason: str
    reductions: dict[str, str] = field(default_factory=dict)
    collectors: dict[str, str] = field(default_factory=dict)
    private: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    effects: list[Effect] = field(default_factory=list, repr=False)
    node: ast.AST | None = field(default=None, repr=False, compare=False)
    tree: ast.FunctionDef | None = field(default=None, repr=False, compare=False)
    guarded: set[int] = field(default_factory=set, repr=False, compare=False)
    guards: list[tuple[dict, str, Any]] = field(default_factory=list, repr=False, compare=False)
    snapshots: list[tuple[Any, tuple[str, ...]]] = field(
        default_factory=list, repr=False, compare=False
    )
    assumptions: list[str] = field(default_factory=list)
    container_targets: tuple[str, ...] = ()
    immutable_targets: tuple[str, ...] = ()
    spec: Any = field(default=None, repr=False, compare=False)  # how the iterable is rebuilt
    method_guards: list[tuple[str, str, Any]] = field(default_factory=list, repr=False)


def parse_function(func: Callable[..., Any]) -> tuple[ast.FunctionDef, int]:
    """The function's AST (decorators removed) with lines matching the source file."""
    node = parse_source(func)
    return node, inspect.unwrap(func).__code__.co_firstlineno


# --------------------------------------------------------------------------- one loop


def _analyse_for(
    loop: ast.For, tree: ast.FunctionDef, func: types.FunctionType, ctx: dict[str, Any], pure: dict
) -> dict[str, Any]:
    """What makes ``loop`` parallel (its effects, private and read-only names...) or Sequential."""
    targets = _loop_targets(loop, ctx)
    iter_names = iterated_names(loop.iter)
    scope = Scope(func, func.__globals__, set(ctx["outer"]), set(ctx["declared"]), pure)
    scope.self_name, scope.self_class = method_class(func, tree)
    visitor = LoopBodyVisitor(scope, loop, immutable_targets(loop, func, ctx["outer"]), iter_names)
    visitor.body(loop.body)
    effect_names = _effects_not_read(visitor)
    # a name written by the loop and read in the iterable is refused by the visitor: such a
    # name is either private (assigned in the body) or an effect target excluded there
    for name in iter_names & set(visitor.local):
        if name not in targets:
            raise Sequential(
                f"line {loop.lineno}: `{name}` is assigned in the body and read by the iterable"
            )
    private = sorted(set(visitor.local) - ctx["declared"])
    _check_private_unused_after(tree, loop, targets, private)
    outer_reads = (visitor.reads - set(private)) & ctx["outer"]
    read_only = sorted(outer_reads - set(effect_names))
    _check_bound_at_start(tree, loop, ctx, read_only + sorted(effect_names))
    return _findings(visitor, scope, private, read_only)


def _loop_targets(loop: ast.For, ctx: dict[str, Any]) -> tuple[str, ...]:
    """The loop variables: plain names, none of them global or nonlocal."""
    targets = target_names(loop.target)
    if targets is None:
        raise Sequential(
            f"line {loop.lineno}: loop target `{ast.unparse(loop.target)}` is not "
            "a plain name or tuple of names"
        )
    for name in targets:
        if name in ctx["declared"]:
            raise Sequential(f"line {loop.lineno}: loop variable `{name}` is global/nonlocal")
    return targets


def _effects_not_read(visitor: LoopBodyVisitor) -> dict[str, Effect]:
    """The first effect on each target name; refused if the body also reads the name."""
    effect_names: dict[str, Effect] = {}
    for effect in visitor.effects:
        effect_names.setdefault(effect.name, effect)
    for name, effect in effect_names.items():
        if name in visitor.reads:
            raise Sequential(
                f"line {effect.line}: `{name}` is updated as a {effect.kind} but "
                "also read elsewhere in the body"
            )
    return effect_names


def _check_private_unused_after(
    tree: ast.FunctionDef, loop: ast.For, targets: tuple[str, ...], private: list[str]
) -> None:
    """A name assigned in the body must not be read after the loop (but the loop variables)."""
    after = uses_outside(tree, loop)
    for name in private:
        if name in after and name not in targets:
            raise Sequential(
                f"`{name}` (assigned in the loop at line {loop.lineno}) is used "
                "outside the loop: its value would be the last iteration's"
            )


def _check_bound_at_start(
    tree: ast.FunctionDef, loop: ast.For, ctx: dict[str, Any], names: list[str]
) -> None:
    """Every outer name the loop uses must be bound when it starts."""
    bound = bound_before(tree, loop) | set(ctx["freevars"])
    for name in names:
        if name not in bound:
            raise Sequential(
                f"line {loop.lineno}: `{name}` is used in the loop but may not be assigned "
                "when the loop starts"
            )


def _findings(
    visitor: LoopBodyVisitor, scope: Scope, private: list[str], read_only: list[str]
) -> dict[str, Any]:
    """What the analysis of a parallelizable loop found, for its :class:`LoopInfo`."""
    snapshots = [(fn, tuple(sorted(names))) for fn, names in scope.snapshots.values() if names]
    return {
        "effects": visitor.effects,
        "private": tuple(private),
        "read_only": tuple(read_only),
        "guarded": set(visitor.guarded),
        "guards": scope.guards,
        "snapshots": snapshots,
        "assumptions": scope.assumptions,
        "containers": tuple(sorted({e.name for e in visitor.effects if e.container})),
        "immutable": tuple(sorted(visitor.immutable)),
        "method_guards": scope.method_guards,
    }


# --------------------------------------------------------------------------- every loop


def detect_loops_in_function(
    func: Callable[..., Any],
    args: tuple = (),
    kwargs: dict | None = None,
    pure: Iterable[Any] = (),
) -> list[LoopInfo]:
    """Every loop of ``func`` in source order with its verdict (raises SourceUnavailable)."""
    unwrapped = inspect.unwrap(func)
    if inspect.ismethod(unwrapped):
        unwrapped = unwrapped.__func__
    tree = parse_source(unwrapped)
    assert isinstance(unwrapped, types.FunctionType)
    ctx = function_context(unwrapped, tree)
    bound = int_bindings(unwrapped, tuple(args), kwargs)
    declared_pure = _declared_pure(pure)
    collector = LoopCollector()
    for stmt in tree.body:
        collector.visit(stmt)
    infos: list[LoopInfo] = []
    for loop, level in collector.loops:
        if isinstance(loop, ast.While):
            infos.append(_while_info(loop, level, tree))
        else:
            infos.append(_for_info(loop, level, tree, unwrapped, ctx, bound, declared_pure))
    return infos


def _declared_pure(pure: Iterable[Any]) -> dict[int, Any]:
    """The functions declared pure by id, with the functions they wrap."""
    declared_pure = {id(p): p for p in pure}
    for p in pure:
        inner = getattr(p, "__wrapped__", None)
        if inner is not None:
            declared_pure[id(inner)] = inner
    return declared_pure


def _while_info(loop: ast.While, level: int, tree: ast.FunctionDef) -> LoopInfo:
    """A ``while`` loop: always sequential."""
    return LoopInfo(
        loop.lineno,
        "while",
        level,
        (),
        ast.unparse(loop.test),
        None,
        None,
        False,
        f"line {loop.lineno}: `while` loop: the number of iterations is only known by running it",
        node=loop,
        tree=tree,
    )


def _for_info(
    loop: ast.For,
    level: int,
    tree: ast.FunctionDef,
    func: types.FunctionType,
    ctx: dict[str, Any],
    bound: dict[str, Any],
    declared_pure: dict[int, Any],
) -> LoopInfo:
    """A ``for`` loop with its estimated iterations and verdict."""
    env = int_env(tree, loop, bound)
    bounds, count = estimate_iterations(loop, env, bound)
    info = LoopInfo(
        loop.lineno,
        "for",
        level,
        target_names(loop.target) or (),
        ast.unparse(loop.iter),
        bounds,
        count,
        False,
        "",
        node=loop,
        tree=tree,
    )
    try:
        if ctx["generator"]:
            raise Sequential("the function is a generator")
        if ctx["frame"]:
            raise Sequential(
                f"the function uses `{ctx['frame'][0]}`, which sees its local variables"
            )
        found = _analyse_for(loop, tree, func, ctx, declared_pure)
    except Sequential as exc:
        info.reason = str(exc)
    else:
        _record(info, found, loop, func, ctx)
    return info


def _record(
    info: LoopInfo,
    found: dict[str, Any],
    loop: ast.For,
    func: types.FunctionType,
    ctx: dict[str, Any],
) -> None:
    """Fill ``info`` for a loop found parallelizable."""
    info.parallelizable = True
    info.effects = found["effects"]
    info.private = found["private"]
    info.read_only = found["read_only"]
    info.guarded = found["guarded"]
    info.guards = found["guards"]
    info.snapshots = found["snapshots"]
    info.assumptions = found["assumptions"]
    info.container_targets = found["containers"]
    info.immutable_targets = found["immutable"]
    info.method_guards = found["method_guards"]
    info.spec = iter_spec(loop.iter, func, ctx["outer"])
    info.reductions = {e.name: e.op for e in info.effects if e.kind != "collector"}
    info.collectors = {e.name: e.op for e in info.effects if e.kind == "collector"}
    info.reason = "iterations are independent"
    if info.assumptions:
        info.reason += "; assumes " + "; ".join(info.assumptions)


def find_parallelizable_loops(
    func: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, pure: Iterable = ()
) -> list[LoopInfo]:
    """The outermost safe loops: a safe loop nested in another safe loop runs in its chunk."""
    return outermost(detect_loops_in_function(func, args, kwargs, pure))


def outermost(infos: list[LoopInfo]) -> list[LoopInfo]:
    """The safe loops among ``infos`` that are not inside another chosen one."""
    chosen: list[LoopInfo] = []
    for info in infos:
        if not info.parallelizable:
            continue
        if any(
            c.node is not None
            and info.node is not None
            and any(n is info.node for n in ast.walk(c.node))
            for c in chosen
        ):
            continue
        chosen.append(info)
    return chosen


def estimate_work_size(loop_info: LoopInfo) -> int | None:
    """Estimated iterations times body statements: a rough, unit-less work figure."""
    if loop_info.iterations is None or loop_info.node is None:
        return None
    statements = sum(isinstance(n, ast.stmt) for n in ast.walk(loop_info.node)) - 1
    return loop_info.iterations * max(1, statements)
