"""The result cache against the test SLURM: a stored call submits nothing, a map only its misses."""

from __future__ import annotations

import clustrix
from clustrix import cluster
from clustrix.store import JobStore


@cluster(cache=True, time="00:05:00", memory="500MB")
def cube(x):
    return x**3


def _jobs() -> list:
    """The job store's records, newest first: one per submission (a map is one record)."""
    return JobStore(clustrix.get_config().job_store).list()


def test_a_second_identical_call_submits_nothing(on_slurm):
    assert cube(3) == 27
    assert len(_jobs()) == 1
    assert cube(3) == 27
    future = cube.submit(3)
    assert future.done() and future.result() == 27 and future.backend == "cache"
    assert len(_jobs()) == 1  # neither the call nor the submit made a job


def test_a_map_with_some_stored_calls_submits_only_the_others(on_slurm):
    assert cube.map(range(6)) == [x**3 for x in range(6)]
    (first,) = _jobs()
    assert first.items == 6
    assert cube.map(range(10)) == [x**3 for x in range(10)]
    newest, _ = _jobs()
    assert newest.items == 4  # the 6 stored calls were not submitted again
    assert cube.map(range(10)) == [x**3 for x in range(10)]
    assert len(_jobs()) == 2  # every call stored: no job at all


@cluster(time="00:05:00", memory="500MB")
def mean(values):
    return sum(values) / len(values)


@cluster(time="00:05:00", memory="500MB")
def half(x):
    return x / 2


def test_a_stage_served_from_the_cache_feeds_the_next_as_values(on_slurm):
    first = cube.submit_map(range(4))
    assert mean.submit(first).result(timeout=180) == 9.0
    again = cube.submit_map(range(4))  # every call stored: finished futures, no job
    assert all(future.backend == "cache" for future in again)
    assert mean.submit(again).result(timeout=180) == 9.0
    assert half.submit(again[3]).result(timeout=180) == 13.5  # at top level too
