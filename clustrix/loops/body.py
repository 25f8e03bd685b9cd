"""The body analyser: an ``ast.NodeVisitor`` that proves a loop body pure.

:class:`LoopBodyVisitor` applies the rules it shares with the functions a body calls
(:class:`.rules.PurityVisitor`; a called function is judged by :class:`.rules.HelperVisitor`).
It walks a loop body in order, tracking which private names are surely bound, and recognises
the *effect statements* (``acc += e``, ``out.append(e)``, ``counts[w] = counts.get(w, 0) + 1``...)
whose target is an outer object: those are split into the values an iteration computes
(evaluated in a worker) and the statement that applies them (replayed by the caller in iteration
order; see :mod:`.effects`).

Every refusal raises :class:`Sequential` with the rule and the line.
"""

from __future__ import annotations

import ast
from typing import Any

from .effects import Effect, effect_shape
from .rules import HelperVisitor, PurityVisitor, helper_verdict
from .scope import Scope, Sequential, fresh_names
from .syntax import (
    all_statements,
    compound_stores,
    is_simple,
    statements_in_try,
    stored_names,
    target_names,
)

__all__ = [
    "Effect",
    "HelperVisitor",
    "LoopBodyVisitor",
    "Scope",
    "Sequential",
    "helper_verdict",
]


