"""``clustrix.pool`` without a cluster: a process pool of its own, started at once."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from pathlib import Path

import pytest

import clustrix
from clustrix import cluster


@cluster
def pid_and_double(x):
    return os.getpid(), x * 2


@cluster
def fails(x):
    raise KeyError(f"no item {x}")


def resume_after_crash(n):
    state = clustrix.restore()
    if state is None:
        clustrix.checkpoint({"done": n * 10})
        os._exit(1)  # the first attempt dies with its worker process
    return state["done"] + 1


def checkpoint_and_fail(n):
    clustrix.checkpoint({"n": n})
    raise ValueError(f"item {n} fails")


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@pytest.fixture
def local():
    clustrix.configure(cluster_type="local")


def test_calls_in_the_block_run_on_the_pools_own_processes(local):
    outside = {pid for pid, _ in pid_and_double.map(range(8))}
    with clustrix.pool(workers=2) as pool:
        assert pool.status()["workers"] == 2
        outcomes = pid_and_double.map(range(40))
        pid, value = pid_and_double(21)
        assert value == 42
        future = pid_and_double.submit(5)
        assert future.result(timeout=60)[1] == 10
        assert pool.status()["calls_done"] >= 42
    assert [value for _, value in outcomes] == [2 * x for x in range(40)]
    pids = {pid for pid, _ in outcomes} | {pid}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2, pids
    assert not pids & outside, "the pool's processes are its own"


def test_pool_submit_wait_as_completed_and_map(local):
    with clustrix.pool(workers=2) as pool:
        futures = [pool.submit(sleep_then, 0.01 * (n % 3), n) for n in range(12)]
        done, not_done = cf.wait(futures, timeout=60)
        assert len(done) == 12 and not not_done
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == list(range(12))
        assert list(pool.map(sleep_then, [0, 0, 0], ["a", "b", "c"])) == ["a", "b", "c"]
        assert pool.submit(pid_and_double, 4).result(timeout=60)[1] == 8  # a @cluster function
    with pytest.raises(RuntimeError):
        pool.submit(sleep_then, 0, "after shutdown")


def test_exceptions_keep_their_type(local):
    with clustrix.pool(workers=1):
        with pytest.raises(KeyError, match="no item 3"):
            fails(3)
        assert [type(e) for e in fails.map([1, 2], return_exceptions=True)] == [KeyError] * 2
        assert pid_and_double(1)[1] == 2


def test_a_pool_without_a_block_runs_what_is_submitted_until_shut_down(local):
    pool = clustrix.pool(workers=2)
    try:
        assert pool.submit(sleep_then, 0, "value").result(timeout=60) == "value"
        assert pool.pool_id.startswith("pool-")
    finally:
        pool.shutdown()
    pool.shutdown()  # a second time does nothing
    with pytest.raises(RuntimeError):
        pool.submit(sleep_then, 0, "value")


def test_cancelled_calls_are_not_counted_as_done(local):
    with clustrix.pool(workers=1) as pool:
        first = pool.submit(sleep_then, 1.0, "ran")
        queued = [pool.submit(sleep_then, 1.0, n) for n in range(4)]
        cancelled = sum(future.cancel() for future in queued)
        assert first.result(timeout=60) == "ran"
        assert cancelled >= 1
        done = [f for f in queued if not f.cancelled()]
        cf.wait(done, timeout=60)
        assert pool.status()["calls_done"] == 1 + len(done)


def test_a_call_retried_after_its_worker_died_resumes_from_its_checkpoint(local):
    with clustrix.pool(workers=2, retries=1) as pool:
        folder = Path.home() / ".clustrix" / "checkpoints" / pool.pool_id
        future = pool.submit(resume_after_crash, 4)
        assert future.result(timeout=60) == 41
        assert future.attempts == 2
        assert not [p for p in folder.rglob("*") if p.is_file()], "removed once it succeeded"
        with pytest.raises(ValueError):
            pool.submit(checkpoint_and_fail, 1).result(timeout=60)
        kept = [p.name for p in folder.rglob("*.pkl")]
        assert kept == ["0-0.pkl"], "a failed call keeps its checkpoint while the pool is open"
    assert not folder.exists(), "closing the pool removes its checkpoints"
