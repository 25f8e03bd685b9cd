"""Rewrite a function so that its chosen loops hand their iterations to a runner.

Why an AST rewrite and not a wrapper: the loop lives in the middle of the function, and the code
before and after it must run unchanged in the caller. The function's own parsed source is
compiled again with the loop replaced by (1) a call to the runner, which returns the events of the
iterations, and (2) a replay of the reduction/collector statements in iteration order, so every
effect on outer state happens in the caller exactly as in a sequential run. Only code objects are
taken from the compiled module; nothing is executed at transformation time and no string coming
from data is ever compiled.
"""

from __future__ import annotations

import ast
import copy
import functools
import types
from collections.abc import Callable
from typing import Any

from .analysis import Effect, LoopInfo, parse_function

__all__ = ["TransformError", "transform_function"]

_EVENTS = "__clx_events"
_EMIT = "__clx_emit"
_VAL = "__clx_val"
_SID = "__clx_sid"
_PLAN = "__clx_plan"


class TransformError(Exception):
    """The function cannot be rebuilt (name mangling, unusual closures...)."""


def _name(id_: str, store: bool = False) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())


def _emit(sid: int, value: ast.expr) -> ast.stmt:
    call = ast.Call(
        func=_name(_EMIT), args=[ast.Tuple([ast.Constant(sid), value], ast.Load())], keywords=[]
    )
    return ast.Expr(call)


def _pair(key: ast.expr, value: ast.expr) -> ast.expr:
    return ast.Tuple([key, value], ast.Load())


def _val_item(index: int) -> ast.expr:
    return ast.Subscript(_name(_VAL), ast.Constant(index), ast.Load())


def _chunk_and_replay(effect: Effect, sid: int) -> tuple[ast.stmt, ast.stmt]:
    """The statement emitting the effect's value in the chunk, and its replay in the caller."""
    stmt = copy.deepcopy(effect.node)
    if isinstance(stmt, ast.AugAssign):
        target = stmt.target
        if isinstance(target, ast.Subscript):  # counts[k] += e
            emit = _emit(sid, _pair(target.slice, stmt.value))
            replay_target = ast.Subscript(target.value, _val_item(0), ast.Store())
            return emit, ast.AugAssign(replay_target, stmt.op, _val_item(1))
        return _emit(sid, stmt.value), ast.AugAssign(target, stmt.op, _name(_VAL))
    if isinstance(stmt, ast.Assign):
        target, value = stmt.targets[0], stmt.value
        if isinstance(target, ast.Subscript):  # out[k] = e
            emit = _emit(sid, _pair(target.slice, value))
            replay_target = ast.Subscript(target.value, _val_item(0), ast.Store())
            return emit, ast.Assign([replay_target], _val_item(1))
        if isinstance(value, ast.BinOp):  # acc = acc op e
            emit = _emit(sid, value.right)
            value.right = _name(_VAL)
            return emit, ast.Assign([target], value)
        assert isinstance(value, ast.Call)  # acc = max(acc, e)
        emit = _emit(sid, value.args[1])
        value.args[1] = _name(_VAL)
        return emit, ast.Assign([target], value)
    assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
    call = stmt.value
    arg = call.args[0]
    if isinstance(call.func, ast.Attribute) and call.func.attr == "extend":
        arg = ast.List([ast.Starred(arg, ast.Load())], ast.Load())  # generators do not pickle
    emit = _emit(sid, arg)
    call.args[0] = _name(_VAL)
    return emit, stmt


class _EffectReplacer(ast.NodeTransformer):
    def __init__(self, emits: dict[int, ast.stmt]) -> None:
        self.emits = emits

    def visit(self, node: ast.AST) -> Any:
        if id(node) in self.emits:
            return self.emits[id(node)]
        return super().visit(node)


def _dispatch(replays: list[ast.stmt]) -> list[ast.stmt]:
    chain: list[ast.stmt] = []
    for sid in reversed(range(len(replays))):
        test = ast.Compare(_name(_SID), [ast.Eq()], [ast.Constant(sid)])
        chain = [ast.If(test, [replays[sid]], chain)]
    return chain or [ast.Pass()]


