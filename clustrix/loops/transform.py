"""Rewrite a function so that its chosen loops may hand their iterations to a runner.

Why an AST rewrite and not a wrapper: the loop lives in the middle of the function, and the code
before and after it must run unchanged in the caller. Each chosen loop becomes::

    plan = runner(<iterable>, (<values the body reads>,), (<objects the effects write>,))
    try:
        for kind, x in plan:             # empty when the runner decides to stay sequential
            if kind:                     # the values one iteration computed in a worker:
                <replay its effect statements in order>
            else:                        # an iteration the caller runs itself:
                <target> = x
                <the original body>
        if plan.rebind:
            <target> = plan.last         # the loop variable keeps the last item, as in order
        for <target> in plan.rest:       # the original loop over what is left (or all of it)
            <the original body>
    finally:
        plan.close()                     # nothing launched outlives the loop

The worker side is a separate *chunk* function: the body with each effect statement replaced by
recording the values it needs, and with the calls whose receiver type is only known at run time
routed through a check. Only code objects are taken from the compiled module; nothing is
executed at transformation time and no string coming from data is ever compiled.
"""

from __future__ import annotations

import ast
import copy
import functools
import types
import weakref
from collections.abc import Callable
from typing import Any

from .analysis import LoopInfo
from .effects import replay_statement

__all__ = ["TransformError", "transform_function"]

_VAL = "__clx_val"
_SID = "__clx_sid"
_FN = "__clx_fn"


# what the analysis found for each chunk function, for runners built without it
CHUNK_INFO: weakref.WeakKeyDictionary[Callable[..., Any], LoopInfo] = weakref.WeakKeyDictionary()


class TransformError(Exception):
    """The function cannot be rebuilt (name mangling, unusual closures...)."""


def _name(id_: str, store: bool = False) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())


def _attr(obj: str, attr: str) -> ast.Attribute:
    return ast.Attribute(_name(obj), attr, ast.Load())


def _call(func: ast.expr, *args: ast.expr) -> ast.Call:
    return ast.Call(func=func, args=list(args), keywords=[])


def _emit_value(value: ast.expr) -> ast.expr:
    if isinstance(value, ast.GeneratorExp):  # generators do not pickle: send the items
        return ast.List([ast.Starred(value, ast.Load())], ast.Load())
    return value


class _ChunkRewriter(ast.NodeTransformer):
    """The body as a worker runs it: effects recorded, run-time-typed calls checked."""

    def __init__(self, effects: dict[int, tuple[int, list[ast.expr]]], guarded: set[int]):
        self.effects = effects
        self.guarded = guarded

    def visit(self, node: ast.AST) -> Any:
        if id(node) in self.effects:
            sid, values = self.effects[id(node)]
            items = ast.Tuple([_emit_value(self.visit(v)) for v in values], ast.Load())
            record = _call(_name("__clx_emit"), ast.Tuple([ast.Constant(sid), items], ast.Load()))
            return ast.copy_location(ast.Expr(record), node)
        if id(node) in self.guarded and isinstance(node, ast.AugAssign):
            assert isinstance(node.target, ast.Name)
            check = ast.Expr(_call(_name("__clx_i"), _name(node.target.id)))
            self.generic_visit(node)
            return [ast.copy_location(check, node), node]
        if id(node) in self.guarded and isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Attribute)
            receiver = self.visit(node.func.value)
            node.func = _call(_name("__clx_m"), receiver, ast.Constant(node.func.attr))
            node.args = [self.visit(a) for a in node.args]
            node.keywords = [self.visit(k) for k in node.keywords]
            return node
        return super().visit(node)


def _dispatch(replays: list[ast.stmt], plan: str) -> list[ast.stmt]:
    output = ast.Expr(_call(_attr(plan, "output"), _name(_SID), _name(_VAL)))
    chain: list[ast.stmt] = [output]
    for sid in reversed(range(len(replays))):
        test = ast.Compare(_name(_SID), [ast.Eq()], [ast.Constant(sid)])
        chain = [ast.If(test, [replays[sid]], chain)]
    return chain


def _source_expr(spec: Any, runner: str) -> ast.expr:
    if isinstance(spec, tuple) and spec[0] == "combine":
        _, name, args, keywords = spec
        parts = [_source_expr(a, runner) for a in args]
        return ast.Call(_attr(runner, "combine"), [_name(name), *parts], keywords)
    return spec


def _runner_name(index: int) -> str:
    return f"__clx_loop{index}"


def _locate(roots: list[ast.AST], loop: ast.For) -> None:
    """Give the generated nodes that have no position the loop's."""
    for root in roots:
        for node in ast.walk(root):
            if "lineno" in getattr(node, "_attributes", ()) and not hasattr(node, "lineno"):
                ast.copy_location(node, loop)


