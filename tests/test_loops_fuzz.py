"""Differential fuzzing: generated loop programs must give plain Python's outcome when parallel.

Hypothesis writes small functions from a grammar that covers what breaks loop parallelisers:
arguments passed twice and numpy views (aliasing), mutation through the loop variable, nested
containers, method calls, reductions and collectors, output (print, warnings), early exits and
exceptions of every kind (Exception, BaseException, StopIteration, a two-argument ``__init__``).
Each program runs plain and forced down the parallel path (every loop the analysis accepts
goes to the workers); value, exception, the arguments' final state, printed text and warnings
must be identical. ``CLUSTRIX_LOOPS_FUZZ=<n>`` runs n programs instead of the CI's 300.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import os
import textwrap
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustrix.loops.analysis import find_parallelizable_loops
from clustrix.loops.execute import LoopRunner
from clustrix.loops.transform import transform_function

EXAMPLES = int(os.environ.get("CLUSTRIX_LOOPS_FUZZ", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STATS = {"programs": 0, "parallel": 0, "launched": 0}
RUNNERS: list[LoopRunner] = []
_COUNTER = itertools.count()

PRELUDE = """
import warnings

import numpy as np

SEEN = []


class Abort(BaseException):
    pass


class RangeErr(Exception):
    def __init__(self, lo, hi):
        super().__init__(f"outside [{lo}, {hi}]")


def val(v):
    if isinstance(v, list):
        return len(v)
    return int(v)


def noisy(v):
    SEEN.append(v)
    return val(v)
