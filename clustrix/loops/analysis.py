"""Read-only analysis of the loops in a function: which ones may run their iterations in parallel.

Why the rules are what they are: a loop is run in parallel only if every iteration can be computed
from values that exist before the loop, and the only effects on state outside the iteration are
*reductions* (``acc += e``) and *collectors* (``out.append(e)``, ``out[k] = e``). Those effects are
not merged by combining partial results; the workers send back each iteration's contributed value
and the caller replays the original statements in iteration order (``acc += v``), so the final
state is bit-identical to the sequential run even for floats, strings and lists.

Assumption (stated in ``explain``): calls to functions and methods that are not known to be impure
(``print``, ``open``, ``random.*``, ``np.random.*``, mutating container methods on outer objects...)
are assumed to be pure: they must not mutate their arguments or global state.

Nothing here evaluates user code: range bounds go through :class:`SafeRangeEvaluator`, which only
understands int literals, names bound to ints and ``+ - * // %``.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LoopInfo",
    "SafeRangeEvaluator",
    "SourceUnavailable",
    "detect_loops_in_function",
    "estimate_work_size",
    "find_parallelizable_loops",
    "parse_function",
]

IMPURE_CALLS = {
    "print",
    "open",
    "input",
    "exec",
    "eval",
    "setattr",
    "delattr",
    "breakpoint",
    "__import__",
    "exit",
    "quit",
    "compile",
}
IMPURE_METHODS = {"write", "writelines", "send", "sendall", "flush", "seed", "shuffle", "setstate"}
IMPURE_MODULES = (
    "random.",
    "np.random.",
    "numpy.random.",
    "subprocess.",
    "shutil.",
    "socket.",
    "logging.",
    "sys.stdout.",
    "sys.stderr.",
)
IMPURE_OS = {
    "remove",
    "unlink",
    "rename",
    "replace",
    "mkdir",
    "makedirs",
    "rmdir",
    "system",
    "chdir",
    "putenv",
    "unsetenv",
    "write",
    "kill",
    "removedirs",
}
# Constructors of independent random generators are fine: they touch no global state.
RANDOM_CONSTRUCTORS = {
    "default_rng",
    "Generator",
    "SeedSequence",
    "PCG64",
    "Philox",
    "MT19937",
    "Random",
    "RandomState",
}
PURE_METHODS = {
    "get",
    "keys",
    "values",
    "items",
    "copy",
    "count",
    "index",
    "split",
    "rsplit",
    "strip",
    "lstrip",
    "rstrip",
    "join",
    "format",
    "startswith",
    "endswith",
    "lower",
    "upper",
    "replace",
    "find",
    "rfind",
    "isdigit",
    "isalpha",
    "encode",
    "decode",
    "sum",
    "mean",
    "dot",
    "reshape",
    "astype",
    "tolist",
    "__getitem__",
    "__len__",
    "bit_length",
    "real",
    "conjugate",
    "hex",
    "is_integer",
    "splitlines",
    "partition",
    "title",
    "capitalize",
    "zfill",
    "center",
    "ljust",
    "rjust",
    "std",
    "max",
    "min",
    "prod",
    "any",
    "all",
    "transpose",
    "flatten",
    "ravel",
    "T",
}
COLLECTOR_METHODS = {"append", "extend", "add"}
REDUCTION_OPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
}
FRESH_CALLS = {"list", "dict", "set", "sorted", "bytearray", "range", "tuple"}


class SourceUnavailable(Exception):
    """The function's source cannot be read (built-ins, ``exec``-made functions, REPL)."""


class Sequential(Exception):
    """Raised inside the analysis with the reason a loop must run in order."""


@dataclass
class Effect:
    """A statement whose only outer effect is replayed in order by the caller."""

    kind: str  # "reduction", "keyed_reduction" or "collector"
    name: str  # the outer name it acts on
    op: str  # "+=", "= acc + e", "max", "append", "setitem"...
    line: int
    node: ast.stmt = field(repr=False)


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


# --------------------------------------------------------------------------- source


