"""Verdicts, reasons and parallel results for a corpus of realistic loops."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import loops_corpus as c

from clustrix.loops import detect_loops_in_function, explain, parallelize
from clustrix.loops.execute import LoopRunner

SAFE = [
    (c.sum_squares, (200,)),
    (c.float_sum, ([i * 0.37 for i in range(300)],)),
    (c.build_list, (150,)),
    (c.build_dict, (120,)),
    (c.dict_items, ({f"k{i}": i for i in range(50)},)),
    (c.enumerate_zip, (list(range(40)), list(range(5, 45)))),
    (c.product, (60,)),
    (c.max_min, ([3, -1, 7.5, 2, 9, 0],)),
    (c.bit_ops, (100,)),
    (c.acc_assign, (100,)),
    (c.string_concat, (80,)),
    (c.histogram, (list(range(97)),)),
    (c.with_continue, (50,)),
    (c.nested_matrix, (12, 7)),
    (c.nested_sum, (40,)),
    (c.extend_gen, (30,)),
    (c.private_temps, (list(range(40)), 1.5)),
    (c.conditional_private, ([0, 5, 1, 9, 3],)),
    (c.set_collect, (list(range(33)),)),
    (c.closure_fn, (25,)),
    (c.Model.run, (c.Model(3), [1, 2, 3, 4])),
    (c.numpy_rng_private, (6,)),
    (c.lambda_sort, ([[3, 1, 2], [5, 4]],)),
    (c.try_inside, ([1, 0, 5, 0, 2],)),
    (c.bound_on_both_branches, (list(range(9)), False)),
    (c.for_else, ([4, 5, 6],)),
]

SEQUENTIAL = [
    (c.early_exit, "`break`"),
    (c.returns_inside, "`return`"),
    (c.recurrence, "`x` is read"),
    (c.fibonacci, "`b` is read"),
    (c.uses_random, "random.random()"),
    (c.uses_np_random, "np.random.rand()"),
    (c.writes_file, "`fh.write()`"),
    (c.while_loop, "`while` loop"),
    (c.reads_accumulator, "`total`"),
    (c.global_stmt, "global"),
    (c.mutates_outer, "`x.sort()` may mutate"),
    (c.pop_outer, "`stack.pop()` may mutate outer object `stack`"),
    (c.uses_after, "`last`"),
    (c.prev_element, "`out`"),
    (c.alias_mutation, "`row.append()`"),
    (c.attribute_store, "attribute assignment"),
    (c.Model.bad, "attribute assignment"),
    (c.generator_fn, "generator"),
    (c.bound_after_loop, "`limit` is used in the loop but may not be assigned"),
]


def _runner(chunk, info):
    # probe=0 and threshold=-1 force the parallel path so that every safe loop is exercised
    return LoopRunner(chunk, workers=2, threshold=-1.0, probe=0.0)


def _forced(func):
    from clustrix.loops.analysis import find_parallelizable_loops
    from clustrix.loops.transform import transform_function

    return transform_function(func, find_parallelizable_loops(func), _runner)


def test_corpus_size():
    assert len(SAFE) + len(SEQUENTIAL) >= 40


@pytest.mark.parametrize("func,args", SAFE, ids=[f.__name__ for f, _ in SAFE])
def test_safe_loops_are_parallel_and_identical(func, args):
    infos = detect_loops_in_function(func, args)
    assert infos[0].parallelizable, infos[0].reason
    assert infos[0].level == 0
    expected = func(*args)
    assert _forced(func)(*args) == expected
    assert parallelize(func, workers=2)(*args) == expected


@pytest.mark.parametrize("func,reason", SEQUENTIAL, ids=[f.__name__ for f, _ in SEQUENTIAL])
def test_unsafe_loops_are_sequential(func, reason):
    infos = detect_loops_in_function(func)
    top = [i for i in infos if i.level == 0]
    assert top and not top[0].parallelizable
    assert reason in top[0].reason
    assert parallelize(func) is func


def test_reason_names_line():
    info = detect_loops_in_function(c.recurrence)[0]
    assert f"line {c.recurrence.__code__.co_firstlineno + 3}" in info.reason
    assert info.line == c.recurrence.__code__.co_firstlineno + 2


def test_nesting_levels_and_outermost_choice():
    infos = detect_loops_in_function(c.nested_matrix, (3, 4))
    assert [i.level for i in infos] == [0, 1]
    assert infos[0].iterations == 3 and infos[1].iterations == 4
    assert "line" in explain(c.nested_matrix) and "inside the enclosing" in explain(c.nested_matrix)


def test_effects_reported():
    info = detect_loops_in_function(c.max_min)[0]
    assert info.reductions == {"hi": "max", "lo": "min"}
    text = explain(c.histogram)
    assert "counts" in text and "assumption" in text


def test_range_bound_side_effect_not_evaluated():
    calls = []

    def counter():
        calls.append(1)
        return 5

    infos = detect_loops_in_function(c.side_effect_range, (counter,))
    assert calls == [] and infos[0].iterations is None
    assert parallelize(c.side_effect_range)(counter) == [0, 1, 2, 3, 4]
    assert calls == [1]


def test_range_bounds_resolved():
    def f(n, k=3):
        m = 4
        out = []
        for i in range(-1, n * k + m // 2, 2):
            out.append(i)
        return out

    info = detect_loops_in_function(f, (5,))[0]
    assert info.range_bounds == (-1, 17, 2) and info.iterations == 9


@pytest.mark.parametrize("forced", [True, False])
def test_first_failing_iteration_wins(forced):
    xs = [5, 2, 1, 7, 0, 3, 0, 9] * 3
    func = _forced(c.fails_at) if forced else parallelize(c.fails_at)
    with pytest.raises(ZeroDivisionError, match="integer division or modulo by zero"):
        func(xs)
    table = {i: i for i in range(10)}
    keys = [1, 2, 3, 44, 5, 6, 77, 8] * 4
    with pytest.raises(KeyError) as err:
        _forced(c.fails_key)(keys, table)
    assert err.value.args == (44,)


def test_source_unavailable():
    namespace: dict = {}
    exec("def f(n):\n    return [i for i in range(n)]\n", namespace)  # test-only
    assert "source unavailable" in explain(namespace["f"])
    assert parallelize(namespace["f"]) is namespace["f"]


def test_prints_are_replayed_in_order(capsys):
    c.prints(30)
    expected = capsys.readouterr().out
    assert detect_loops_in_function(c.prints)[0].parallelizable
    _forced(c.prints)(30)
    assert capsys.readouterr().out == expected