"""

K = st.integers(-3, 4)
C = st.integers(-4, 6)

EXPRS = [
    "val(x) * {k} + {c}",
    "len(str(x)) + {c}",
    "abs(val(x)) % 5",
    "str(x).count('1') + {k}",
    "(val(x) if val(x) > {c} else -val(x))",
    "noisy(x) + {c}",
    "xs.count(x) + {k}",
    "sum(val(v) for v in xs[:2])",
    "max(val(x), {c})",
]
EFFECTS = [
    "acc += t",
    "acc = acc * 2 + t",
    "out.append(t)",
    "out.extend([t, {c}])",
    "d[t % 3] = d.get(t % 3, 0) + 1",
    "d.setdefault(t % 2, []).append(t)",
    "seen.add(t % 4)",
    "ys[i] += t",
    "ys[i] = t",
    "m[i % len(m)] += t",
    "print(t, i)",
    "warnings.warn(f'w{{t}}')",
    "hi = max(hi, t)",
]
MUTATIONS = [
    "x += 1",
    "x.append(t) if isinstance(x, list) else None",
    "x += [t] if isinstance(x, list) else 1",
    "row = ys[i % len(ys)]\nrow += 1 if not isinstance(row, list) else [t]",
    "out.sort()",
    "xs[i] = t",
    "z = m[i % len(m)]\nz *= 2",
    "t = next(it, t)",
]
EXITS = [
    "if t > {c}: continue",
    "if t == {c}: break",
    "if t == {c}: return t",
    "if t == {c}: raise ValueError(t)",
    "if t == {c}: raise RangeErr(t, {k})",
    "if t == {c}: raise Abort(t)",
    "if t == {c}: raise StopIteration(t)",
    "if t == {c}: t = 1 // (t - {c})",
    "if t == {c}: t = {{}}[t]",
    "if t == {c}: t = next(iter([]))",
]


@st.composite
def statements(draw, ind: str) -> list[str]:
    kind = draw(st.sampled_from(["expr", "effect", "effect", "mutation", "exit"]))
    k, c = draw(K), draw(C)
    if kind == "expr":
        return [f"t = {draw(st.sampled_from(EXPRS)).format(k=k, c=c)}"]
    pool = {"effect": EFFECTS, "mutation": MUTATIONS, "exit": EXITS}[kind]
    text = draw(st.sampled_from(pool)).format(k=k, c=c, ind=ind)
    return text.split("\n")


@st.composite
def programs(draw) -> tuple[str, dict]:
    header = draw(st.sampled_from(["enumerate", "range", "zip"]))
    ind = " " * 8
    body: list[str] = [f"t = {draw(st.sampled_from(EXPRS)).format(k=draw(K), c=draw(C))}"]
    for _ in range(draw(st.integers(1, 5))):
        body += draw(statements(ind))
    if header == "enumerate":
        loop = ["    for i, x in enumerate(xs):"]
    elif header == "range":
        loop = ["    for i in range(len(xs)):", "        x = xs[i]"]
    else:
        loop = ["    for i, (x, y) in enumerate(zip(xs, ys)):"]
    source = (
        PRELUDE
        + "\n\ndef f(xs, ys, out, m):\n"
        + "    acc = 0\n    hi = -100\n    d = {}\n    seen = set()\n    it = iter(ys)\n"
        + "\n".join(loop)
        + "\n"
        + textwrap.indent("\n".join(body), ind)
        + "\n    return acc, hi, d, sorted(seen), out\n"
    )
    args = {
        "nested": draw(st.booleans()),
        "xs": draw(st.lists(st.integers(-5, 9), min_size=0, max_size=9)),
        "alias": draw(st.sampled_from(["none", "ys_is_xs", "out_is_ys", "m_view"])),
        "loop": header,
    }
    return source, args


def make_args(spec: dict) -> tuple:
    xs: list = [[v] if spec["nested"] and v % 2 else v for v in spec["xs"]]
    ys: list = [v * 2 if isinstance(v, int) else [v[0] * 2] for v in xs] or [0]
    out: list = []
    base = np.arange(6.0)
    m = base
    if spec["alias"] == "ys_is_xs" and xs:
        ys = xs
    elif spec["alias"] == "out_is_ys":
        out = ys
    elif spec["alias"] == "m_view":
        m = base[::2]
    return xs, ys, out, m


def show(value, stack: tuple = ()):
    if id(value) in stack:
        return "<cycle>"
    stack = (*stack, id(value))
    if isinstance(value, np.ndarray):
        return ("array", value.tolist())
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [show(v, stack) for v in value]
    if isinstance(value, dict):
        return "dict", [(repr(k), show(v, stack)) for k, v in value.items()]
    return repr(value)


def run(func, spec: dict, module) -> tuple:
    module.SEEN.clear()
    args = make_args(spec)
    text = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(text):
        warnings.simplefilter("always")
        try:
            value = ("ok", show(func(*args)))
        except BaseException as exc:
            value = ("raised", type(exc).__name__, str(exc))
    return (
        value,
        show(args),
        text.getvalue(),
        [str(w.message) for w in caught],
        list(module.SEEN),
    )


def load(source: str, folder: Path):
    name = f"_clx_fuzz_{next(_COUNTER)}_{uuid.uuid4().hex[:8]}"
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runner(chunk, info):
    runner = LoopRunner(chunk, workers=2, threshold=-1.0, probe=0.0, info=info)
    RUNNERS.append(runner)
    return runner


@FUZZ
@given(program=programs())
def test_parallel_equals_plain(tmp_path: Path, program):
    source, spec = program
    module = load(source, tmp_path)
    chosen = find_parallelizable_loops(module.f)
    STATS["programs"] += 1
    expected = run(module.f, spec, module)
    if not chosen:
        return
    STATS["parallel"] += 1
    forced = transform_function(module.f, chosen, _runner)
    assert run(forced, spec, module) == expected, f"{spec}\n{source}"
    STATS["launched"] += RUNNERS[-1].last_decision.startswith("parallel")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(
        f"\nfuzzed {STATS['programs']} programs: {STATS['parallel']} accepted by the analysis, "
        f"{STATS['launched']} ran iterations on the workers"
    )