def parse_function(func: Callable[..., Any]) -> tuple[ast.FunctionDef, int]:
    """Return the function's AST (decorators removed) with lines matching the source file."""
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
    # getsource starts at the first decorator; line numbers are made file-relative.
    ast.increment_lineno(
        module,
        func.__code__.co_firstlineno
        - (node.decorator_list[0].lineno if node.decorator_list else node.lineno),
    )
    node.decorator_list = []
    return node, func.__code__.co_firstlineno


# --------------------------------------------------------------------------- range bounds


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


def _int_bindings(func: Callable[..., Any], args: tuple, kwargs: dict | None) -> dict[str, Any]:
    try:
        bound = inspect.signature(func).bind(*args, **(kwargs or {}))
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


def _assigned_names(node: ast.AST) -> set[str]:
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
    return names


# --------------------------------------------------------------------------- body analysis


def _target_names(target: ast.expr) -> tuple[str, ...] | None:
    if isinstance(target, ast.Name):
        return (target.id,)
    if isinstance(target, (ast.Tuple, ast.List)):
        names: list[str] = []
        for elt in target.elts:
            sub = _target_names(elt)
            if sub is None:
                return None
            names.extend(sub)
        return tuple(names)
    return None


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _check_iterable(node: ast.expr) -> str | None:
    """None when the iterable is a recognised safe form, else the reason it is not."""
    if isinstance(node, ast.Name):
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "range":
            return None
        if node.func.id in ("enumerate", "zip", "reversed", "sorted"):
            for arg in node.args:
                reason = _check_iterable(arg)
                if reason:
                    return reason
            return None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("items", "keys", "values")
        and not node.args
        and _dotted(node.func.value) is not None
    ):
        return None
    if isinstance(node, ast.Attribute) and _dotted(node) is not None:
        return None
    if isinstance(node, (ast.Tuple, ast.List)) and all(
        isinstance(e, ast.Constant) for e in node.elts
    ):
        return None
    return f"iterable `{ast.unparse(node)}` is not a recognised safe form"


