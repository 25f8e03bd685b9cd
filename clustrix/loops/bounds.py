"""The bounds evaluator: how many iterations a loop will run, without running user code.

Range bounds go through :class:`SafeRangeEvaluator`, which only understands int literals, names
bound to ints and ``+ - * // %``; sizes of arguments come from the arguments of an ``explain``
call or of the call being made.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["SafeRangeEvaluator", "estimate_iterations", "int_bindings", "int_env"]


def _assigned_names(node: ast.AST) -> set[str]:
    return {
        sub.id
        for sub in ast.walk(node)
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del))
    }


class SafeRangeEvaluator:
    """Evaluates ``range`` arguments built only from int literals, int names and ``+-*//%``.

    Anything else (calls, attributes, floats) returns None: the bound stays unknown rather than
    running user code, so ``range(counter())`` never calls ``counter``.
    """

    _OPS: dict[type, Callable[[int, int], int]] = {
        ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b,
        ast.FloorDiv: lambda a, b: a // b,
        ast.Mod: lambda a, b: a % b,
    }

    def __init__(self, names: dict[str, int] | None = None) -> None:
        self.names = dict(names or {})

    def evaluate(self, node: ast.expr) -> int | None:
        try:
            return self._eval(node)
        except (ArithmeticError, LookupError, TypeError, ValueError):
            return None

    def _eval(self, node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in self.names:
            return self.names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self._eval(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in self._OPS:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Mult) and max(abs(left), abs(right)) > 10**12:
                raise ValueError("too large")
            return self._OPS[type(node.op)](left, right)
        raise ValueError(f"not a safe integer expression: {ast.unparse(node)}")

    def range_bounds(self, call: ast.Call) -> tuple[int, int, int] | None:
        if call.keywords or not 1 <= len(call.args) <= 3:
            return None
        values = [self.evaluate(arg) for arg in call.args]
        if any(v is None for v in values):
            return None
        ints = [int(v) for v in values if v is not None]
        start, stop, step = (0, ints[0], 1) if len(ints) == 1 else (*ints[:2], 1)[:3]
        if len(ints) == 3:
            start, stop, step = ints
        return None if step == 0 else (start, stop, step)


def int_bindings(func: Callable[..., Any], args: tuple, kwargs: dict | None) -> dict[str, Any]:
    try:
        bound = inspect.signature(func).bind(*args, **(kwargs or {}))
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


def int_env(tree: ast.FunctionDef, loop: ast.AST, bound: dict[str, Any]) -> dict[str, int]:
    env = {k: v for k, v in bound.items() if type(v) is int}
    evaluator = SafeRangeEvaluator(env)
    for stmt in tree.body:
        if stmt is loop or any(n is loop for n in ast.walk(stmt)):
            # the loop is inside this statement: names changed in it before the loop are unknown
            if stmt is not loop:
                for name in _assigned_names(stmt):
                    evaluator.names.pop(name, None)
            break
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            value = evaluator.evaluate(stmt.value)
            if value is None:
                evaluator.names.pop(stmt.targets[0].id, None)
            else:
                evaluator.names[stmt.targets[0].id] = value
        else:
            for name in _assigned_names(stmt):
                evaluator.names.pop(name, None)
    return evaluator.names


def estimate_iterations(
    loop: ast.For, env: dict[str, int], bound: dict[str, Any]
) -> tuple[tuple[int, int, int] | None, int | None]:
    node = loop.iter
    while (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("enumerate", "reversed", "sorted")
        and node.args
    ):
        node = node.args[0]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        bounds = SafeRangeEvaluator(env).range_bounds(node)
        return bounds, (len(range(*bounds)) if bounds else None)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip":
        sizes = [_sized(arg, bound) for arg in node.args]
        return None, (min(sizes) if sizes and None not in sizes else None)  # type: ignore[type-var]
    return None, _sized(node, bound)


def _sized(node: ast.expr, bound: dict[str, Any]) -> int | None:
    if isinstance(node, ast.Name) and node.id in bound:
        value = bound[node.id]
        if isinstance(value, (list, tuple, dict, set, str, range, bytes)):
            return len(value)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in bound
        and isinstance(bound[node.func.value.id], dict)
    ):
        return len(bound[node.func.value.id])
    if isinstance(node, (ast.Tuple, ast.List)):
        return len(node.elts)
    return None
