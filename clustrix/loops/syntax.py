"""The function's syntax: its source parsed to an AST, and what its statements bind.

Reading only: nothing here judges a loop. The visitors (:mod:`.rules`, :mod:`.body`), the effect
shapes (:mod:`.effects`) and the analysis (:mod:`.analysis`) share these walks.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "SourceUnavailable",
    "all_statements",
    "chain_root",
    "compound_stores",
    "dotted_name",
    "is_simple",
    "parse_source",
    "statements_in_try",
    "stored_names",
    "target_names",
]


def dotted_name(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def chain_root(node: ast.expr) -> ast.expr:
    """The expression at the start of a chain of attributes, items and calls."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def target_names(target: ast.expr) -> tuple[str, ...] | None:
    """The names a loop target binds, or None if it is not made of names only."""
    if isinstance(target, ast.Name):
        return (target.id,)
    if isinstance(target, (ast.Tuple, ast.List)):
        names: list[str] = []
        for elt in target.elts:
            sub = target_names(elt)
            if sub is None:
                return None
            names.extend(sub)
        return tuple(names)
    return None


def stored_names(stmts: Iterable[ast.AST]) -> set[str]:
    """Names bound or deleted by ``stmts`` in their own scope (not in comprehensions/lambdas)."""
    names: set[str] = set()

    def walk(node: ast.AST) -> None:
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Lambda):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        if isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        for child in ast.iter_child_nodes(node):
            walk(child)

    for stmt in stmts:
        walk(stmt)
    return names


def is_simple(stmt: ast.stmt) -> bool:
    """Whether ``stmt`` holds no block of statements."""
    return not isinstance(
        stmt, (ast.If, ast.For, ast.While, ast.Try, ast.With, ast.AsyncFor, ast.AsyncWith)
    ) and not (hasattr(ast, "Match") and isinstance(stmt, ast.Match))


def compound_stores(stmt: ast.stmt) -> set[str]:
    """Names a compound statement binds itself (loop targets, `as` names), not in its blocks."""
    names: set[str] = set()
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        names |= {n.id for n in ast.walk(stmt.target) if isinstance(n, ast.Name)}
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        for item in stmt.items:
            if item.optional_vars is not None:
                names |= {n.id for n in ast.walk(item.optional_vars) if isinstance(n, ast.Name)}
    if isinstance(stmt, ast.Try):
        names |= {h.name for h in stmt.handlers if h.name}
    for expr in ast.iter_child_nodes(stmt):
        if isinstance(expr, ast.expr):
            names |= {
                n.target.id
                for n in ast.walk(expr)
                if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name)
            }
    return names


def all_statements(stmts: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Every statement in ``stmts`` and in their blocks (not in nested functions)."""
    for stmt in stmts:
        yield stmt
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for name in ("body", "orelse", "finalbody"):
            yield from all_statements(getattr(stmt, name, []) or [])
        for handler in getattr(stmt, "handlers", []) or []:
            yield from all_statements(handler.body)
        for case in getattr(stmt, "cases", []) or []:
            yield from all_statements(case.body)


def statements_in_try(stmts: list[ast.stmt]) -> set[int]:
    """Ids of the statements inside a ``try`` statement among ``stmts``."""
    inside: set[int] = set()
    for stmt in all_statements(stmts):
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            inside |= {id(s) for s in all_statements(stmt.body)}
            inside |= {id(s) for s in all_statements(stmt.orelse)}
            for handler in stmt.handlers:
                inside |= {id(s) for s in all_statements(handler.body)}
            inside |= {id(s) for s in all_statements(stmt.finalbody)}
    return inside


# ------------------------------------------------------------------------------- source


class SourceUnavailable(Exception):
    """The function's source cannot be read (built-ins, ``exec``-made functions, REPL)."""


def parse_source(func: Callable[..., Any]) -> ast.FunctionDef:
    """The function's AST (decorators removed) with line numbers of the source file."""
    func = inspect.unwrap(func)
    if not isinstance(func, types.FunctionType):
        raise SourceUnavailable(f"source unavailable: {func!r} is not a Python function")
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise SourceUnavailable(f"source unavailable for {func.__qualname__}: {exc}") from None
    try:
        module = ast.parse(source)
    except SyntaxError as exc:
        raise SourceUnavailable(f"source of {func.__qualname__} does not parse: {exc}") from None
    node = module.body[0] if module.body else None
    if not isinstance(node, ast.FunctionDef) or node.name != func.__name__:
        raise SourceUnavailable(f"source unavailable: {func.__qualname__} is not a plain def")
    ast.increment_lineno(
        module,
        func.__code__.co_firstlineno
        - (node.decorator_list[0].lineno if node.decorator_list else node.lineno),
    )
    node.decorator_list = []
    return node