class _BodyAnalyzer:
    """One ordered pass over a loop body with a must-assigned set (what is surely bound)."""

    def __init__(
        self,
        loop: ast.For,
        outer_locals: set[str],
        declared_outer: set[str],
        module_names: set[str],
        self_names: set[str],
    ) -> None:
        self.loop = loop
        self.targets = set(_target_names(loop.target) or ())
        # names stored by the body, except the targets of reduction statements (acc += e)
        effect_targets: set[int] = set()
        for sub in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
            if isinstance(sub, ast.stmt):
                effect = self._effect(sub)
                if effect is not None and effect.kind == "reduction":
                    target = sub.target if isinstance(sub, ast.AugAssign) else sub.targets[0]
                    effect_targets.add(id(target))
        self.body_stores: set[str] = {
            n.id
            for stmt in loop.body
            for n in ast.walk(stmt)
            if isinstance(n, ast.Name)
            and isinstance(n.ctx, (ast.Store, ast.Del))
            and id(n) not in effect_targets
        }
        self.outer_locals = outer_locals
        self.declared_outer = declared_outer
        self.module_names = module_names
        self.self_names = self_names
        self.effects: list[Effect] = []
        self.effect_nodes: set[int] = set()
        self.fresh: set[str] = set()
        self.reads: set[str] = set()
        self.assumed_calls: set[str] = set()

    # names

    def _is_private(self, name: str) -> bool:
        return name in self.body_stores and name not in self.declared_outer

    def _read(self, name: str, line: int, must: set[str]) -> None:
        self.reads.add(name)
        if self._is_private(name) and name not in must and name not in self.targets:
            raise Sequential(
                f"`{name}` is read at line {line} before it is assigned in the "
                "iteration: its value is carried from the previous iteration"
            )

    def _store(self, target: ast.expr, must: set[str], fresh: bool = False) -> None:
        if isinstance(target, ast.Name):
            if target.id in self.declared_outer:
                raise Sequential(f"assigns global/nonlocal `{target.id}` at line {target.lineno}")
            must.add(target.id)
            if fresh:
                self.fresh.add(target.id)
            else:
                self.fresh.discard(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._store(elt, must)
        elif isinstance(target, ast.Starred):
            self._store(target.value, must)
        elif isinstance(target, (ast.Subscript, ast.Attribute)):
            root = target.value
            self.expr(root if isinstance(target, ast.Attribute) else target.value, must)
            if isinstance(target, ast.Subscript):
                self.expr(target.slice, must)
            base = root
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            name = base.id if isinstance(base, ast.Name) else None
            if name is None or not self._is_private(name) or name not in self.fresh:
                what = "attribute" if isinstance(target, ast.Attribute) else "item"
                raise Sequential(
                    f"line {target.lineno}: {what} assignment "
                    f"`{ast.unparse(target)} = ...` mutates an object that may be "
                    "shared between iterations"
                )
        else:
            raise Sequential(f"line {target.lineno}: unsupported assignment target")

    # expressions

    def expr(self, node: ast.expr | None, must: set[str]) -> None:
        if node is None:
            return
        if isinstance(node, ast.Name):
            self._read(node.id, node.lineno, must)
            return
        if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
            raise Sequential(f"line {node.lineno}: `{type(node).__name__.lower()}` in the body")
        if isinstance(node, ast.NamedExpr):
            self.expr(node.value, must)
            self._store(node.target, must)
            return
        if isinstance(node, ast.Lambda):
            params = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
            self._scoped(node.body, params, must)
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            scoped: set[str] = set()
            for gen in node.generators:
                self._scoped(gen.iter, scoped, must)
                scoped |= set(_target_names(gen.target) or _assigned_names(gen.target))
                for cond in gen.ifs:
                    self._scoped(cond, scoped, must)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            for part in parts:
                self._scoped(part, scoped, must)
            return
        if isinstance(node, ast.Call):
            self._call(node, must)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child, must)
            elif isinstance(child, ast.keyword):
                self.expr(child.value, must)
            elif isinstance(child, ast.comprehension):  # pragma: no cover - handled above
                pass

    def _scoped(self, node: ast.expr, local: set[str], must: set[str]) -> None:
        self.expr(node, must | local)

    def _call(self, node: ast.Call, must: set[str]) -> None:
        name = _dotted(node.func)
        line = node.lineno
        if isinstance(node.func, ast.Name):
            if node.func.id in IMPURE_CALLS:
                raise Sequential(f"line {line}: `{node.func.id}()` has side effects")
            if (node.func.id not in dir(__builtins__) and not isinstance(__builtins__, dict)) or (
                isinstance(__builtins__, dict) and node.func.id not in __builtins__
            ):
                self.assumed_calls.add(node.func.id)
            return
        if not isinstance(node.func, ast.Attribute):
            return
        method = node.func.attr
        if name is not None:
            if any((name + "(").startswith(p) for p in IMPURE_MODULES) and (
                method not in RANDOM_CONSTRUCTORS
            ):
                raise Sequential(
                    f"line {line}: `{name}()` uses global random state or has side effects"
                )
            if name.startswith("os.") and not name.startswith("os.path.") and method in IMPURE_OS:
                raise Sequential(f"line {line}: `{name}()` has side effects")
        if method in IMPURE_METHODS:
            raise Sequential(f"line {line}: `.{method}()` has side effects")
        root = node.func.value
        while isinstance(root, (ast.Attribute, ast.Subscript)):
            root = root.value
        if not isinstance(root, ast.Name):
            return
        owner = root.id
        if owner in self.module_names or owner in self.self_names:
            self.assumed_calls.add(name or method)
            return
        if self._is_private(owner) and owner in self.fresh:
            return
        if method in PURE_METHODS:
            return
        if self._is_private(owner):
            raise Sequential(
                f"line {line}: `{ast.unparse(node.func)}()` may mutate an object "
                f"shared with other iterations (`{owner}` is not a fresh object)"
            )
        raise Sequential(
            f"line {line}: `{ast.unparse(node.func)}()` may mutate outer object `{owner}`"
        )

    # statements

    def _effect(self, stmt: ast.stmt) -> Effect | None:
        """Recognise a reduction or collector statement on an outer name."""
        line = stmt.lineno
        if isinstance(stmt, ast.AugAssign) and type(stmt.op) in REDUCTION_OPS:
            sym = REDUCTION_OPS[type(stmt.op)]
            if isinstance(stmt.target, ast.Name):
                return Effect("reduction", stmt.target.id, f"{sym}=", line, stmt)
            if isinstance(stmt.target, ast.Subscript) and isinstance(stmt.target.value, ast.Name):
                return Effect("keyed_reduction", stmt.target.value.id, f"[k] {sym}=", line, stmt)
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
            if isinstance(target, ast.Name):
                acc = target.id
                if (
                    isinstance(value, ast.BinOp)
                    and type(value.op) in REDUCTION_OPS
                    and isinstance(value.left, ast.Name)
                    and value.left.id == acc
                ):
                    return Effect(
                        "reduction", acc, f"= {acc} {REDUCTION_OPS[type(value.op)]} e", line, stmt
                    )
                if (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Name)
                    and value.func.id in ("max", "min")
                    and len(value.args) == 2
                    and not value.keywords
                    and isinstance(value.args[0], ast.Name)
                    and value.args[0].id == acc
                ):
                    return Effect("reduction", acc, value.func.id, line, stmt)
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                return Effect("collector", target.value.id, "[k] =", line, stmt)
        if (
            isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Attribute)
            and isinstance(stmt.value.func.value, ast.Name)
            and stmt.value.func.attr in COLLECTOR_METHODS
            and len(stmt.value.args) == 1
            and not stmt.value.keywords
        ):
            return Effect("collector", stmt.value.func.value.id, stmt.value.func.attr, line, stmt)
        return None

    def _effect_operands(self, effect: Effect) -> list[ast.expr]:
        stmt = effect.node
        if isinstance(stmt, ast.AugAssign):
            target = stmt.target
            return [stmt.value] + ([target.slice] if isinstance(target, ast.Subscript) else [])
        if isinstance(stmt, ast.Assign):
            value = stmt.value
            if isinstance(stmt.targets[0], ast.Subscript):
                return [stmt.targets[0].slice, value]
            if isinstance(value, ast.BinOp):
                return [value.right]
            assert isinstance(value, ast.Call)
            return [value.args[1]]
        assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
        return [stmt.value.args[0]]

    def block(self, stmts: Iterable[ast.stmt], must: set[str], top: bool = False) -> None:
        for stmt in stmts:
            self.stmt(stmt, must, top)

    def stmt(self, stmt: ast.stmt, must: set[str], top: bool = False) -> None:
        line = stmt.lineno
        effect = self._effect(stmt)
        if (effect is not None and not self._is_private(effect.name)) or (
            effect is not None and effect.name in self.declared_outer
        ):
            assert effect is not None
            for operand in self._effect_operands(effect):
                self.expr(operand, must)
            self.effects.append(effect)
            self.effect_nodes.add(id(stmt))
            return
        if isinstance(stmt, (ast.Break,)):
            raise Sequential(f"line {line}: `break` ends the loop early")
        if isinstance(stmt, ast.Return):
            raise Sequential(f"line {line}: `return` inside the loop")
        if isinstance(stmt, (ast.Global, ast.Nonlocal)):
            raise Sequential(f"line {line}: `{type(stmt).__name__.lower()}` inside the loop")
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            raise Sequential(f"line {line}: defines `{stmt.name}` inside the loop")
        if isinstance(
            stmt,
            (ast.With, ast.AsyncWith, ast.AsyncFor, ast.Match)
            if hasattr(ast, "Match")
            else (ast.With, ast.AsyncWith, ast.AsyncFor),
        ):
            raise Sequential(f"line {line}: `{type(stmt).__name__}` statement is not supported")
        if isinstance(stmt, ast.Delete):
            raise Sequential(f"line {line}: `del` inside the loop")
        if isinstance(stmt, (ast.Continue, ast.Pass)):
            return
        if isinstance(stmt, ast.Expr):
            self.expr(stmt.value, must)
            return
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            value = stmt.value
            self.expr(value, must)
            fresh = (
                isinstance(
                    value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
                )
                or (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Name)
                    and value.func.id in FRESH_CALLS
                )
                or (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Attribute)
                    and value.func.attr in RANDOM_CONSTRUCTORS
                )
            )
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                if value is None and isinstance(target, ast.Name):
                    continue
                self._store(target, must, fresh=fresh)
            return
        if isinstance(stmt, ast.AugAssign):
            if isinstance(stmt.target, ast.Name):
                self._read(stmt.target.id, line, must)
            self.expr(stmt.value, must)
            self._store(stmt.target, must)
            return
        if isinstance(stmt, ast.If):
            self.expr(stmt.test, must)
            body_must, else_must = set(must), set(must)
            self.block(stmt.body, body_must)
            self.block(stmt.orelse, else_must)
            must |= body_must & else_must
            return
        if isinstance(stmt, (ast.For, ast.While)):
            self.expr(stmt.iter if isinstance(stmt, ast.For) else stmt.test, must)
            inner = set(must)
            if isinstance(stmt, ast.For):
                self._store(stmt.target, inner)
            self._inner_loop(stmt, inner)
            return
        if isinstance(stmt, ast.Try):
            body_must = set(must)
            self.block(stmt.body, body_must)
            self.block(stmt.orelse, body_must)
            done = body_must if stmt.handlers else set(must)
            for handler in stmt.handlers:
                self.expr(handler.type, must)
                handler_must = set(must)
                if handler.name:
                    handler_must.add(handler.name)
                self.block(handler.body, handler_must)
                done &= handler_must
            must |= done
            self.block(stmt.finalbody, must)
            return
        if isinstance(stmt, (ast.Raise, ast.Assert)):
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self.expr(child, must)
            return
        raise Sequential(f"line {line}: `{type(stmt).__name__}` statement is not supported")

    def _inner_loop(self, loop: ast.For | ast.While, must: set[str]) -> None:
        # break/continue inside an inner loop only affect that loop; run the body twice so a
        # read-before-assign carried by the inner loop is caught on the "second" pass.
        for sub in loop.body:
            if isinstance(sub, ast.Break):
                continue
            self.stmt(sub, must)
        self.block(loop.orelse, set(must))