def _build(
    loop: ast.For, info: LoopInfo, index: int, memo: dict[int, Any]
) -> tuple[list[ast.stmt], ast.FunctionDef]:
    """The statements that replace ``loop`` in the caller, and the loop's chunk function."""
    chunk = _chunk_function(loop, info, index, memo)
    return _caller_statements(loop, info, index, memo), chunk


def _chunk_body(loop: ast.For, info: LoopInfo, memo: dict[int, Any]) -> list[ast.stmt]:
    """A copy of the body with effects recorded and checks added."""
    effects = {id(memo[id(e.node)]): (sid, e) for sid, e in enumerate(info.effects)}
    chunk_memo: dict[int, Any] = {}
    body_copy = copy.deepcopy(loop.body, chunk_memo)
    chunk_effects = {
        id(chunk_memo[key]): (sid, [chunk_memo[id(memo[id(v)])] for v in e.values])
        for key, (sid, e) in effects.items()
    }
    guarded = {id(chunk_memo[id(memo[g])]) for g in info.guarded if id(memo[g]) in chunk_memo}
    rewriter = _ChunkRewriter(chunk_effects, guarded)
    chunk_body: list[ast.stmt] = []
    for stmt in body_copy:
        new = rewriter.visit(stmt)
        chunk_body.extend(new if isinstance(new, list) else [new])
    return chunk_body


def _chunk_function(
    loop: ast.For, info: LoopInfo, index: int, memo: dict[int, Any]
) -> ast.FunctionDef:
    """The worker side: runs the body over a chunk of items, recording each iteration's events."""
    chunk_body = _chunk_body(loop, info, memo)
    ro = info.read_only
    chunk_src: list[ast.stmt] = []
    if ro:
        chunk_src.append(
            ast.Assign([ast.Tuple([_name(n, True) for n in ro], ast.Store())], _name("__clx_ro"))
        )
    iteration = [
        ast.Assign([_name("__clx_ev", True)], ast.List([], ast.Load())),
        ast.Expr(_call(_attr("__clx_out", "append"), _name("__clx_ev"))),
        ast.Assign([_name("__clx_emit", True)], _attr("__clx_ev", "append")),
        *chunk_body,
    ]
    chunk_src.append(ast.For(copy.deepcopy(loop.target), _name("__clx_items"), iteration, []))
    params = ["__clx_items", "__clx_ro", "__clx_m", "__clx_i", "__clx_out"]
    args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(n) for n in params],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    chunk = ast.FunctionDef(f"__clx_chunk{index}", args, chunk_src, [], None)
    _locate([chunk], loop)
    return chunk


def _replays(info: LoopInfo, memo: dict[int, Any]) -> list[ast.stmt]:
    """The effect statements as the caller replays them, on the copied tree."""
    replays: list[ast.stmt] = []
    for effect in info.effects:
        fresh = copy.copy(effect)
        fresh.node = memo[id(effect.node)]
        fresh.values = [memo[id(v)] for v in effect.values]
        replays.append(replay_statement(fresh, _VAL))
    return replays


def _caller_statements(
    loop: ast.For, info: LoopInfo, index: int, memo: dict[int, Any]
) -> list[ast.stmt]:
    """The caller side: the plan, its loop, the rebinding and the original loop over the rest."""
    runner, plan = _runner_name(index), f"__clx_plan{index}"
    kind, item = f"__clx_k{index}", f"__clx_x{index}"
    replays = _replays(info, memo)
    spec = _remap_spec(info.spec, memo)
    plan_call = _call(
        _name(runner),
        _source_expr(spec, runner),
        ast.Tuple([_name(n) for n in info.read_only], ast.Load()),
        ast.Tuple([_name(n) for n in sorted({e.name for e in info.effects})], ast.Load()),
    )
    run_here = [
        ast.Assign([copy.deepcopy(loop.target)], _name(item)),
        *copy.deepcopy(loop.body),
    ]
    replay_loop = ast.For(
        ast.Tuple([_name(_SID, True), _name(_VAL, True)], ast.Store()),
        _name(item),
        _dispatch(replays, plan),
        [],
    )
    plan_loop = ast.For(
        ast.Tuple([_name(kind, True), _name(item, True)], ast.Store()),
        _name(plan),
        [ast.If(_name(kind), [replay_loop], run_here)],
        [],
    )
    rebind = ast.If(
        _attr(plan, "rebind"),
        [ast.Assign([copy.deepcopy(loop.target)], _attr(plan, "last"))],
        [],
    )
    rest = ast.For(loop.target, _attr(plan, "rest"), loop.body, [])
    new: list[ast.stmt] = [
        ast.Assign([_name(plan, True)], plan_call),
        ast.Try(
            body=[plan_loop, rebind, rest],
            handlers=[],
            orelse=[],
            finalbody=[ast.Expr(_call(_attr(plan, "close")))],
        ),
        *loop.orelse,
    ]
    _locate(new, loop)
    return new


