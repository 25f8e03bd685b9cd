"""What a visitor knows about the code around what it analyses, and how it refuses a loop.

:class:`Scope` describes the function around the analysed code; :class:`Sequential` carries the
reason a loop must run in order; :func:`fresh_names` finds the private names whose every binding
is a new object (so that changing them in place touches nothing shared between iterations).
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import purity
from .syntax import dotted_name

__all__ = ["UNRESOLVED", "Scope", "Sequential", "fresh_names", "is_fresh_expr"]


class Sequential(Exception):
    """Raised inside the analysis with the reason a loop must run in order."""


UNRESOLVED = object()


@dataclass
class Scope:
    """What a visitor needs to know about the function around the code it analyses."""

    func: types.FunctionType
    globals: dict[str, Any]
    outer: set[str]  # names of the function's locals (and free variables) outside this code
    declared: set[str]  # names declared global or nonlocal in the function
    pure_declared: dict[int, Any] = field(default_factory=dict)
    guards: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)
    snapshots: dict[int, tuple[Any, set[str]]] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)
    self_name: str | None = None  # the instance parameter of a method, and its class
    self_class: type | None = None
    method_guards: list[tuple[str, str, Any]] = field(default_factory=list)


def is_fresh_expr(node: ast.expr | None, resolve: Callable[[str], Any]) -> bool:
    """Whether ``node`` always evaluates to a new (or immutable) object, never an existing one."""
    if node is None:
        return False
    if isinstance(
        node,
        (
            ast.Constant,
            ast.JoinedStr,
            ast.BinOp,
            ast.UnaryOp,
            ast.Compare,
            ast.List,
            ast.Dict,
            ast.Set,
            ast.ListComp,
            ast.DictComp,
            ast.SetComp,
        ),
    ):
        return True
    if isinstance(node, ast.Tuple):
        return True  # immutable; its items are not written through it (item stores refused)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, (ast.Name, ast.Attribute)):
            dotted = dotted_name(func)
            if dotted is not None:
                obj = resolve(dotted)
                if obj is not UNRESOLVED and purity.returns_fresh(obj):
                    return True
        if isinstance(func, ast.Attribute) and func.attr in purity.PURE_METHODS:
            # str/number methods give new immutable values; container ones copies
            return func.attr not in {"get", "item", "reshape", "ravel", "squeeze", "transpose"}
    return False


def fresh_names(stmts: list[ast.stmt], local: set[str], visitor_resolve: Any) -> set[str]:
    """Private names whose every binding in ``stmts`` is a new object."""
    fresh = set(local)
    for node in ast.walk(ast.Module(body=stmts, type_ignores=[])):
        if isinstance(node, ast.Assign):
            ok = is_fresh_expr(node.value, visitor_resolve)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    if not ok:
                        fresh.discard(target.id)
                else:
                    for n in ast.walk(target):
                        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                            fresh.discard(n.id)
        elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)) or isinstance(
            node, ast.NamedExpr
        ):
            if not is_fresh_expr(node.value, visitor_resolve):
                fresh.discard(node.target.id)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            for n in ast.walk(node.target):
                if isinstance(n, ast.Name):
                    fresh.discard(n.id)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    for n in ast.walk(item.optional_vars):
                        if isinstance(n, ast.Name):
                            fresh.discard(n.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            fresh.discard(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                fresh.discard((alias.asname or alias.name).partition(".")[0])
    return fresh