def _walk_no_nested_loops(stmts: list[ast.stmt]) -> Iterable[ast.AST]:
    for stmt in stmts:
        yield stmt
        if isinstance(stmt, (ast.For, ast.While, ast.FunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.stmt):
                yield from _walk_no_nested_loops([child])
            else:
                yield from ast.walk(child)


def _check_breaks(loop: ast.For) -> None:
    for node in _walk_no_nested_loops(loop.body):
        if isinstance(node, ast.Break):
            raise Sequential(f"line {node.lineno}: `break` ends the loop early")


# --------------------------------------------------------------------------- entry points


class _LoopCollector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.loops: list[tuple[ast.For | ast.While, int, list[ast.AST]]] = []
        self.level = 0

    def _loop(self, node: ast.For | ast.While) -> None:
        self.loops.append((node, self.level, []))
        self.level += 1
        self.generic_visit(node)
        self.level -= 1

    visit_For = _loop
    visit_While = _loop

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        return  # loops of nested functions are not this function's loops

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]


def _function_context(func: Callable[..., Any], tree: ast.FunctionDef) -> dict[str, Any]:
    func = inspect.unwrap(func)
    declared: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
    params = {a.arg for a in ast.walk(tree.args) if isinstance(a, ast.arg)}
    outer_locals = (_assigned_names(tree) | params | set(func.__code__.co_freevars)) - declared
    globals_ = getattr(func, "__globals__", {})
    modules = {n for n, v in globals_.items() if isinstance(v, types.ModuleType)}
    self_names = set()
    if tree.args.args and tree.args.args[0].arg in ("self", "cls") and "." in func.__qualname__:
        self_names.add(tree.args.args[0].arg)
    return {
        "declared": declared,
        "outer_locals": outer_locals,
        "modules": modules,
        "self_names": self_names,
        "freevars": tuple(func.__code__.co_freevars),
    }