def _build(loop: ast.For, info: LoopInfo, index: int) -> tuple[list[ast.stmt], ast.FunctionDef]:
    emits: dict[int, ast.stmt] = {}
    replays: list[ast.stmt] = []
    for sid, effect in enumerate(info.effects):
        emit, replay = _chunk_and_replay(effect, sid)
        emits[id(effect.node)] = emit
        replays.append(replay)
    memo: dict[int, Any] = {}
    body_copy = copy.deepcopy(loop.body, memo)
    emits = {id(memo[key]): stmt for key, stmt in emits.items()}
    chunk_body = [_EffectReplacer(emits).visit(stmt) for stmt in body_copy]
    ro = info.read_only
    chunk_src: list[ast.stmt] = []
    if ro:
        chunk_src.append(
            ast.Assign([ast.Tuple([_name(n, True) for n in ro], ast.Store())], _name("__clx_ro"))
        )
    chunk_src += [
        ast.Assign([_name(_EVENTS, True)], ast.List([], ast.Load())),
        ast.Assign([_name(_EMIT, True)], ast.Attribute(_name(_EVENTS), "append", ast.Load())),
        ast.Try(
            body=[ast.For(copy.deepcopy(loop.target), _name("__clx_items"), chunk_body, [])],
            handlers=[
                ast.ExceptHandler(
                    _name("Exception"),
                    "__clx_exc",
                    [ast.Return(ast.Tuple([_name(_EVENTS), _name("__clx_exc")], ast.Load()))],
                )
            ],
            orelse=[],
            finalbody=[],
        ),
        ast.Return(ast.Tuple([_name(_EVENTS), ast.Constant(None)], ast.Load())),
    ]
    args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg("__clx_items"), ast.arg("__clx_ro")],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    chunk = ast.FunctionDef(f"__clx_chunk{index}", args, chunk_src, [], None)
    for node in ast.walk(chunk):
        if hasattr(node, "lineno") and not getattr(node, "lineno", None):
            ast.copy_location(node, loop)
    runner = f"__clx_loop{index}"
    plan_call = ast.Call(
        _name(runner), [loop.iter, ast.Tuple([_name(n) for n in ro], ast.Load())], []
    )
    events_loop = ast.For(
        ast.Tuple([_name(_SID, True), _name(_VAL, True)], ast.Store()),
        ast.Attribute(_name(_PLAN), "head", ast.Load()),
        _dispatch(replays),
        [],
    )
    tail_loop = copy.deepcopy(events_loop)
    tail_loop.iter = ast.Call(ast.Attribute(_name(_PLAN), "events", ast.Load()), [], [])
    sequential = ast.For(
        loop.target, ast.Attribute(_name(_PLAN), "rest", ast.Load()), loop.body, []
    )
    new = [
        ast.Assign([_name(_PLAN, True)], plan_call),
        events_loop,
        ast.If(
            ast.Compare(
                ast.Attribute(_name(_PLAN), "rest", ast.Load()), [ast.IsNot()], [ast.Constant(None)]
            ),
            [sequential],
            [tail_loop],
        ),
    ]
    for stmt in new:
        for node in ast.walk(stmt):
            if "lineno" in getattr(node, "_attributes", ()) and not hasattr(node, "lineno"):
                ast.copy_location(node, loop)
    return new, chunk


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

    ``infos`` must come from ``detect_loops_in_function(func)`` (the loop nodes are matched by
    line). Raises :class:`TransformError` or ``SourceUnavailable`` when it cannot be rebuilt.
    """
    original = func
    func = getattr(func, "__wrapped__", func)
    if not isinstance(func, types.FunctionType):
        raise TransformError("not a Python function")
    tree, _ = parse_function(func)
    _check_mangling(func, tree)
    by_line = {(i.line, i.iterable): i for i in infos}
    replacements: dict[int, list[ast.stmt]] = {}
    chunks: list[ast.FunctionDef] = []
    chosen: list[LoopInfo] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and (node.lineno, ast.unparse(node.iter)) in by_line:
            info = by_line[(node.lineno, ast.unparse(node.iter))]
            # re-point the effects at this tree's nodes (same source, same order)
            fresh = {(n.lineno, n.col_offset): n for n in ast.walk(node) if isinstance(n, ast.stmt)}
            info = copy.copy(info)
            info.effects = [copy.copy(e) for e in info.effects]
            for effect in info.effects:
                effect.node = fresh[(effect.node.lineno, effect.node.col_offset)]
            new, chunk = _build(node, info, len(chunks))
            replacements[id(node)] = new
            chunks.append(chunk)
            chosen.append(info)
    if not chunks:
        return original
    tree = _LoopReplacer(replacements).visit(tree)
    freevars = list(func.__code__.co_freevars)
    runners = [f"__clx_loop{i}" for i in range(len(chunks))]
    factory_args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(n) for n in freevars + runners],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    factory = ast.FunctionDef(
        "__clx_factory", factory_args, [tree, ast.Return(_name(tree.name))], [], None
    )
    module = ast.Module(body=[factory, *chunks], type_ignores=[])
    ast.fix_missing_locations(module)
    code = compile(module, func.__code__.co_filename, "exec")
    new_code = _find_code(_find_code(code, "__clx_factory"), tree.name)
    cells = dict(zip(func.__code__.co_freevars, func.__closure__ or (), strict=True))
    for i, chunk in enumerate(chunks):
        chunk_fn = types.FunctionType(_find_code(code, chunk.name), func.__globals__, chunk.name)
        cells[runners[i]] = types.CellType(runner_factory(chunk_fn, chosen[i]))
    closure = tuple(cells[name] for name in new_code.co_freevars)
    new = types.FunctionType(new_code, func.__globals__, func.__name__, func.__defaults__, closure)
    new.__kwdefaults__ = func.__kwdefaults__
    functools.update_wrapper(new, original)
    return new
