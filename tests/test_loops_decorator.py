"""@cluster(parallel=...) on the local machine: loops spread over worker processes, exactly."""

from __future__ import annotations

import os
import time

import pytest

import clustrix
from clustrix import cluster
from clustrix.errors import WorkerCrashedError


def slow_sweep(n, scale):
    results = []
    total = 0
    pids = set()
    for i in range(n):
        time.sleep(0.05)
        value = i * scale
        results.append(value)
        total += value
        pids.add(os.getpid())
    return results, total, pids


def test_parallel_true_spreads_a_safe_loop_with_identical_results():
    plain_results, plain_total, _ = slow_sweep(16, 2.5)
    results, total, pids = cluster(parallel=True, cores=2, pure=[os.getpid])(slow_sweep)(16, 2.5)
    assert (results, total) == (plain_results, plain_total)
    assert len(pids) >= 2, "iterations ran in more than one process"
    assert os.getpid() not in pids or len(pids) > 1


def test_parallel_false_never_transforms():
    results, _, pids = cluster(parallel=False, cores=2)(slow_sweep)(6, 1.0)
    assert results == [float(i) for i in range(6)]
    assert len(pids) == 1, "the whole call ran in one worker process"


def test_auto_parallel_setting_is_the_default_for_parallel():
    clustrix.configure(auto_parallel=True)
    _, _, pids = cluster(cores=2, pure=[os.getpid])(slow_sweep)(16, 1.0)
    assert len(pids) >= 2


def test_unsafe_loops_run_as_written():
    def carried(n):
        x = 1
        for i in range(n):
            x = x * 2 + i
        return x

    assert cluster(parallel=True)(carried)(10) == carried(10)


def test_parallel_array_runs_the_body_here_and_each_iteration_as_a_call():
    def sweep(n):
        where = os.getpid()
        seen = {}
        total = 0
        for i in range(n):
            if i == 3:
                continue
            seen[i] = os.getpid()
            total += i * i
        return where, seen, total

    where, seen, total = cluster(parallel="array", cores=1, pure=[os.getpid])(sweep)(8)
    assert where == os.getpid(), "code around the loop ran in the caller"
    assert sorted(seen) == [0, 1, 2, 4, 5, 6, 7]
    assert os.getpid() not in seen.values(), "every iteration ran in a worker"
    assert total == sum(i * i for i in range(8) if i != 3)


def test_parallel_array_surfaces_the_first_failing_iteration():
    def inverses(n):
        out = []
        for i in range(n):
            out.append(12 // (4 - i) + 1 // (6 - i))
        return out

    try:
        cluster(parallel="array")(inverses)(8)
    except ZeroDivisionError as exc:
        assert isinstance(exc.__cause__, clustrix.RemoteTraceback)
        assert "12 // (4 - i)" in str(exc.__cause__)
    else:
        raise AssertionError("the failing iteration's exception was not raised")


def test_parallel_array_map_keeps_call_order():
    def squares(n):
        out = []
        for i in range(n):
            out.append(i * i)
        return out

    assert cluster(parallel="array")(squares).map([2, 3, 0]) == [[0, 1], [0, 1, 4], []]


def test_parallel_setting_is_validated_by_name():
    try:
        cluster(parallel="arrays")(slow_sweep)
    except clustrix.ConfigError as exc:
        assert exc.field == "parallel"
        assert "'array'" in str(exc)
    else:
        raise AssertionError("parallel='arrays' was accepted")


def dies_at(i, fatal):
    time.sleep(0.05)
    if i == fatal:
        os._exit(3)
    return i


def sweep_that_may_crash(n, fatal):
    out = []
    for i in range(n):
        out.append(dies_at(i, fatal))
    return out


def test_a_worker_dying_in_a_loop_raises_worker_crashed_and_later_loops_still_spread():
    crashing = cluster(parallel=True, cores=2, pure=[dies_at])(sweep_that_may_crash)
    with pytest.raises(WorkerCrashedError, match="worker process died while running chunk"):
        crashing(20, fatal=9)
    # The broken pool was replaced: the next loop runs in parallel again, in fresh workers.
    _, _, pids = cluster(parallel=True, cores=2, pure=[os.getpid])(slow_sweep)(16, 1.0)
    assert len(pids) >= 2


def first_fails_others_leave_a_mark(i, folder):
    if i == 0:
        time.sleep(0.6)  # long enough for the watchdog to launch chunks next to it
        raise ValueError("the first iteration failed")
    time.sleep(0.05)
    (folder / f"ran-{i}").touch()
    return i


def sweep_with_marks(n, folder):
    out = []
    for i in range(n):
        out.append(first_fails_others_leave_a_mark(i, folder))
    return out


def test_a_failing_first_iteration_stops_the_iterations_launched_next_to_it(tmp_path):
    with pytest.raises(ValueError, match="the first iteration failed"):
        cluster(parallel=True, cores=2, pure=[first_fails_others_leave_a_mark])(sweep_with_marks)(
            60, tmp_path
        )
    time.sleep(2.0)  # what was not cancelled has run by now (59 x 0.05 s on 2 workers)
    ran = len(list(tmp_path.iterdir()))
    assert 0 < ran < 30, f"{ran} of 59 later iterations ran after the first one failed"
