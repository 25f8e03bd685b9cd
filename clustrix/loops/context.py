"""The function around a loop: what the analysis reads of it, never judging the loop's body.

Its loops and their nesting (:class:`LoopCollector`), the names it declares, binds and reads
(:func:`function_context`, :func:`uses_outside`), the locals certainly bound when a loop starts
(:func:`bound_before`), and how a loop's iterable is rebuilt at run time (:func:`iter_spec`).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import types
from collections.abc import Iterable
from typing import Any

from .syntax import stored_names, target_names
from .vetted import FRAME_NAMES

__all__ = [
    "COMBINATORS",
    "LoopCollector",
    "bound_before",
    "function_context",
    "immutable_targets",
    "iter_spec",
    "iterated_names",
    "method_class",
    "uses_outside",
]

COMBINATORS = {"enumerate": enumerate, "zip": zip, "reversed": reversed}


class LoopCollector(ast.NodeVisitor):
    """The loops of a function (not of functions defined in it) with their nesting level."""

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


def function_context(func: types.FunctionType, tree: ast.FunctionDef) -> dict[str, Any]:
    """Names the function declares, binds and has as free variables; frame names; generator."""
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


def iterated_names(node: ast.expr) -> set[str]:
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


def method_class(func: types.FunctionType, tree: ast.FunctionDef) -> tuple[str | None, Any]:
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


def uses_outside(tree: ast.FunctionDef, loop: ast.For) -> set[str]:
    """Names read or deleted outside ``loop``'s body (anywhere else in the function)."""
    inside = {id(n) for stmt in loop.body for n in ast.walk(stmt)}
    return {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name)
        and isinstance(n.ctx, (ast.Load, ast.Del))
        and id(n) not in inside
    }


def iter_spec(node: ast.expr, func: types.FunctionType, outer: set[str]) -> Any:
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
        args = [iter_spec(a, func, outer) if i in iterables else a for i, a in enumerate(node.args)]
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


def immutable_targets(loop: ast.For, func: types.FunctionType, outer: set[str]) -> set[str]:
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


def bound_before(tree: ast.FunctionDef, loop: ast.AST) -> set[str]:
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