def _remap_spec(spec: Any, memo: dict[int, Any]) -> Any:
    if isinstance(spec, tuple):
        _, name, args, keywords = spec
        return (
            "combine",
            name,
            [_remap_spec(a, memo) for a in args],
            [memo.get(id(k), k) for k in keywords],
        )
    return memo.get(id(spec), spec)


class _LoopReplacer(ast.NodeTransformer):
    def __init__(self, replacements: dict[int, list[ast.stmt]]) -> None:
        self.replacements = replacements

    def visit_For(self, node: ast.For) -> Any:
        if id(node) in self.replacements:
            return self.replacements[id(node)]
        self.generic_visit(node)
        return node


def _check_mangling(func: types.FunctionType, tree: ast.FunctionDef) -> None:
    parts = func.__qualname__.split(".")
    if len(parts) > 1 and parts[-2] != "<locals>":
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
            if isinstance(name, str) and name.startswith("__") and not name.endswith("__"):
                raise TransformError(f"`{name}` is name-mangled inside a class")


def _find_code(code: types.CodeType, name: str) -> types.CodeType:
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    raise TransformError(f"compiled code for {name} not found")


def transform_function(
    func: Callable[..., Any],
    infos: list[LoopInfo],
    runner_factory: Callable[[Callable[..., Any], LoopInfo], Any],
) -> Callable[..., Any]:
    """A function like ``func`` whose loops ``infos`` are run by ``runner_factory(chunk, info)``.

    ``infos`` must come from ``detect_loops_in_function(func)``. Raises :class:`TransformError`
    when it cannot be rebuilt.
    """
    original = func
    func = getattr(func, "__wrapped__", func)
    if not isinstance(func, types.FunctionType):
        raise TransformError("not a Python function")
    infos = [i for i in infos if i.parallelizable and i.tree is not None and i.node is not None]
    if not infos:
        return original
    tree = infos[0].tree
    assert tree is not None
    if any(i.tree is not tree for i in infos):
        raise TransformError("loops of different analyses")
    _check_mangling(func, tree)
    module, chunks = _rewritten_module(func, tree, infos)
    code = compile(module, func.__code__.co_filename, "exec")
    return _rebuilt_function(func, original, code, chunks, infos, runner_factory)


def _rewritten_module(
    func: types.FunctionType, tree: ast.FunctionDef, infos: list[LoopInfo]
) -> tuple[ast.Module, list[ast.FunctionDef]]:
    """A module of the rewritten function, inside a factory taking its free variables and
    runners, and of the chunk functions."""
    memo: dict[int, Any] = {}
    new_tree = copy.deepcopy(tree, memo)
    replacements: dict[int, list[ast.stmt]] = {}
    chunks: list[ast.FunctionDef] = []
    for index, info in enumerate(infos):
        loop = memo[id(info.node)]
        new, chunk = _build(loop, info, index, memo)
        replacements[id(loop)] = new
        chunks.append(chunk)
    new_tree = _LoopReplacer(replacements).visit(new_tree)
    new_tree.name = _FN  # not the function's own name: that stays a global, as in the original
    freevars = list(func.__code__.co_freevars)
    runners = [_runner_name(i) for i in range(len(chunks))]
    factory_args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(n) for n in freevars + runners],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    factory = ast.FunctionDef(
        "__clx_factory", factory_args, [new_tree, ast.Return(_name(_FN))], [], None
    )
    module = ast.Module(body=[factory, *chunks], type_ignores=[])
    ast.fix_missing_locations(module)
    return module, chunks


def _rebuilt_function(
    func: types.FunctionType,
    original: Callable[..., Any],
    code: types.CodeType,
    chunks: list[ast.FunctionDef],
    infos: list[LoopInfo],
    runner_factory: Callable[[Callable[..., Any], LoopInfo], Any],
) -> Callable[..., Any]:
    """The new function from the compiled code, closing over ``func``'s cells and the runners."""
    new_code = _find_code(_find_code(code, "__clx_factory"), _FN)
    new_code = new_code.replace(co_name=func.__code__.co_name)
    if hasattr(new_code, "co_qualname"):
        new_code = new_code.replace(co_qualname=func.__code__.co_qualname)
    cells = dict(zip(func.__code__.co_freevars, func.__closure__ or (), strict=True))
    for i, chunk in enumerate(chunks):
        chunk_fn = types.FunctionType(_find_code(code, chunk.name), func.__globals__, chunk.name)
        CHUNK_INFO[chunk_fn] = infos[i]
        cells[_runner_name(i)] = types.CellType(runner_factory(chunk_fn, infos[i]))
    closure = tuple(cells[name] for name in new_code.co_freevars)
    new = types.FunctionType(new_code, func.__globals__, func.__name__, func.__defaults__, closure)
    new.__kwdefaults__ = func.__kwdefaults__
    functools.update_wrapper(new, original)
    return new
