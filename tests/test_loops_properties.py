"""Property tests for ``clustrix.loops``: generated loop bodies, safe and unsafe.

Each example is written as a real module file (the analysis reads the source with
``inspect.getsource``) and imported with importlib. Safe bodies must be reported parallelisable
and give exactly the sequential result when the parallel path is forced; bodies with one unsafe
construct must never be reported parallelisable.
"""

from __future__ import annotations

import importlib.util
import itertools
import textwrap
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustrix.loops import detect_loops_in_function, parallelize
from clustrix.loops.analysis import find_parallelizable_loops
from clustrix.loops.execute import LoopRunner
from clustrix.loops.transform import transform_function

# The autouse config-isolation fixture in conftest.py is function scoped; it is harmless to share
# it between generated examples, and every example writes a module with a unique name.
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_COUNTER = itertools.count()

ints = st.integers(min_value=-40, max_value=40)
xs_lists = st.one_of(
    st.just([]),
    st.lists(ints, min_size=1, max_size=1),
    st.lists(ints, min_size=0, max_size=12),
)
K = st.integers(min_value=-3, max_value=5)
C = st.integers(min_value=-5, max_value=5)

REDUCTIONS = [
    "acc += t",
    "acc = acc + t",
    "acc *= (t % 3 + 1)",
    "acc = max(acc, t)",
    "acc = min(acc, t)",
    "bits |= t",
    "mask &= t",
]
COLLECTORS = ["out.append(t)", "out.extend([t, t])", "d[x] = t", "sink.append(t)"]


# --------------------------------------------------------------------------- generation

Stmt = list[str]  # the lines of one statement, indented relative to the loop body


def _wrap(cond: str, inner: Stmt, inline: bool) -> Stmt:
    if inline and len(inner) == 1 and not inner[0].startswith("if "):
        return [f"if {cond}: {inner[0]}"]
    return [f"if {cond}:"] + ["    " + line for line in inner]


conditions = st.one_of(
    st.just("x % 3 == 0"),
    C.map(lambda c: f"t > {c}"),
    C.map(lambda c: f"x < {c}"),
)

leaf_stmts = st.one_of(
    st.builds(lambda k, c: [f"t = x * {k} + {c}"], K, C),
    st.sampled_from(REDUCTIONS).map(lambda s: [s]),
    st.sampled_from(COLLECTORS).map(lambda s: [s]),
    st.sampled_from([["if t % 2: continue"], ["if t % 2:", "    continue"]]),
)


def safe_stmts(depth: int = 2) -> st.SearchStrategy[Stmt]:
    if depth == 0:
        return leaf_stmts
    return st.one_of(
        leaf_stmts,
        st.builds(_wrap, conditions, st.deferred(lambda: safe_stmts(depth - 1)), st.booleans()),
    )


@st.composite
def safe_bodies(draw: st.DrawFn) -> list[Stmt]:
    first = [f"t = x * {draw(K)} + {draw(C)}"]  # t is always bound before any statement reads it
    return [first, *draw(st.lists(safe_stmts(), min_size=1, max_size=6))]


# One unsafe construct each: (statement lines, needs `global G` in the function header).
# `out[0] = t` (a collector whose index does not come from the loop variable) is deliberately NOT
# here: the analysis accepts it as a "[k] =" collector, and that is correct, because the caller
# replays every `out[k] = v` in iteration order, so the final list (or the IndexError on an empty
# list) is exactly the sequential one.
def _unsafe_choices(c: int) -> list[tuple[Stmt, bool, str]]:
    """(statement lines, needs `global G` in the header, a fragment of the expected reason)."""
    return [
        (["break"], False, "`break` ends the loop early"),
        ([f"if t > {c}:", "    break"], False, "`break` ends the loop early"),
        (["return t"], False, "`return` inside the loop"),
        ([f"if t > {c}:", "    return t"], False, "`return` inside the loop"),
        # `prev = t + prev` alone is a reduction (replayed in order); a carried read is not
        (["t = prev + t", "prev = t"], False, "`prev` is read"),
        (["G = t"], True, "global/nonlocal `G`"),
        (["print(t, file=sink)"], False, "`print(file=...)` writes to a file"),
        (["random.random()"], False, "`random.random()`"),
        (["r = np.random.rand()"], False, "`np.random.rand()`"),
        (
            ["fh = open(LOG, 'a')", "fh.write(f'{t}\\n')", "fh.close()"],
            False,
            "`open()` is not known to be pure",
        ),
        # the receiver `open(...)` is checked before the method called on it
        (["open(LOG, 'a').write(str(t))"], False, "`open()` is not known to be pure"),
        (["out.sort()"], False, "`out.sort()` may mutate outer object `out`"),
        (["t = acc + 1", "acc += t"], False, "`acc` is updated as a reduction but also read"),
    ]


UNSAFE_KINDS = len(_unsafe_choices(0))


