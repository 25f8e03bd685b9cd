"""The purity rules shared by loop bodies and the functions they call.

:class:`PurityVisitor` holds the rules on expressions, calls, names, stores and nested scopes.
:class:`HelperVisitor` applies them to a function a loop body calls, and :func:`helper_verdict`
decides (and remembers) whether such a function is pure, transitively through the functions it
calls in turn. The loop body's own visitor, which adds effects and the order of bindings, is
:class:`.body.LoopBodyVisitor`. Every refusal raises :class:`.scope.Sequential`.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import types
from collections.abc import Iterable
from typing import Any

from . import purity
from .scope import UNRESOLVED, Scope, Sequential, fresh_names
from .syntax import SourceUnavailable, chain_root, dotted_name, parse_source, stored_names
from .vetted import CONSUMERS, FRAME_NAMES, HIGHER_ORDER

__all__ = ["HelperVisitor", "PurityVisitor", "helper_verdict"]

_BUILTINS = vars(builtins)


class PurityVisitor(ast.NodeVisitor):
    """The rules shared by loop bodies and helpers: calls, names, stores, nested scopes."""

    def __init__(self, scope: Scope, local: set[str], fresh: set[str]) -> None:
        self.scope = scope
        self.local = local  # names bound in the analysed code (its private names)
        self.fresh = fresh  # private names whose every binding is a new object
        self.scoped: list[set[str]] = []  # names of enclosing comprehensions and lambdas
        self.reads: set[str] = set()
        self.globals_read: set[str] = set()
        self.guarded: set[int] = set()  # ids of calls/statements checked at run time
        self.in_try = 0

    # ---------------------------------------------------------------- names

    def _in_scoped(self, name: str) -> bool:
        return any(name in s for s in self.scoped)

    def resolve(self, dotted: str) -> Any:
        """The object a global dotted name refers to now, or ``UNRESOLVED``."""
        head, *rest = dotted.split(".")
        if self._in_scoped(head) or head in self.local or head in self.scope.outer:
            return UNRESOLVED
        if head in self.scope.globals:
            obj = self.scope.globals[head]
        elif head in _BUILTINS:
            obj = _BUILTINS[head]
        else:
            return UNRESOLVED
        for part in rest:
            if not isinstance(obj, (types.ModuleType, type)):
                return UNRESOLVED
            try:
                obj = inspect.getattr_static(obj, part)
            except AttributeError:
                return UNRESOLVED
            if isinstance(obj, (staticmethod, classmethod)):
                return UNRESOLVED
        return obj

    def _guard_global(self, name: str) -> None:
        obj = self.resolve(name)
        if obj is not UNRESOLVED:
            self.scope.guards.append((self.scope.globals, name, obj))

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if isinstance(node.ctx, ast.Load):
            self.reads.add(name)
            if name in self.scope.declared and not self._in_scoped(name):
                raise Sequential(
                    f"line {node.lineno}: `{name}` is declared global/nonlocal in the function"
                )
            if name in FRAME_NAMES:
                raise Sequential(f"line {node.lineno}: `{name}` sees the function's frame")
            if (
                not self._in_scoped(name)
                and name not in self.local
                and name not in self.scope.outer
            ):
                self.globals_read.add(name)
                obj = self.resolve(name)
                if obj is UNRESOLVED:
                    return  # a NameError, as in plain Python
                self._guard_global(name)
                self._check_function_value(obj, name, node.lineno)

    def _check_function_value(self, obj: Any, name: str, line: int) -> None:
        """A function named in the body (called or passed on) must be pure."""
        if isinstance(obj, (types.ModuleType, type)) or not callable(obj):
            return
        reason = self._function_reason(obj, name)
        if reason is not None:
            raise Sequential(f"line {line}: {reason}")

    def _function_reason(self, obj: Any, name: str) -> str | None:
        if purity.is_pure_object(obj):
            return None
        if id(obj) in self.scope.pure_declared:
            note = f"`{name}` is declared pure (pure=[...])"
            if note not in self.scope.assumptions:
                self.scope.assumptions.append(note)
            return None
        wrapped = getattr(obj, "__wrapped__", None)
        target = obj
        if not isinstance(obj, types.FunctionType) and isinstance(wrapped, types.FunctionType):
            target = wrapped  # a decorated function (@cluster, functools.wraps)
        if isinstance(target, types.FunctionType):
            reason = helper_verdict(target, self.scope)
            if reason is None:
                return None
            return f"`{name}()` is not pure: {reason}"
        return f"`{name}()` is not known to be pure"

    # ---------------------------------------------------------------- nested scopes

    def _visit_scoped(self, names: set[str], nodes: Iterable[ast.AST]) -> None:
        self.scoped.append(names)
        try:
            for node in nodes:
                self.visit(node)
        finally:
            self.scoped.pop()

    def _comprehension(self, node: ast.AST, parts: list[ast.expr]) -> None:
        names: set[str] = set()
        self.scoped.append(names)
        try:
            for gen in node.generators:  # type: ignore[attr-defined]
                self.visit(gen.iter)
                names |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
                for cond in gen.ifs:
                    self.visit(cond)
            for part in parts:
                self.visit(part)
        finally:
            self.scoped.pop()

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        raise Sequential(
            f"line {node.lineno}: a generator expression that is not consumed at once "
            "(its values would be computed later, elsewhere)"
        )

    def _consumed_generator(self, node: ast.GeneratorExp) -> None:
        self._comprehension(node, [node.elt])

    def visit_Lambda(self, node: ast.Lambda) -> None:
        raise Sequential(
            f"line {node.lineno}: a function created in the loop (`lambda`) may outlive the "
            "iteration and see later values of its variables"
        )

    def _called_lambda(self, node: ast.Lambda) -> None:
        params = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        self._visit_scoped(params, [node.body])

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.store_name(node.target, node.value)

    def visit_Await(self, node: ast.Await) -> None:
        raise Sequential(f"line {node.lineno}: `await` in the body")

    def visit_Yield(self, node: ast.AST) -> None:
        raise Sequential(f"line {node.lineno}: `yield` in the body")  # type: ignore[attr-defined]

    visit_YieldFrom = visit_Yield  # type: ignore[assignment]

    # ---------------------------------------------------------------- calls

    def visit_Call(self, node: ast.Call) -> None:
        line = node.lineno
        for kw in node.keywords:
            if kw.arg == "out":
                raise Sequential(f"line {line}: `out=` writes into an existing array")
        func = node.func
        called = self._callee_name(func)
        if isinstance(func, ast.Name):
            self._call_name(node, func)
        elif isinstance(func, ast.Attribute):
            self._call_attribute(node, func)
        else:
            raise Sequential(
                f"line {line}: calls `{ast.unparse(func)}`, which the analysis cannot see"
            )
        self._call_arguments(node, called)

    def _callee_name(self, func: ast.expr) -> str:
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
        return ""

    def _call_arguments(self, node: ast.Call, called: str) -> None:
        positions, keywords = HIGHER_ORDER.get(called, ((), ()))
        only_generator = len(node.args) == 1 and not node.keywords
        for index, arg in enumerate(node.args):
            if isinstance(arg, ast.Lambda) and index in positions:
                self._called_lambda(arg)
            elif isinstance(arg, ast.GeneratorExp) and (called in CONSUMERS or only_generator):
                if called not in CONSUMERS:
                    raise Sequential(
                        f"line {arg.lineno}: a generator expression passed to `{called}()`"
                    )
                self._consumed_generator(arg)
            else:
                self.visit(arg)
        for kw in node.keywords:
            if isinstance(kw.value, ast.Lambda) and kw.arg in keywords:
                self._called_lambda(kw.value)
            else:
                self.visit(kw.value)

    def _call_name(self, node: ast.Call, func: ast.Name) -> None:
        name, line = func.id, node.lineno
        if self._in_scoped(name) or name in self.local or name in self.scope.outer:
            self.visit_Name(func)
            raise Sequential(
                f"line {line}: calls `{name}`, a value of the function (not known to be pure)"
            )
        if name in self.scope.declared:
            raise Sequential(f"line {line}: `{name}` is declared global/nonlocal in the function")
        self.globals_read.add(name)
        obj = self.resolve(name)
        if obj is UNRESOLVED:
            raise Sequential(f"line {line}: `{name}` is not defined when the loop is analysed")
        self._guard_global(name)
        if obj is print:
            if any(kw.arg == "file" for kw in node.keywords):
                raise Sequential(f"line {line}: `print(file=...)` writes to a file")
            return
        if self._raised_here(node) and isinstance(obj, type):
            return  # `raise Error(...)`: the exception is re-raised by the caller's own run
        if isinstance(obj, type) and not purity.is_pure_object(obj):
            raise Sequential(f"line {line}: constructs `{name}`, whose code is not analysed")
        reason = self._function_reason(obj, name)
        if reason is not None:
            raise Sequential(f"line {line}: {reason}")

    def _raised_here(self, node: ast.Call) -> bool:
        return id(node) in getattr(self, "_raise_calls", set())

    def _call_attribute(self, node: ast.Call, func: ast.Attribute) -> None:
        line, method = node.lineno, func.attr
        dotted = dotted_name(func)
        root = chain_root(func)
        root_name = root.id if isinstance(root, ast.Name) else None
        if dotted is not None and root_name is not None:
            obj = self.resolve(dotted)
            if obj is not UNRESOLVED:  # a module function (np.sqrt, math.floor, ...)
                self.globals_read.add(root_name)
                self._guard_global(root_name)
                if isinstance(obj, type) and not purity.is_pure_object(obj):
                    raise Sequential(f"line {line}: constructs `{dotted}`, not analysed")
                reason = self._function_reason(obj, dotted)
                if reason is not None:
                    raise Sequential(f"line {line}: {reason}")
                return
        if (
            isinstance(func.value, ast.Name)
            and func.value.id == self.scope.self_name
            and self.scope.self_class is not None
            and func.value.id not in self.local
        ):
            self.visit(func.value)
            method_fn = inspect.getattr_static(self.scope.self_class, method, None)
            if isinstance(method_fn, types.FunctionType):
                reason = self._function_reason(method_fn, f"{func.value.id}.{method}")
                if reason is not None:
                    raise Sequential(f"line {line}: {reason}")
                self.scope.method_guards.append((func.value.id, method, method_fn))
                return
        self.visit(func.value)
        if (
            isinstance(func.value, ast.Name)
            and root_name in self.fresh
            and not self._in_scoped(root_name)
        ):
            return  # a method of an object created in this iteration
        if method in purity.PURE_METHODS:
            self.method_on_unknown(node, func)
            return
        owner = root_name or ast.unparse(func.value)
        if root_name is not None and root_name in self.local:
            raise Sequential(
                f"line {line}: `{ast.unparse(func)}()` may mutate an object shared with "
                f"other iterations (`{owner}` is not an object created in the iteration)"
            )
        raise Sequential(f"line {line}: `{ast.unparse(func)}()` may mutate outer object `{owner}`")

    def method_on_unknown(self, node: ast.Call, func: ast.Attribute) -> None:
        """A vetted method name on a receiver whose type is only known at run time."""
        self.guarded.add(id(node))

    # ---------------------------------------------------------------- stores

    def store_name(self, target: ast.expr, value: ast.expr | None) -> None:
        self.visit_store(target)

    def visit_store(self, target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            if target.id in self.scope.declared:
                raise Sequential(f"line {target.lineno}: assigns global/nonlocal `{target.id}`")
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.visit_store(elt)
            return
        if isinstance(target, ast.Starred):
            self.visit_store(target.value)
            return
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            self.visit(target.value)
            if isinstance(target, ast.Subscript):
                self.visit(target.slice)
            base = target.value
            if not (
                isinstance(base, ast.Name)
                and base.id in self.fresh
                and not self._in_scoped(base.id)
            ):
                what = "attribute" if isinstance(target, ast.Attribute) else "item"
                owner = ast.unparse(chain_root(target))
                raise Sequential(
                    f"line {target.lineno}: {what} assignment `{ast.unparse(target)} = ...` "
                    f"mutates `{owner}`, an object that may be shared between iterations"
                )
            return
        raise Sequential(f"line {target.lineno}: unsupported assignment target")


# ------------------------------------------------------------------------------- helpers

_HELPERS: dict[types.CodeType, tuple[str | None, set[str], list[str]]] = {}
_IN_PROGRESS: set[types.CodeType] = set()


class HelperVisitor(PurityVisitor):
    """Whether a function called from a loop body is pure: it changes nothing it did not create."""

    def __init__(self, scope: Scope, tree: ast.FunctionDef) -> None:
        params = {a.arg for a in ast.walk(tree.args) if isinstance(a, ast.arg)}
        local = stored_names(tree.body) - params
        super().__init__(scope, local, set())
        self.fresh = fresh_names(tree.body, local, self.resolve)
        self.scope.outer = params | set(scope.func.__code__.co_freevars)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        raise Sequential(f"line {node.lineno}: defines a function")  # type: ignore[attr-defined]

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Global(self, node: ast.Global) -> None:
        raise Sequential(f"line {node.lineno}: `global` statement")

    visit_Nonlocal = visit_Global  # type: ignore[assignment]

    def visit_With(self, node: ast.With) -> None:
        raise Sequential(f"line {node.lineno}: `with` statement")

    visit_AsyncWith = visit_AsyncFor = visit_With  # type: ignore[assignment]

    def visit_Import(self, node: ast.AST) -> None:
        raise Sequential(f"line {node.lineno}: `import` statement")  # type: ignore[attr-defined]

    visit_ImportFrom = visit_Import  # type: ignore[assignment]

    def visit_Match(self, node: ast.AST) -> None:
        raise Sequential(f"line {node.lineno}: `match` statement")  # type: ignore[attr-defined]

    def visit_Raise(self, node: ast.Raise) -> None:
        if not self.in_try and isinstance(node.exc, ast.Call):
            self._raise_calls = getattr(self, "_raise_calls", set()) | {id(node.exc)}
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        self.in_try += 1
        try:
            self.generic_visit(node)
        finally:
            self.in_try -= 1

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit_store(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.visit_store(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        target = node.target
        if isinstance(target, ast.Name):
            if target.id not in self.fresh:
                raise Sequential(
                    f"line {node.lineno}: `{target.id} {ast.unparse(node).split()[1]} ...` may "
                    f"change the object `{target.id}` is bound to in place"
                )
            return
        self.visit_store(target)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if not isinstance(target, ast.Name):
                self.visit_store(target)

    def method_on_unknown(self, node: ast.Call, func: ast.Attribute) -> None:
        note = f"`.{func.attr}()` is the method of a builtin or numpy type"
        if note not in self.scope.assumptions:
            self.scope.assumptions.append(note)


def helper_verdict(func: types.FunctionType, scope: Scope) -> str | None:
    """None if ``func`` is pure, else why not; its global reads join ``scope.snapshots``."""
    code = func.__code__
    if code in _IN_PROGRESS:
        return None  # recursion: pure if the rest of it is
    if code not in _HELPERS:
        _IN_PROGRESS.add(code)
        sub = Scope(func, func.__globals__, set(), set(), scope.pure_declared)
        try:
            tree = parse_source(func)
            if any(
                isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await))
                for stmt in tree.body
                for n in ast.walk(stmt)
            ):
                raise Sequential("it is a generator")
            visitor = HelperVisitor(sub, tree)
            for stmt in tree.body:
                visitor.visit(stmt)
            reason = None
            reads = visitor.globals_read
        except Sequential as exc:
            reason, reads = str(exc) or "not pure", set()
        except SourceUnavailable as exc:
            reason, reads = str(exc), set()
        finally:
            _IN_PROGRESS.discard(code)
        _HELPERS[code] = (reason, reads, sub.assumptions)
        if reason is None:
            for key, value in sub.snapshots.items():
                scope.snapshots.setdefault(key, value)
    reason, reads, assumptions = _HELPERS[code]
    if reason is None:
        entry = scope.snapshots.setdefault(id(func), (func, set()))
        entry[1].update(reads)
        for note in assumptions:
            if note not in scope.assumptions:
                scope.assumptions.append(note)
    return reason