class LoopBodyVisitor(PurityVisitor):
    """One ordered pass over a loop body with the set of private names surely bound."""

    def __init__(
        self, scope: Scope, loop: ast.For, immutable_targets: set[str], iter_names: set[str]
    ) -> None:
        self.loop = loop
        self.targets = set(target_names(loop.target) or ())
        self.effects: list[Effect] = []
        self.effect_nodes: dict[int, Effect] = {}
        super().__init__(scope, set(), set())
        self._find_effects(iter_names)
        effect_stmts = {id(e.node) for e in self.effects}
        stores = stored_names(
            [s for s in all_statements(loop.body) if id(s) not in effect_stmts and is_simple(s)]
        )
        for stmt in all_statements(loop.body):
            if not is_simple(stmt):  # compound statements: only their own binding parts
                stores |= compound_stores(stmt)
        self.local = stores | self.targets
        self.fresh = fresh_names(loop.body, stores - self.targets, self.resolve)
        self.immutable = set(immutable_targets)
        self.must: set[str] = set(self.targets)
        self.inner_loops = 0

    # ---------------------------------------------------------------- effects

    def _find_effects(self, iter_names: set[str]) -> None:
        candidates: dict[str, list[Effect]] = {}
        in_try = statements_in_try(self.loop.body)
        for stmt in all_statements(self.loop.body):
            if id(stmt) in in_try:
                continue
            effect = effect_shape(stmt, self.resolve)
            if effect is not None:
                candidates.setdefault(effect.name, []).append(effect)
        for name, effects in candidates.items():
            if (
                name in self.targets
                or name in self.scope.declared
                or name not in self.scope.outer
                or name in iter_names
            ):
                continue
            shaped = {id(e.node) for e in effects}
            other_stores = [
                s
                for s in all_statements(self.loop.body)
                if id(s) not in shaped and name in stored_names([s]) and is_simple(s)
            ] + [s for s in all_statements(self.loop.body) if name in compound_stores(s)]
            if other_stores:
                continue
            for effect in effects:
                self.effects.append(effect)
                self.effect_nodes[id(effect.node)] = effect
        self.effects.sort(key=lambda e: (e.node.lineno, e.node.col_offset))

    # ---------------------------------------------------------------- names

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in self.scope.declared and not self._in_scoped(name):
            raise Sequential(
                f"line {node.lineno}: `{name}` is declared global/nonlocal in the function"
            )
        if (
            isinstance(node.ctx, ast.Load)
            and name in self.local
            and not self._in_scoped(name)
            and name not in self.must
        ):
            raise Sequential(
                f"`{name}` is read at line {node.lineno} before it is assigned in the "
                "iteration: its value is carried from the previous iteration"
            )
        super().visit_Name(node)

    def store_name(self, target: ast.expr, value: ast.expr | None) -> None:
        self.visit_store(target)
        self.must.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    # ---------------------------------------------------------------- statements

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.stmt) and id(node) in self.effect_nodes:
            for value in self.effect_nodes[id(node)].values:
                if isinstance(value, ast.GeneratorExp):
                    self._consumed_generator(value)
                else:
                    self.visit(value)
            return None
        return super().visit(node)

    def body(self, stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            self.visit(stmt)

    def visit_Expr(self, node: ast.Expr) -> None:
        self.visit(node.value)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.store_name(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is None:
            return
        self.visit(node.value)
        self.store_name(node.target, node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        target = node.target
        if isinstance(target, ast.Name):
            self.visit_Name(ast.Name(target.id, ast.Load(), lineno=node.lineno))
            self.visit(node.value)
            if target.id in self.targets and target.id in self.immutable:
                return
            if target.id in self.fresh and target.id not in self.targets:
                return
            if target.id in self.scope.outer and target.id not in self.local:
                raise Sequential(f"line {node.lineno}: `{target.id}` is changed in place")
            self.guarded.add(id(node))  # only if the value is immutable (checked when run)
            return
        self.visit(node.value)
        self.visit_store(target)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                if target.id not in self.local or target.id in self.targets:
                    raise Sequential(f"line {node.lineno}: `del {target.id}` inside the loop")
                self.must.discard(target.id)
            else:
                self.visit_store(target)

    def visit_Break(self, node: ast.Break) -> None:
        if not self.inner_loops:
            raise Sequential(f"line {node.lineno}: `break` ends the loop early")

    def visit_Continue(self, node: ast.Continue) -> None:
        return None

    def visit_Pass(self, node: ast.Pass) -> None:
        return None

    def visit_Return(self, node: ast.Return) -> None:
        raise Sequential(f"line {node.lineno}: `return` inside the loop")

    def visit_Global(self, node: ast.AST) -> None:
        kind = type(node).__name__.lower()
        raise Sequential(f"line {node.lineno}: `{kind}` inside the loop")  # type: ignore[attr-defined]

    visit_Nonlocal = visit_Global  # type: ignore[assignment]

    def visit_FunctionDef(self, node: ast.AST) -> None:
        name = getattr(node, "name", "")
        raise Sequential(f"line {node.lineno}: defines `{name}` inside the loop")  # type: ignore[attr-defined]

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]

    def _unsupported(self, node: ast.AST) -> None:
        kind = type(node).__name__
        raise Sequential(f"line {node.lineno}: `{kind}` statement is not supported")  # type: ignore[attr-defined]

    visit_With = visit_AsyncWith = visit_AsyncFor = visit_Match = _unsupported  # type: ignore[assignment]
    visit_Import = visit_ImportFrom = _unsupported  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        before = set(self.must)
        self.body(node.body)
        after_body = self.must
        self.must = set(before)
        self.body(node.orelse)
        self.must = before | (after_body & self.must)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        before = set(self.must)
        self.store_name(node.target, None)
        self._inner(node)
        self.must = before

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        before = set(self.must)
        self._inner(node)
        self.must = before

    def _inner(self, node: ast.For | ast.While) -> None:
        self.inner_loops += 1
        try:
            self.body(node.body)
        finally:
            self.inner_loops -= 1
        self.body(node.orelse)

    def visit_Try(self, node: ast.Try) -> None:
        self.in_try += 1
        before = set(self.must)
        try:
            self.body(node.body)
            self.body(node.orelse)
        finally:
            self.in_try -= 1
        done = self.must if node.handlers else set(before)
        for handler in node.handlers:
            if handler.type is not None:
                self.visit(handler.type)
            self.must = set(before) | ({handler.name} if handler.name else set())
            self.body(handler.body)
            done &= self.must
        self.must = before | done
        self.body(node.finalbody)

    visit_TryStar = visit_Try  # type: ignore[assignment]

    def visit_Raise(self, node: ast.Raise) -> None:
        if not self.in_try and isinstance(node.exc, ast.Call):
            self._raise_calls = getattr(self, "_raise_calls", set()) | {id(node.exc)}
        if node.exc is not None:
            self.visit(node.exc)
        if node.cause is not None:
            self.visit(node.cause)

    def visit_Assert(self, node: ast.Assert) -> None:
        self.visit(node.test)
        if node.msg is not None:
            self.visit(node.msg)
