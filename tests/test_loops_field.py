"""The field report's loops, class by class: plain Python's value is the right value.

Every case runs plain, forced down the parallel path (every safe loop's iterations go to the
workers) and with the default cost model; value, exception and the arguments' final state must
all be those of the plain run.
"""

from __future__ import annotations

import concurrent.futures
import decimal
import os
import sys
import threading
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import loops_field_cases as c

import clustrix
from clustrix import cluster
from clustrix.loops import detect_loops_in_function, explain, parallelize
from clustrix.loops.analysis import find_parallelizable_loops
from clustrix.loops.execute import LoopRunner
from clustrix.loops.transform import transform_function

RUNNERS: list[LoopRunner] = []


def _runner(chunk, info):
    runner = LoopRunner(chunk, workers=2, threshold=-1.0, probe=0.0, info=info)
    RUNNERS.append(runner)
    return runner


def forced(func):
    chosen = find_parallelizable_loops(func)
    return transform_function(func, chosen, _runner) if chosen else func


def _show(value):
    if isinstance(value, np.ndarray):
        return ("array", value.tolist())
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [_show(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return type(value).__name__, sorted(map(repr, value))
    if isinstance(value, dict):
        return "dict", [(repr(k), _show(v)) for k, v in value.items()]
    return repr(value)


def outcome(func, make_args):
    args = make_args()
    try:
        value = ("ok", _show(func(*args)))
    except BaseException as exc:
        value = ("raised", type(exc).__name__, str(exc))
    return value, _show(args)


def same_as_plain(func, make_args):
    expected = outcome(func, make_args)
    assert outcome(forced(func), make_args) == expected
    assert outcome(parallelize(func, workers=2), make_args) == expected
    return expected


def refused(func, fragment):
    infos = detect_loops_in_function(func)
    assert not infos[0].parallelizable
    assert fragment in infos[0].reason, infos[0].reason
    assert "line " in infos[0].reason


CASES = {
    # class 1
    "pad": (c.pad, lambda: ([[1], [2], [3]],)),
    "double_rows": (c.double_rows, lambda: (np.ones((3, 2)),)),
    "bump_items": (c.bump_items, lambda: ([1, 2, 3, 4],)),
    "bump_items_lists": (c.bump_items, lambda: ([[1], [2], [3]],)),
    "grow_nested": (c.grow_nested, lambda: ([[[1]], [[2]], [[3]]],)),
    # class 2
    "normalise": (c.normalise, lambda: (np.ones((6, 2)),)),
    "scale_lists": (c.scale_lists, lambda: ([[1], [2], [3]],)),
    # class 3
    "running_alias": (c.running, lambda: (lambda a: (a, a))([1] * 8)),
    "running_distinct": (c.running, lambda: ([1] * 8, [2] * 8)),
    "into_view": (c.into_view, lambda: (lambda a: (a[1:], a))(np.arange(8.0))),
    "nested_alias": (c.nested_alias, lambda: (lambda o: (o, [o]))([1, 2, 3])),
    # class 4
    "bfs": (c.bfs, lambda: (list(range(6)),)),
    "prop": (c.prop, lambda: ([1] * 5, 5)),
    "aliases": (c.aliases, lambda: ({"a": 1, "b": 2},)),
    "set_grow": (c.set_grow, lambda: ({1, 2},)),
    "pairs": (c.pairs, lambda: ([1, 2, 3, 4, 5],)),
    "gen_source": (c.gen_source, lambda: (8,)),
    # class 5
    "firsts": (c.firsts, lambda: ([[1, -2], [1], [-1]],)),
    "check": (c.check, lambda: ([1] * 6 + [99, 1, 1],)),
    "collect": (c.collect, lambda: ([-1] + [1] * 7, [])),
    "late_abort": (c.late_abort, lambda: ([1, 2, 3, -1, 5, 6], [])),
    "stop_in_body": (c.stop_in_body, lambda: ([1, 2, 3, 4],)),
    # class 7
    "ids_for": (c.ids_for, lambda: ([f"n{i}" for i in range(6)],)),
    "with_scale": (c.with_scale, lambda: ([1, 2, 3, 4], 5)),
    # class 8
    "getters": (c.getters, lambda: (4,)),
    "squares": (c.squares, lambda: (6,)),
    "last_index": (c.last_index, lambda: ([5, 6, 7],)),
    # class 9
    "raises_early": (c.raises_early, lambda: (10**12,)),
    # class 10
    "word_counts": (c.word_counts, lambda: (["a", "b", "a", "c", "b", "a"],)),
    "line_lengths": (c.line_lengths, lambda: (" a\nbb \n ccc\n",)),
    "arange_sum": (c.arange_sum, lambda: (7,)),
    "two_loops": (c.two_loops, lambda: ([1, 2, 3],)),
    "grouped": (c.grouped, lambda: ([("a", 1), ("b", 2), ("a", 3)],)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_field_case_matches_plain(name):
    func, make_args = CASES[name]
    same_as_plain(func, make_args)


# --------------------------------------------------------------------------- verdicts and why


@pytest.mark.parametrize(
    "func,fragment",
    [
        (c.pad, "`row.append()` may mutate an object shared"),
        (c.grow_nested, "`row[0].append()`"),
        (c.bfs, "`order.extend()` may mutate"),
        (c.prop, "mutates `xs`"),
        (c.aliases, "mutates `d`"),
        (c.pairs, "`next()` is not known to be pure"),
        (c.ids_for, "`next()` is not known to be pure"),
        (c.getters, "`lambda`"),
        (c.uses_logger, "`log_and_double()` is not pure"),
        (c.global_total, "global/nonlocal"),
    ],
)
def test_refused_with_rule_and_line(func, fragment):
    refused(func, fragment)


def test_nonlocal_reduction_is_sequential():
    assert c.nonlocal_total([1, 2, 3]) == 6
    # the loop lives in the nested function; its `total` is nonlocal there
    inner_source = explain(c.nonlocal_total)
    assert "no loops" in inner_source


def test_loops_the_report_found_missed_are_parallel():
    for func in (c.word_counts, c.line_lengths, c.arange_sum, c.grouped, c.bump_items):
        infos = detect_loops_in_function(func)
        assert infos[0].parallelizable, (func.__name__, infos[0].reason)
    infos = detect_loops_in_function(c.two_loops)
    assert [i.parallelizable for i in infos] == [True, True]


def test_in_place_on_aliases_is_checked_when_run():
    # accepted by the analysis, since ints rebind; an array or list falls back to order
    for func in (c.double_rows, c.normalise, c.scale_lists):
        assert detect_loops_in_function(func)[0].parallelizable
    RUNNERS.clear()
    m = np.ones((4, 2))
    forced(c.normalise)(m)
    assert m.tolist() == [[0.5, 0.5]] * 4
    assert RUNNERS[-1].last_decision.startswith("sequential")


def test_aliasing_targets_keep_the_loop_in_order():
    RUNNERS.clear()
    a = [1] * 8
    forced(c.running)(a, a)
    assert "reachable" in RUNNERS[-1].last_decision
    forced(c.running)([1] * 8, [2] * 8)
    assert RUNNERS[-1].last_decision.startswith("parallel")


# --------------------------------------------------------------------------- exceptions


def test_base_exception_in_first_iteration_keeps_state_and_launches_nothing(tmp_path):
    before = sys.getswitchinterval()
    out: list = []
    with pytest.raises(c.Abort):
        parallelize(c.collect, workers=2)([-1] + [1] * 15, out)
    assert out == [-1]
    assert sys.getswitchinterval() == before


def test_exception_with_two_argument_init_is_the_original():
    with pytest.raises(c.RangeErr, match=r"outside \[0, 50\]") as err:
        forced(c.check)([1] * 6 + [99, 1])
    assert err.traceback[-1].name == "check"  # raised by the original code, in the caller


# --------------------------------------------------------------------------- threads


def test_decimal_context_and_signal_hold_in_the_caller_thread():
    f = cluster(parallel=True, cores=2)(c.recips)
    with decimal.localcontext(prec=6):
        assert f([7, 3]) == c.recips([7, 3])
        xs = [decimal.Decimal(i) for i in range(1, 9)]
        assert forced(c.divide_all)(xs) == c.divide_all(xs)  # workers get the context too
    if threading.current_thread() is threading.main_thread():
        assert cluster(parallel=True, cores=2)(c.alarmed)([1, 2]) == [2, 4]


def test_auto_parallel_calls_run_in_the_caller_thread_too():
    # auto_parallel instead of parallel=True: the same per-thread state holds.
    clustrix.configure(auto_parallel=True, default_cores=2)
    with decimal.localcontext(prec=6):
        assert cluster(c.recips)([7, 3]) == c.recips([7, 3])
    if threading.current_thread() is threading.main_thread():
        assert cluster(c.alarmed)([1, 2]) == [2, 4]


# --------------------------------------------------------------------------- output


def test_warnings_are_re_emitted_in_order():
    xs = list(range(8))
    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        c.warn_each(xs)
    with warnings.catch_warnings(record=True) as par:
        warnings.simplefilter("always")
        forced(c.warn_each)(xs)
    assert [str(w.message) for w in par] == [str(w.message) for w in plain]
    assert RUNNERS[-1].last_decision.startswith("parallel")


def test_warning_as_error_raises_at_the_same_iteration():
    out: list = []

    def run(func):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                func(list(range(6)))
            except UserWarning as exc:
                out.append(str(exc))

    run(c.warn_each)
    run(forced(c.warn_each))
    assert out == ["value 0", "value 0"]


# --------------------------------------------------------------------------- scope and recursion


def test_self_recursion_and_mutual_recursion():
    assert c.tri(5) == c.tri_plain(5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a deadlock fails, not hangs
        assert pool.submit(c.ping, 5).result(timeout=60) == c.ping_plain(5)


# --------------------------------------------------------------------------- cost


def test_cheap_loops_stay_in_order_after_a_short_probe():
    f = parallelize(c.cheap_sum, workers=2)
    assert f(200_000) == c.cheap_sum(200_000)
    runners = [cell.cell_contents for cell in f.__closure__ or ()]
    runner = next(r for r in runners if isinstance(r, LoopRunner))
    assert runner.last_decision.startswith("sequential")
    assert f(200_000) == c.cheap_sum(200_000)
    assert "per iteration" in runner.last_decision  # remembered: no probe at all


def test_huge_range_raising_early_is_not_materialised():
    with pytest.raises(ValueError, match="early"):
        parallelize(c.raises_early, workers=2)(10**12)


# --------------------------------------------------------------------------- methods


def test_methods_are_parallelised():
    class_explain = explain(c.Scaler.run)
    assert "parallel" in class_explain
    scaler = c.Scaler(3)
    decorated = cluster(parallel=True, cores=2)(c.Scaler.run)
    assert decorated(scaler, list(range(12))) == [3 * x for x in range(12)]
    bound = parallelize(scaler.run, workers=2)
    assert bound(list(range(6))) == [3 * x for x in range(6)]
    assert bound.__self__ is scaler


def test_pure_declaration_is_an_assumption_in_explain():
    f = cluster(parallel=True, pure=[c.log_and_double])(c.uses_logger)
    text = f.explain()
    assert "declared pure" in text and "parallel" in text
    text = cluster(parallel=True)(c.uses_logger).explain()
    assert "sequential" in text and "log_and_double" in text
