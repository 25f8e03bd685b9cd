"""Effect statements: the writes to an outer object that a parallel loop replays in order.

An effect statement (``acc += e``, ``out.append(e)``, ``counts[w] = counts.get(w, 0) + 1``...)
changes only one outer name. Its *shape* splits it into the values an iteration computes (the
parts that do not read the name, evaluated in a worker) and the statement that applies them,
replayed by the caller with the values read from a list (:func:`replay_statement`).
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from typing import Any

from . import purity
from .syntax import chain_root
from .vetted import CONSUMERS

__all__ = ["Effect", "effect_shape", "replay_statement"]


@dataclass
class Effect:
    """A statement whose only outer effect is on ``name``, replayed in order by the caller.

    ``values`` are the subexpressions an iteration computes (in a worker); ``replay`` is the
    statement with them replaced by ``__clx_val[i]``, run by the caller.
    """

    kind: str  # "reduction", "keyed_reduction" or "collector"
    name: str
    op: str
    line: int
    node: ast.stmt = field(repr=False)
    values: list[ast.expr] = field(default_factory=list, repr=False)
    container: bool = False  # uses methods or items of the target: its type is checked


# ------------------------------------------------------------------------------- splitting


class _NotShape(Exception):
    pass


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _split(node: ast.expr, name: str, values: list[ast.expr], resolve: Any, flags: set[str]):
    """``node`` with its parts that do not read ``name`` replaced by value slots."""
    if not _mentions(node, name):
        if isinstance(node, ast.Constant):
            return node
        values.append(node)
        return ("slot", len(values) - 1)
    if isinstance(node, ast.Name):
        return node
    if isinstance(node, ast.Subscript):
        _split_subscript(node, name, values, resolve, flags)
        return node
    if isinstance(node, ast.Call):
        _split_call(node, name, values, resolve, flags)
        return node
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Tuple)):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                _split(child, name, values, resolve, flags)
        return node
    raise _NotShape


def _split_subscript(
    node: ast.Subscript, name: str, values: list[ast.expr], resolve: Any, flags: set[str]
) -> None:
    """An item of the target: its key must not read the target itself."""
    flags.add("container")
    if isinstance(node.value, ast.Name):
        flags.add("key:" + ast.dump(node.slice))
    _split(node.value, name, values, resolve, flags)
    if _mentions(node.slice, name):
        raise _NotShape
    _split(node.slice, name, values, resolve, flags)


def _split_call(
    node: ast.Call, name: str, values: list[ast.expr], resolve: Any, flags: set[str]
) -> None:
    """A method of the target, or a vetted function (``max``, ``min``...) of it."""
    if any(isinstance(a, ast.Starred) for a in node.args) or any(
        k.arg is None for k in node.keywords
    ):
        raise _NotShape
    if isinstance(node.func, ast.Attribute):
        _split_target_method(node, node.func, name, values, resolve, flags)
    elif isinstance(node.func, ast.Name):
        obj = resolve(node.func.id)
        if obj not in (max, min) and not purity.is_pure_object(obj):
            raise _NotShape
        flags.add(f"guard:{node.func.id}")
    else:
        raise _NotShape
    for arg in [*node.args, *(k.value for k in node.keywords)]:
        if isinstance(arg, ast.GeneratorExp) and not _mentions(arg, name):
            if not (isinstance(node.func, ast.Attribute) and node.func.attr in CONSUMERS):
                raise _NotShape
            values.append(arg)
            continue
        _split(arg, name, values, resolve, flags)


def _split_target_method(
    node: ast.Call,
    func: ast.Attribute,
    name: str,
    values: list[ast.expr],
    resolve: Any,
    flags: set[str],
) -> None:
    """``target.method(...)``: a method collectors may call, whose arguments do not read it."""
    if func.attr not in purity.TARGET_METHODS:
        raise _NotShape
    if not _mentions(func, name):
        raise _NotShape
    flags.add("container")
    if func.attr in ("get", "setdefault") and isinstance(func.value, ast.Name):
        if not node.args:
            raise _NotShape
        flags.add("key:" + ast.dump(node.args[0]))
    _split(func.value, name, values, resolve, flags)
    if any(_mentions(a, name) for a in [*node.args, *(k.value for k in node.keywords)]):
        raise _NotShape


# ------------------------------------------------------------------------------- shapes


def effect_shape(stmt: ast.stmt, resolve: Any) -> Effect | None:
    """The effect ``stmt`` has on one outer name, if it has the shape of one."""
    parts = _target_and_value(stmt)
    if parts is None:
        return None
    target, value = parts
    root = chain_root(target)
    if not isinstance(root, ast.Name):
        return None
    name = root.id
    values: list[ast.expr] = []
    flags: set[str] = set()
    try:
        shape = _kind_and_op(stmt, target, value, name, values, resolve, flags)
    except _NotShape:
        return None
    if shape is None or not _reads_only_its_key(target, flags):
        return None
    kind, op = shape
    return Effect(kind, name, op, stmt.lineno, stmt, values, container="container" in flags)


def _target_and_value(stmt: ast.stmt) -> tuple[ast.expr, ast.expr | None] | None:
    """What ``stmt`` writes and the value it writes, for the statements an effect can be."""
    if isinstance(stmt, ast.AugAssign):
        return stmt.target, stmt.value
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        return stmt.targets[0], stmt.value
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return stmt.value, None
    return None


def _kind_and_op(
    stmt: ast.stmt,
    target: ast.expr,
    value: ast.expr | None,
    name: str,
    values: list[ast.expr],
    resolve: Any,
    flags: set[str],
) -> tuple[str, str] | None:
    """The effect's kind and operation label, with its values split off (raises _NotShape)."""
    if isinstance(stmt, ast.Expr):
        call = stmt.value
        assert isinstance(call, ast.Call)
        if not isinstance(call.func, ast.Attribute) or call.func.attr == "get":
            return None
        _split(call, name, values, resolve, flags)
        return "collector", call.func.attr
    if isinstance(target, ast.Name):
        assert value is not None
        return _name_reduction(stmt, value, name, values, resolve, flags)
    if isinstance(target, ast.Subscript):
        assert value is not None
        return _item_effect(stmt, target, value, name, values, resolve, flags)
    return None


