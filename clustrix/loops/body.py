"""The body analyser: an ``ast.NodeVisitor`` that proves a loop body (or a helper) pure.

Two visitors share the rules on expressions and calls (:class:`PurityVisitor`):

* :class:`LoopBodyVisitor` walks a loop body in order, tracking which private names are surely
  bound, and recognises the *effect statements* (``acc += e``, ``out.append(e)``,
  ``counts[w] = counts.get(w, 0) + 1``...) whose target is an outer object: those are split into
  the values an iteration computes (evaluated in a worker) and the statement that applies them
  (replayed by the caller in iteration order).
* :class:`HelperVisitor` walks a function the body calls, to decide whether it is pure
  (transitively, through the functions it calls in turn).

Every refusal raises :class:`Sequential` with the rule and the line.
"""

from __future__ import annotations

import ast
import builtins
import copy
import inspect
import textwrap
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import purity

__all__ = [
    "Effect",
    "HelperVisitor",
    "LoopBodyVisitor",
    "Scope",
    "Sequential",
    "helper_verdict",
]


class Sequential(Exception):
    """Raised inside the analysis with the reason a loop must run in order."""


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


# names whose use anywhere in a function makes its locals observable or its frame special
FRAME_NAMES = {"locals", "vars", "dir", "eval", "exec", "globals", "super", "__class__"}

# pure functions that call a function argument: which arguments are called
HIGHER_ORDER: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "map": ((0,), ()),
    "filter": ((0,), ()),
    "sorted": ((), ("key",)),
    "min": ((), ("key",)),
    "max": ((), ("key",)),
    "reduce": ((0,), ()),
    "partial": ((0,), ()),
    "starmap": ((0,), ()),
    "accumulate": ((1,), ("func",)),
    "groupby": ((1,), ("key",)),
    "takewhile": ((0,), ()),
    "dropwhile": ((0,), ()),
    "filterfalse": ((0,), ()),
    "cmp_to_key": ((0,), ()),
    "nlargest": ((), ("key",)),
    "nsmallest": ((), ("key",)),
}
# builtins that consume a generator expression argument at once
CONSUMERS = {
    "sum",
    "any",
    "all",
    "min",
    "max",
    "sorted",
    "list",
    "tuple",
    "set",
    "frozenset",
    "dict",
    "join",
    "Counter",
    "array",
    "mean",
    "fsum",
    "prod",
    "extend",
    "update",
    "deque",
}

_BUILTINS = vars(builtins)


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def target_names(target: ast.expr) -> tuple[str, ...] | None:
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


def _is_fresh_expr(node: ast.expr | None, resolve: Callable[[str], Any]) -> bool:
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
            dotted = _dotted(func)
            if dotted is not None:
                obj = resolve(dotted)
                if obj is not _UNRESOLVED and purity.returns_fresh(obj):
                    return True
        if isinstance(func, ast.Attribute) and func.attr in purity.PURE_METHODS:
            # str/number methods give new immutable values; container ones copies
            return func.attr not in {"get", "item", "reshape", "ravel", "squeeze", "transpose"}
    return False


_UNRESOLVED = object()
_IMMUTABLE_HINT = "immutable"


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
        """The object a global dotted name refers to now, or ``_UNRESOLVED``."""
        head, *rest = dotted.split(".")
        if self._in_scoped(head) or head in self.local or head in self.scope.outer:
            return _UNRESOLVED
        if head in self.scope.globals:
            obj = self.scope.globals[head]
        elif head in _BUILTINS:
            obj = _BUILTINS[head]
        else:
            return _UNRESOLVED
        for part in rest:
            if not isinstance(obj, (types.ModuleType, type)):
                return _UNRESOLVED
            try:
                obj = inspect.getattr_static(obj, part)
            except AttributeError:
                return _UNRESOLVED
            if isinstance(obj, (staticmethod, classmethod)):
                return _UNRESOLVED
        return obj

    def _guard_global(self, name: str) -> None:
        obj = self.resolve(name)
        if obj is not _UNRESOLVED:
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
                if obj is _UNRESOLVED:
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
        if obj is _UNRESOLVED:
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
        dotted = _dotted(func)
        root = _root(func)
        root_name = root.id if isinstance(root, ast.Name) else None
        if dotted is not None and root_name is not None:
            obj = self.resolve(dotted)
            if obj is not _UNRESOLVED:  # a module function (np.sqrt, math.floor, ...)
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
                owner = ast.unparse(_root(target))
                raise Sequential(
                    f"line {target.lineno}: {what} assignment `{ast.unparse(target)} = ...` "
                    f"mutates `{owner}`, an object that may be shared between iterations"
                )
            return
        raise Sequential(f"line {target.lineno}: unsupported assignment target")


