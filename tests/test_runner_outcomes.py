"""The runner reports each call's outcome on its own, whatever a call raised."""

from __future__ import annotations

import asyncio

from clustrix import cluster, runner


def _raise(kind):
    def call(i):
        if i == 1:
            raise kind("stop")
        return i

    return call


def test_each_base_exception_is_the_failure_of_its_own_call():
    for kind in (KeyboardInterrupt, asyncio.CancelledError, GeneratorExit):
        batch = runner.run_calls(_raise(kind), [((i,), {}) for i in range(3)])
        oks = [ok for ok, _ in batch["outcomes"]]
        assert oks == [True, False, True], kind
        assert batch["outcomes"][1][1]["type"].endswith(kind.__name__)
        assert [value for ok, value in batch["outcomes"] if ok] == [0, 2]


@cluster()
def local_item(i):
    if i == 1:
        raise asyncio.CancelledError("item 1 gave up")
    return i * 10


def test_a_local_map_keeps_the_other_results_of_a_batch():
    results = local_item.map(range(6), chunksize=3, return_exceptions=True)
    assert [results[i] for i in (0, 2, 3, 4, 5)] == [0, 20, 30, 40, 50]
    assert isinstance(results[1], asyncio.CancelledError)
