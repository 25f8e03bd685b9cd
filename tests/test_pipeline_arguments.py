"""What a pipeline's call is given for futures it cannot wait for on the scheduler
(``clustrix.remote.dependencies.find_upstream``)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from clustrix import ClustrixError, DependencyFailedError
from clustrix.futures import ClusterFuture
from clustrix.remote.dependencies import find_upstream
from clustrix.schedulers.slurm import SlurmScheduler

HERE = "slurm:me@login:22"


def _finished(value) -> ClusterFuture:
    future = ClusterFuture("f", "cache")  # what a cache hit returns
    future.set_result(value)
    return future


def test_finished_futures_of_no_job_here_are_passed_as_their_values():
    plain = Future()
    plain.set_result("from a thread")
    calls = [((_finished(3), [_finished(4)]), {"note": plain})]
    pipeline = find_upstream(calls, HERE, SlurmScheduler())
    assert pipeline is not None and pipeline.job_ids == []
    assert pipeline.calls == [((3, [4]), {"note": "from a thread"})]


def test_calls_without_futures_are_left_alone():
    assert find_upstream([((1, [2]), {})], HERE, SlurmScheduler()) is None


def test_a_future_still_running_elsewhere_is_refused_and_a_failed_one_fails_the_call():
    running = ClusterFuture("f", "local")
    with pytest.raises(ClustrixError, match="not the future of a cluster job"):
        find_upstream([((running,), {})], HERE, SlurmScheduler())
    failed = Future()
    failed.set_exception(ValueError("bad input"))
    with pytest.raises(DependencyFailedError, match="failed: ValueError: bad input"):
        find_upstream([((failed,), {})], HERE, SlurmScheduler())