def _fresh_names(stmts: list[ast.stmt], local: set[str], visitor_resolve: Any) -> set[str]:
    """Private names whose every binding in ``stmts`` is a new object."""
    fresh = set(local)
    for node in ast.walk(ast.Module(body=stmts, type_ignores=[])):
        if isinstance(node, ast.Assign):
            ok = _is_fresh_expr(node.value, visitor_resolve)
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
            if not _is_fresh_expr(node.value, visitor_resolve):
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


# ------------------------------------------------------------------------------- helpers

_HELPERS: dict[types.CodeType, tuple[str | None, set[str], list[str]]] = {}
_IN_PROGRESS: set[types.CodeType] = set()


class HelperVisitor(PurityVisitor):
    """Whether a function called from a loop body is pure: it changes nothing it did not create."""

    def __init__(self, scope: Scope, tree: ast.FunctionDef) -> None:
        params = {a.arg for a in ast.walk(tree.args) if isinstance(a, ast.arg)}
        local = stored_names(tree.body) - params
        super().__init__(scope, local, set())
        self.fresh = _fresh_names(tree.body, local, self.resolve)
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


# ------------------------------------------------------------------------------- loop bodies


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
            [s for s in _statements(loop.body) if id(s) not in effect_stmts and _is_simple(s)]
        )
        for stmt in _statements(loop.body):
            if not _is_simple(stmt):  # compound statements: only their own binding parts
                stores |= _compound_stores(stmt)
        self.local = stores | self.targets
        self.fresh = _fresh_names(loop.body, stores - self.targets, self.resolve)
        self.immutable = set(immutable_targets)
        self.must: set[str] = set(self.targets)
        self.inner_loops = 0

    # ---------------------------------------------------------------- effects

    def _find_effects(self, iter_names: set[str]) -> None:
        candidates: dict[str, list[Effect]] = {}
        in_try = _statements_in_try(self.loop.body)
        for stmt in _statements(self.loop.body):
            if id(stmt) in in_try:
                continue
            effect = _effect_shape(stmt, self.resolve)
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
                for s in _statements(self.loop.body)
                if id(s) not in shaped and name in stored_names([s]) and _is_simple(s)
            ] + [s for s in _statements(self.loop.body) if name in _compound_stores(s)]
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


def _is_simple(stmt: ast.stmt) -> bool:
    return not isinstance(
        stmt, (ast.If, ast.For, ast.While, ast.Try, ast.With, ast.AsyncFor, ast.AsyncWith)
    ) and not (hasattr(ast, "Match") and isinstance(stmt, ast.Match))


def _compound_stores(stmt: ast.stmt) -> set[str]:
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