def _loads_outside(tree: ast.FunctionDef, loop: ast.AST) -> set[str]:
    inside = {id(n) for n in ast.walk(loop)}
    return {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in inside
    }


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


def _int_env(tree: ast.FunctionDef, loop: ast.AST, bound: dict[str, Any]) -> dict[str, int]:
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


def _estimate_iterations(
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


def _analyse_for(loop: ast.For, tree: ast.FunctionDef, ctx: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"effects": [], "private": (), "read_only": (), "assumed": set()}
    targets = _target_names(loop.target)
    if targets is None:
        raise Sequential(
            f"line {loop.lineno}: loop target `{ast.unparse(loop.target)}` is not "
            "a plain name or tuple of names"
        )
    if loop.orelse:
        raise Sequential(f"line {loop.lineno}: `for ... else` depends on how the loop ended")
    reason = _check_iterable(loop.iter)
    if reason:
        raise Sequential(f"line {loop.lineno}: {reason}")
    _check_breaks(loop)
    analyzer = _BodyAnalyzer(
        loop, ctx["outer_locals"], ctx["declared"], ctx["modules"], ctx["self_names"]
    )
    for name in targets:
        if name in ctx["declared"]:
            raise Sequential(f"line {loop.lineno}: loop variable `{name}` is global/nonlocal")
    must = set(targets)
    analyzer.block(loop.body, must, top=True)
    # a reduction/collector target must not be read or written anywhere else in the body
    effect_names: dict[str, Effect] = {}
    for effect in analyzer.effects:
        first = effect_names.setdefault(effect.name, effect)
        if first.kind != effect.kind:
            raise Sequential(
                f"line {effect.line}: `{effect.name}` is used both as a "
                f"{first.kind} and a {effect.kind}"
            )
    for name, effect in effect_names.items():
        if name in analyzer.reads or name in analyzer.body_stores:
            raise Sequential(
                f"line {effect.line}: `{name}` is updated as a {effect.kind} but "
                "also read or assigned elsewhere in the body"
            )
    private = sorted((analyzer.body_stores | set(targets)) - ctx["declared"])
    after = _loads_outside(tree, loop)
    for name in private:
        if name in after:
            raise Sequential(
                f"`{name}` (assigned in the loop at line {loop.lineno}) is read "
                "outside the loop: its value would be the last iteration's"
            )
    read_only = sorted((analyzer.reads - set(private)) & (ctx["outer_locals"] | ctx["declared"]))
    bound = _bound_before(tree, loop) | set(ctx["freevars"])
    for name in read_only:
        if name not in bound and name not in ctx["declared"]:
            raise Sequential(
                f"line {loop.lineno}: `{name}` is read in the loop but may not be assigned "
                "when the loop starts"
            )
    result.update(
        effects=analyzer.effects,
        private=tuple(private),
        read_only=tuple(read_only),
        assumed=analyzer.assumed_calls,
    )
    return result


def detect_loops_in_function(
    func: Callable[..., Any], args: tuple = (), kwargs: dict | None = None
) -> list[LoopInfo]:
    """Every loop of ``func`` in source order with its verdict (raises SourceUnavailable)."""
    tree, _ = parse_function(func)
    ctx = _function_context(func, tree)
    bound = _int_bindings(inspect.unwrap(func), tuple(args), kwargs)
    collector = _LoopCollector()
    for stmt in tree.body:
        collector.visit(stmt)
    infos: list[LoopInfo] = []
    generator = any(
        isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _walk_no_nested_loops(tree.body)
    )
    for loop, level, _ in collector.loops:
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
                )
            )
            continue
        env = _int_env(tree, loop, bound)
        bounds, count = _estimate_iterations(loop, env, bound)
        info = LoopInfo(
            loop.lineno,
            "for",
            level,
            _target_names(loop.target) or (),
            ast.unparse(loop.iter),
            bounds,
            count,
            False,
            "",
            node=loop,
        )
        try:
            if generator:
                raise Sequential("the function is a generator")
            found = _analyse_for(loop, tree, ctx)
        except Sequential as exc:
            info.reason = str(exc)
        else:
            info.parallelizable = True
            info.effects = found["effects"]
            info.private = found["private"]
            info.read_only = found["read_only"]
            info.reductions = {e.name: e.op for e in info.effects if e.kind != "collector"}
            info.collectors = {e.name: e.op for e in info.effects if e.kind == "collector"}
            assumed = sorted(found["assumed"])
            info.reason = "iterations are independent" + (
                f"; assumes {', '.join(assumed)} {'is' if len(assumed) == 1 else 'are'} pure"
                if assumed
                else ""
            )
        infos.append(info)
    return infos


def find_parallelizable_loops(
    func: Callable[..., Any], args: tuple = (), kwargs: dict | None = None
) -> list[LoopInfo]:
    """The outermost safe loops: a safe loop nested in another safe loop runs in its chunk."""
    infos = detect_loops_in_function(func, args, kwargs)
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
