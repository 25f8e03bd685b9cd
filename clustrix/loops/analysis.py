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

The pieces: :mod:`.purity` (the effect tables), :mod:`.bounds` (the bounds evaluator) and
:mod:`.body` (the ``ast.NodeVisitor`` that walks bodies). Nothing here runs user code.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .body import LoopBodyVisitor
from .bounds import SafeRangeEvaluator, estimate_iterations, int_bindings, int_env
from .effects import Effect
from .scope import Scope, Sequential
from .syntax import SourceUnavailable, parse_source, stored_names, target_names
from .vetted import FRAME_NAMES

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

COMBINATORS = {"enumerate": enumerate, "zip": zip, "reversed": reversed}


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


# --------------------------------------------------------------------------- function context


class _LoopCollector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.loops: list[tuple[ast.For | ast.While, int]] = []
        self.level = 0

    def _loop(self, node: ast.For | ast.While) -> None:
        self.loops.append((node, self.level))
        self.level += 1
        self.generic_visit(node)
        self.level -= 1

    visit_For = _loop
    visit_While = _loop

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        return  # loops of nested functions are not this function's loops

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]
    visit_Lambda = visit_FunctionDef  # type: ignore[assignment]


def _function_context(func: types.FunctionType, tree: ast.FunctionDef) -> dict[str, Any]:
    declared: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
    params = {a.arg for a in ast.walk(tree.args) if isinstance(a, ast.arg)}
    outer = (stored_names(tree.body) | params | set(func.__code__.co_freevars)) - declared
    frame = sorted(
        {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in FRAME_NAMES}
    )
    generator = any(
        isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in _own_nodes(tree.body)
    )
    return {
        "declared": declared,
        "outer": outer,
        "freevars": tuple(func.__code__.co_freevars),
        "frame": frame,
        "generator": generator,
    }


def _iterated_names(node: ast.expr) -> set[str]:
    """Names in the iterable expression, except those only used to compute ``range`` bounds."""
    names: set[str] = set()
    stack = [node]
    while stack:
        sub = stack.pop()
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "range":
            continue  # a range holds ints, not the objects its bounds were computed from
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        stack.extend(ast.iter_child_nodes(sub))
    return names


def _method_class(func: types.FunctionType, tree: ast.FunctionDef) -> tuple[str | None, Any]:
    """For a method defined in a module-level class: its instance parameter and the class."""
    parts = func.__qualname__.split(".")
    if len(parts) != 2 or not tree.args.args:
        return None, None
    cls = func.__globals__.get(parts[0])
    if not isinstance(cls, type) or inspect.getattr_static(cls, parts[1], None) is not func:
        return None, None
    return tree.args.args[0].arg, cls


def _own_nodes(stmts: list[ast.stmt]) -> Iterable[ast.AST]:
    """Nodes of the function itself, not of functions or classes defined in it."""
    stack: list[ast.AST] = list(stmts)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _uses_outside(tree: ast.FunctionDef, loop: ast.For) -> set[str]:
    """Names read or deleted outside ``loop``'s body (anywhere else in the function)."""
    inside = {id(n) for stmt in loop.body for n in ast.walk(stmt)}
    return {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name)
        and isinstance(n.ctx, (ast.Load, ast.Del))
        and id(n) not in inside
    }


def _iter_spec(node: ast.expr, func: types.FunctionType, outer: set[str]) -> Any:
    """How the iterable is rebuilt at run time: the expression, or a combinator of parts."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in COMBINATORS
        and node.func.id not in outer
        and node.func.id not in func.__globals__
        and getattr(builtins, node.func.id) is COMBINATORS[node.func.id]
        and node.args
        and not any(isinstance(a, ast.Starred) for a in node.args)
        and all(k.arg is not None for k in node.keywords)
    ):
        name = node.func.id
        iterables = range(len(node.args)) if name == "zip" else range(1)
        args = [
            _iter_spec(a, func, outer) if i in iterables else a for i, a in enumerate(node.args)
        ]
        return ("combine", name, args, node.keywords)
    return node


def _is_builtin_call(node: ast.expr, name: str, func: types.FunctionType, outer: set[str]) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == name
        and name not in outer
        and name not in func.__globals__
    )


def _immutable_targets(loop: ast.For, func: types.FunctionType, outer: set[str]) -> set[str]:
    """Loop variables certainly bound to ints: those of ``range`` and ``enumerate``'s counter."""
    if _is_builtin_call(loop.iter, "range", func, outer):
        return set(target_names(loop.target) or ())
    if (
        _is_builtin_call(loop.iter, "enumerate", func, outer)
        and isinstance(loop.target, ast.Tuple)
        and len(loop.target.elts) == 2
        and isinstance(loop.target.elts[0], ast.Name)
    ):
        return {loop.target.elts[0].id}
    return set()


def _stored_names(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _definitely_assigned(stmt: ast.stmt) -> set[str]:
    """Names bound by ``stmt`` on every path through it that does not raise."""
    if isinstance(stmt, ast.Assign):
        return set().union(*(_stored_names(t) for t in stmt.targets))
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return _stored_names(stmt.target)
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).partition(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, ast.With):
        targets = [i.optional_vars for i in stmt.items if i.optional_vars is not None]
        bound = set().union(*(_stored_names(t) for t in targets))
        return bound.union(*(_definitely_assigned(s) for s in stmt.body))
    if isinstance(stmt, ast.If):
        body = set().union(*(_definitely_assigned(s) for s in stmt.body))
        other = set().union(*(_definitely_assigned(s) for s in stmt.orelse))
        return body & other
    return set()  # loops may not run, handlers may not run: nothing is certain