def _statements(stmts: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Every statement in ``stmts`` and in their blocks (not in nested functions)."""
    for stmt in stmts:
        yield stmt
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for name in ("body", "orelse", "finalbody"):
            yield from _statements(getattr(stmt, name, []) or [])
        for handler in getattr(stmt, "handlers", []) or []:
            yield from _statements(handler.body)
        for case in getattr(stmt, "cases", []) or []:
            yield from _statements(case.body)


def _statements_in_try(stmts: list[ast.stmt]) -> set[int]:
    inside: set[int] = set()
    for stmt in _statements(stmts):
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            inside |= {id(s) for s in _statements(stmt.body)}
            inside |= {id(s) for s in _statements(stmt.orelse)}
            for handler in stmt.handlers:
                inside |= {id(s) for s in _statements(handler.body)}
            inside |= {id(s) for s in _statements(stmt.finalbody)}
    return inside


# ------------------------------------------------------------------------------- effect shapes


class _NotShape(Exception):
    pass


def _split(node: ast.expr, name: str, values: list[ast.expr], resolve: Any, flags: set[str]):
    """``node`` with its parts that do not read ``name`` replaced by value slots."""
    if not any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node)):
        if isinstance(node, ast.Constant):
            return node
        values.append(node)
        return ("slot", len(values) - 1)
    if isinstance(node, ast.Name):
        return node
    if isinstance(node, ast.Subscript):
        flags.add("container")
        if isinstance(node.value, ast.Name):
            flags.add("key:" + ast.dump(node.slice))
        _split(node.value, name, values, resolve, flags)
        if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node.slice)):
            raise _NotShape
        _split(node.slice, name, values, resolve, flags)
        return node
    if isinstance(node, ast.Call):
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            raise _NotShape
        if isinstance(node.func, ast.Attribute):
            if node.func.attr not in purity.TARGET_METHODS:
                raise _NotShape
            if not any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node.func)):
                raise _NotShape
            flags.add("container")
            if node.func.attr in ("get", "setdefault") and isinstance(node.func.value, ast.Name):
                if not node.args:
                    raise _NotShape
                flags.add("key:" + ast.dump(node.args[0]))
            _split(node.func.value, name, values, resolve, flags)
            if any(
                isinstance(n, ast.Name) and n.id == name
                for a in [*node.args, *(k.value for k in node.keywords)]
                for n in ast.walk(a)
            ):
                raise _NotShape
        elif isinstance(node.func, ast.Name):
            obj = resolve(node.func.id)
            if obj not in (max, min) and not purity.is_pure_object(obj):
                raise _NotShape
            flags.add(f"guard:{node.func.id}")
        else:
            raise _NotShape
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(arg, ast.GeneratorExp) and not any(
                isinstance(n, ast.Name) and n.id == name for n in ast.walk(arg)
            ):
                if not (isinstance(node.func, ast.Attribute) and node.func.attr in CONSUMERS):
                    raise _NotShape
                values.append(arg)
                continue
            _split(arg, name, values, resolve, flags)
        return node
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Tuple)):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                _split(child, name, values, resolve, flags)
        return node
    raise _NotShape


def _effect_shape(stmt: ast.stmt, resolve: Any) -> Effect | None:
    """The effect ``stmt`` has on one outer name, if it has the shape of one."""
    if isinstance(stmt, ast.AugAssign):
        target, value = stmt.target, stmt.value
    elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        target, value = stmt.value, None
    else:
        return None
    root = _root(target)
    if not isinstance(root, ast.Name):
        return None
    name = root.id
    values: list[ast.expr] = []
    flags: set[str] = set()
    try:
        if isinstance(stmt, ast.Expr):
            call = stmt.value
            assert isinstance(call, ast.Call)
            if not isinstance(call.func, ast.Attribute) or call.func.attr == "get":
                return None
            _split(call, name, values, resolve, flags)
            kind, op = "collector", call.func.attr
        elif isinstance(target, ast.Name):
            assert value is not None
            mentions = any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(value))
            if isinstance(stmt, ast.Assign) and not mentions:
                return None  # a plain assignment: the name is private
            if isinstance(stmt, ast.AugAssign) and mentions:
                return None
            _split(value, name, values, resolve, flags)
            kind = "reduction"
            if isinstance(stmt, ast.AugAssign):
                op = f"{_OPS.get(type(stmt.op), '?')}="
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
                op = value.func.id
            elif (
                isinstance(value, ast.BinOp)
                and isinstance(value.left, ast.Name)
                and value.left.id == name
            ):
                op = f"= {name} {_OPS.get(type(value.op), '?')} e"
            else:
                op = "= ..."
        elif isinstance(target, ast.Subscript):
            assert value is not None
            _split(target, name, values, resolve, flags)
            if isinstance(stmt, ast.AugAssign) and any(
                isinstance(n, ast.Name) and n.id == name for n in ast.walk(value)
            ):
                return None
            _split(value, name, values, resolve, flags)
            if isinstance(stmt, ast.AugAssign):
                kind, op = "keyed_reduction", f"[k] {_OPS.get(type(stmt.op), '?')}="
            elif any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(value)):
                kind, op = "keyed_reduction", "[k] = f(...[k])"
            else:
                kind, op = "collector", "[k] ="
        else:
            return None
    except _NotShape:
        return None
    keys = {f for f in flags if f.startswith("key:")}
    if len(keys) > 1:
        return None  # reads other items of the target: a dependence between iterations
    if (
        keys
        and isinstance(target, ast.Subscript)
        and isinstance(target.value, ast.Name)
        and keys != {"key:" + ast.dump(target.slice)}
    ):
        return None
    return Effect(kind, name, op, stmt.lineno, stmt, values, container="container" in flags)


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