def _name_reduction(
    stmt: ast.stmt,
    value: ast.expr,
    name: str,
    values: list[ast.expr],
    resolve: Any,
    flags: set[str],
) -> tuple[str, str] | None:
    """``acc += e`` or ``acc = f(acc, e)``: a reduction into the name itself."""
    mentions = _mentions(value, name)
    if isinstance(stmt, ast.Assign) and not mentions:
        return None  # a plain assignment: the name is private
    if isinstance(stmt, ast.AugAssign) and mentions:
        return None
    _split(value, name, values, resolve, flags)
    if isinstance(stmt, ast.AugAssign):
        op = f"{_OPS.get(type(stmt.op), '?')}="
    elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        op = value.func.id
    elif (
        isinstance(value, ast.BinOp) and isinstance(value.left, ast.Name) and value.left.id == name
    ):
        op = f"= {name} {_OPS.get(type(value.op), '?')} e"
    else:
        op = "= ..."
    return "reduction", op


def _item_effect(
    stmt: ast.stmt,
    target: ast.Subscript,
    value: ast.expr,
    name: str,
    values: list[ast.expr],
    resolve: Any,
    flags: set[str],
) -> tuple[str, str] | None:
    """``d[k] op= e``, ``d[k] = f(d[k])`` (keyed reductions) or ``d[k] = e`` (a collector)."""
    _split(target, name, values, resolve, flags)
    if isinstance(stmt, ast.AugAssign) and _mentions(value, name):
        return None
    _split(value, name, values, resolve, flags)
    if isinstance(stmt, ast.AugAssign):
        return "keyed_reduction", f"[k] {_OPS.get(type(stmt.op), '?')}="
    if _mentions(value, name):
        return "keyed_reduction", "[k] = f(...[k])"
    return "collector", "[k] ="


def _reads_only_its_key(target: ast.expr, flags: set[str]) -> bool:
    """Whether the statement reads no item of the target but the one it writes."""
    keys = {f for f in flags if f.startswith("key:")}
    if len(keys) > 1:
        return False  # reads other items of the target: a dependence between iterations
    return not (
        keys
        and isinstance(target, ast.Subscript)
        and isinstance(target.value, ast.Name)
        and keys != {"key:" + ast.dump(target.slice)}
    )


_OPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}


# ------------------------------------------------------------------------------- replay


def replay_statement(effect: Effect, val_name: str) -> ast.stmt:
    """The effect's statement with its value slots read from ``val_name[i]``."""
    slots = {id(v): i for i, v in enumerate(effect.values)}

    class _Replace(ast.NodeTransformer):
        def visit(self, node: ast.AST) -> Any:
            if id(node) in slots:
                index = slots[id(node)]
                return ast.Subscript(
                    ast.Name(val_name, ast.Load()), ast.Constant(index), ast.Load()
                )
            return super().visit(node)

    memo: dict[int, Any] = {}
    stmt = copy.deepcopy(effect.node, memo)
    slots = {id(memo[key]): index for key, index in slots.items()}
    return _Replace().visit(stmt)