def _bound_before(tree: ast.FunctionDef, loop: ast.AST) -> set[str]:
    """Locals certainly bound when ``loop`` starts (parameters, earlier straight-line code).

    A read-only value is evaluated once before the iterations are spread; a name bound only
    later (or only on some paths) would fail there although a sequential run might never
    read it, so such loops stay sequential.
    """
    bound = {a.arg for a in ast.walk(tree.args) if isinstance(a, ast.arg)}

    def contains(stmt: ast.AST) -> bool:
        return any(node is loop for node in ast.walk(stmt))

    def descend(stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            if stmt is loop:
                return
            if not contains(stmt):
                bound.update(_definitely_assigned(stmt))
                continue
            if isinstance(stmt, (ast.For, ast.AsyncFor)) and contains(ast.Module(stmt.body, [])):
                bound.update(_stored_names(stmt.target))
            if isinstance(stmt, ast.With):
                for item in stmt.items:
                    if item.optional_vars is not None:
                        bound.update(_stored_names(item.optional_vars))
            blocks = [getattr(stmt, f, None) for f in ("body", "orelse", "finalbody")]
            blocks += [h.body for h in getattr(stmt, "handlers", [])]
            for block in blocks:
                if isinstance(block, list) and any(contains(s) for s in block):
                    descend(block)
                    return
            return

    descend(tree.body)
    return bound


# --------------------------------------------------------------------------- one loop


def _analyse_for(
    loop: ast.For, tree: ast.FunctionDef, func: types.FunctionType, ctx: dict[str, Any], pure: dict
) -> dict[str, Any]:
    targets = target_names(loop.target)
    if targets is None:
        raise Sequential(
            f"line {loop.lineno}: loop target `{ast.unparse(loop.target)}` is not "
            "a plain name or tuple of names"
        )
    for name in targets:
        if name in ctx["declared"]:
            raise Sequential(f"line {loop.lineno}: loop variable `{name}` is global/nonlocal")
    iter_names = _iterated_names(loop.iter)
    scope = Scope(func, func.__globals__, set(ctx["outer"]), set(ctx["declared"]), pure)
    scope.self_name, scope.self_class = _method_class(func, tree)
    visitor = LoopBodyVisitor(scope, loop, _immutable_targets(loop, func, ctx["outer"]), iter_names)
    visitor.body(loop.body)
    effect_names: dict[str, Effect] = {}
    for effect in visitor.effects:
        effect_names.setdefault(effect.name, effect)
    for name, effect in effect_names.items():
        if name in visitor.reads:
            raise Sequential(
                f"line {effect.line}: `{name}` is updated as a {effect.kind} but "
                "also read elsewhere in the body"
            )
    # a name written by the loop and read in the iterable is refused by the visitor: such a
    # name is either private (assigned in the body) or an effect target excluded there
    for name in iter_names & set(visitor.local):
        if name not in targets:
            raise Sequential(
                f"line {loop.lineno}: `{name}` is assigned in the body and read by the iterable"
            )
    private = sorted(set(visitor.local) - ctx["declared"])
    after = _uses_outside(tree, loop)
    for name in private:
        if name in after and name not in targets:
            raise Sequential(
                f"`{name}` (assigned in the loop at line {loop.lineno}) is used "
                "outside the loop: its value would be the last iteration's"
            )
    outer_reads = (visitor.reads - set(private)) & ctx["outer"]
    read_only = sorted(outer_reads - set(effect_names))
    bound = _bound_before(tree, loop) | set(ctx["freevars"])
    for name in read_only + sorted(effect_names):
        if name not in bound:
            raise Sequential(
                f"line {loop.lineno}: `{name}` is used in the loop but may not be assigned "
                "when the loop starts"
            )
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
    ctx = _function_context(unwrapped, tree)
    bound = int_bindings(unwrapped, tuple(args), kwargs)
    declared_pure = {id(p): p for p in pure}
    for p in pure:
        inner = getattr(p, "__wrapped__", None)
        if inner is not None:
            declared_pure[id(inner)] = inner
    collector = _LoopCollector()
    for stmt in tree.body:
        collector.visit(stmt)
    infos: list[LoopInfo] = []
    for loop, level in collector.loops:
        if isinstance(loop, ast.While):
            infos.append(
                LoopInfo(
                    loop.lineno,
                    "while",
                    level,
                    (),
                    ast.unparse(loop.test),
                    None,
                    None,
                    False,
                    f"line {loop.lineno}: `while` loop: the number of "
                    "iterations is only known by running it",
                    node=loop,
                    tree=tree,
                )
            )
            continue
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
            found = _analyse_for(loop, tree, unwrapped, ctx, declared_pure)
        except Sequential as exc:
            info.reason = str(exc)
        else:
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
            info.spec = _iter_spec(loop.iter, unwrapped, ctx["outer"])
            info.reductions = {e.name: e.op for e in info.effects if e.kind != "collector"}
            info.collectors = {e.name: e.op for e in info.effects if e.kind == "collector"}
            info.reason = "iterations are independent"
            if info.assumptions:
                info.reason += "; assumes " + "; ".join(info.assumptions)
        infos.append(info)
    return infos


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