@st.composite
def unsafe_bodies(draw: st.DrawFn, kind: int) -> tuple[list[Stmt], bool, str]:
    body = draw(safe_bodies())
    stmt, needs_global, reason = _unsafe_choices(draw(C))[kind]
    position = draw(st.integers(min_value=1, max_value=len(body)))
    body.insert(position, stmt)
    return body, needs_global, reason


def _source(body: list[Stmt], *, needs_global: bool = False, log: str = "") -> str:
    lines = [line for stmt in body for line in stmt]
    loop_body = textwrap.indent("\n".join(lines), " " * 8)
    header = "    global G\n" if needs_global else ""
    return (
        "import random\n\nimport numpy as np\n\n"
        f"G = 0\nLOG = {log!r}\n\n\n"
        "def f(xs, sink):\n"
        f"{header}"
        "    acc = 0\n    bits = 0\n    mask = -1\n    prev = 0\n    out = []\n    d = {}\n"
        "    for x in xs:\n"
        f"{loop_body}\n"
        "    return acc, bits, mask, prev, out, d, G\n"
    )


def _load(source: str, folder: Path):
    name = f"_clx_prop_{next(_COUNTER)}_{uuid.uuid4().hex[:8]}"
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.f


RUNNERS: list[LoopRunner] = []


def _runner(chunk, info):
    # probe=0 and threshold=-1 force the parallel path (as tests/test_loops_corpus.py does)
    runner = LoopRunner(chunk, workers=2, threshold=-1.0, probe=0.0)
    RUNNERS.append(runner)
    return runner


def _forced(func):
    return transform_function(func, find_parallelizable_loops(func), _runner)


def _outcome(func, xs):
    """(result or exception type and message, the sink list) of one call."""
    sink: list = []
    try:
        value = ("ok", func(list(xs), sink))
    except Exception as exc:  # compared below, not swallowed
        value = ("raised", type(exc), str(exc))
    return value, sink


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(body=safe_bodies(), data=st.data())
def test_safe_bodies_are_parallel_and_identical(tmp_path: Path, body, data):
    source = _source(body)
    func = _load(source, tmp_path)
    [info] = detect_loops_in_function(func)
    assert info.parallelizable, f"{info.reason}\n{source}"
    forced = _forced(func)
    assert forced is not func
    for xs in ([], [data.draw(ints)], data.draw(xs_lists)):
        expected = _outcome(func, xs)
        assert _outcome(forced, xs) == expected, f"xs={xs}\n{source}"
        if len(xs) >= 2:  # the iterations really went to the worker processes
            assert RUNNERS[-1].last_decision.startswith("parallel"), RUNNERS[-1].last_decision


@pytest.mark.parametrize("kind", range(UNSAFE_KINDS))
@SETTINGS
@given(data=st.data(), xs=xs_lists)
def test_one_unsafe_construct_is_never_parallel(tmp_path: Path, kind, data, xs):
    body, needs_global, reason = data.draw(unsafe_bodies(kind))
    source = _source(body, needs_global=needs_global, log=str(tmp_path / "log.txt"))
    func = _load(source, tmp_path)
    [info] = detect_loops_in_function(func)
    assert not info.parallelizable, source
    assert reason in info.reason, f"{info.reason}\n{source}"
    assert find_parallelizable_loops(func) == []
    wrapped = parallelize(func, workers=2)
    if wrapped is not func:
        assert _outcome(wrapped, xs) == _outcome(func, xs), source


@SETTINGS
@given(
    body=safe_bodies(),
    xs=st.lists(ints, min_size=0, max_size=14),
    bad=st.lists(ints, min_size=1, max_size=3),
    position=st.integers(min_value=1, max_value=7),
    data=st.data(),
)
def test_first_failing_iteration_raises(tmp_path: Path, body, xs, bad, position, data):
    if xs and data.draw(st.booleans()):
        bad = [*bad, data.draw(st.sampled_from(xs))]  # make a failure likely
    body = list(body)
    raise_stmt = [f"if x in {sorted(set(bad))!r}:", '    raise ValueError(f"bad {x}")']
    # before any `continue`, so the raise is reached whenever x is bad
    reachable = next(
        (i for i, stmt in enumerate(body) if any("continue" in line for line in stmt)), len(body)
    )
    body.insert(min(position, reachable), raise_stmt)
    body.append(["sink.append(x)"])
    source = _source(body)
    func = _load(source, tmp_path)
    [info] = detect_loops_in_function(func)
    assert info.parallelizable, f"{info.reason}\n{source}"
    expected, expected_sink = _outcome(func, xs)
    failing = [x for x in xs if x in bad]
    if failing:
        assert expected == ("raised", ValueError, f"bad {failing[0]}")
        with pytest.raises(ValueError) as err:
            _forced(func)(list(xs), [])
        assert str(err.value) == f"bad {failing[0]}", f"xs={xs}\n{source}"
    observed, observed_sink = _outcome(_forced(func), xs)
    assert observed == expected, f"xs={xs}\n{source}"
    # the outer collector holds exactly what the sequential run appended before the failure
    assert observed_sink == expected_sink, f"xs={xs}\n{source}"
