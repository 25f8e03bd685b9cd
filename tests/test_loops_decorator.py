"""@cluster(parallel=...) on the local machine: loops spread over worker processes, exactly."""

from __future__ import annotations

import os
import time

import clustrix
from clustrix import cluster


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
    results, total, pids = cluster(parallel=True, cores=2)(slow_sweep)(16, 2.5)
    assert (results, total) == (plain_results, plain_total)
    assert len(pids) >= 2, "iterations ran in more than one process"
    assert os.getpid() not in pids or len(pids) > 1


def test_parallel_false_never_transforms():
    results, _, pids = cluster(parallel=False, cores=2)(slow_sweep)(6, 1.0)
    assert results == [float(i) for i in range(6)]
    assert len(pids) == 1, "the whole call ran in one worker process"


def test_auto_parallel_setting_is_the_default_for_parallel():
    clustrix.configure(auto_parallel=True)
    _, _, pids = cluster(cores=2)(slow_sweep)(16, 1.0)
    assert len(pids) >= 2


def test_unsafe_loops_run_as_written():
    def carried(n):
        x = 1
        for i in range(n):
            x = x * 2 + i
        return x

    assert cluster(parallel=True)(carried)(10) == carried(10)
