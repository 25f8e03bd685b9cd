"""What each call of an array task hands back, whatever the others raised (real SLURM and SGE)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from clustrix import cluster


@cluster(time="00:05:00")
def item(i):
    if i == 1:
        raise asyncio.CancelledError("item 1 gave up")
    if i == 4:
        raise KeyboardInterrupt("item 4 interrupted")
    return i * 10


@cluster(time="00:05:00")
def interrupted_by_a_signal(i):
    if i == 2:
        os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as a tool inside the job sends
    return i


def test_a_base_exception_fails_only_its_own_call_on_slurm(on_slurm):
    results = item.map(range(6), chunksize=3, return_exceptions=True)
    assert [results[i] for i in (0, 2, 3, 5)] == [0, 20, 30, 50]
    assert isinstance(results[1], asyncio.CancelledError)
    assert "item 1 gave up" in str(results[1])
    assert isinstance(results[4], KeyboardInterrupt)
    # The remote traceback travels with it, as with any other exception.
    assert "raise KeyboardInterrupt" in str(results[4].__cause__)


def test_a_sigint_inside_a_call_fails_only_that_call_on_sge(on_sge):
    results = interrupted_by_a_signal.map(range(4), chunksize=4, return_exceptions=True)
    assert [results[i] for i in (0, 1, 3)] == [0, 1, 3]
    assert isinstance(results[2], KeyboardInterrupt)


def test_a_single_call_raising_keyboard_interrupt_raises_it_in_the_caller(on_slurm):
    with pytest.raises(KeyboardInterrupt) as caught:
        item(4)
    assert "item 4 interrupted" in str(caught.value)
    assert "JobLaunchFailure" not in str(caught.value.__cause__)


@cluster(time="00:05:00", memory="300MB")
def allocate(megabytes):
    return len(bytearray(megabytes * 2**20))


def test_a_memory_error_at_the_sge_limit_says_to_raise_memory(on_sge):
    with pytest.raises(MemoryError) as caught:
        allocate(2000)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "memory=" in notes and "300 MB" in notes and "sge job" in notes


def test_only_the_item_that_ran_out_of_memory_gets_the_hint(on_sge):
    results = allocate.map([1, 2000, 2], chunksize=3, return_exceptions=True)
    assert results[0] == 2**20 and results[2] == 2 * 2**20
    assert isinstance(results[1], MemoryError)
    assert "memory=" in " ".join(getattr(results[1], "__notes__", []))
