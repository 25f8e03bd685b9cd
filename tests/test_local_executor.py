from __future__ import annotations

import os
import threading

import pytest

from clustrix import ConfigError, LocalExecutor, WorkerCrashedError
from clustrix.local.executor import auto_chunksize


def power(base, exponent=2):
    return base**exponent


def pid_of(_):
    return os.getpid()


def fail_on_three(x):
    if x == 3:
        raise KeyError(x)
    return x


def crash(_):
    os._exit(7)


def test_context_manager_execute_single_and_defaults():
    with LocalExecutor() as executor:
        assert executor.max_workers == len(os.sched_getaffinity(0))
        assert executor.execute_single(power, (3,), {"exponent": 3}) == 27
        assert executor.submit(power, 4).result(timeout=30) == 16


def test_execute_parallel_accepts_tuples_and_dicts_in_order():
    with LocalExecutor(max_workers=2) as executor:
        chunks = [(2,), {"base": 3, "exponent": 3}, (4, 1)]
        assert executor.execute_parallel(power, chunks) == [4, 27, 4]


def test_execute_loop_parallel_passes_the_loop_variable():
    with LocalExecutor(max_workers=2) as executor:
        results = executor.execute_loop_parallel(
            power, "base", range(20), func_kwargs={"exponent": 3}
        )
        assert results == [i**3 for i in range(20)]
        assert executor.execute_loop_parallel(
            power, "exponent", [0, 1, 2], func_args=(5,), chunk_size=1
        ) == [1, 5, 25]


def test_map_uses_several_worker_processes():
    with LocalExecutor(max_workers=2) as executor:
        pids = set(executor.map(pid_of, range(40), chunksize=1))
    assert os.getpid() not in pids
    assert len(pids) == 2


def test_map_batches_tiny_calls():
    assert auto_chunksize(10_000, 2) == 1250
    assert auto_chunksize(16, 2) == 2
    assert auto_chunksize(3, 8) == 1
    with LocalExecutor(max_workers=2) as executor:
        assert executor.map(power, range(10_000)) == [i * i for i in range(10_000)]


@pytest.mark.parametrize("kind", ["processes", "threads", "inline"])
def test_every_kind_returns_exceptions_in_order(kind):
    with LocalExecutor(max_workers=2, kind=kind) as executor:
        results = executor.map(fail_on_three, range(6), return_exceptions=True)
        assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
        assert isinstance(results[3], KeyError)
        with pytest.raises(KeyError):
            executor.map(fail_on_three, range(6))


def test_threads_kind_runs_in_this_process():
    with LocalExecutor(max_workers=2, kind="threads") as executor:
        assert set(executor.map(pid_of, range(4))) == {os.getpid()}
        lock = threading.Lock()
        assert executor.execute_single(lambda held: held.locked(), (lock,)) is False


def test_crash_in_map_is_reported_and_executor_recovers():
    with LocalExecutor(max_workers=2, kind="processes") as executor:
        with pytest.raises(WorkerCrashedError, match="exited with code 7"):
            executor.map(crash, range(3))
        assert executor.map(power, range(3)) == [0, 1, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gpu"}, "executor='gpu' is not valid"),
        ({"max_workers": 0}, "max_workers=0 is not valid: expected an integer >= 1"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LocalExecutor(**kwargs)


def test_invalid_chunksize():
    with LocalExecutor(max_workers=1) as executor, pytest.raises(ConfigError, match="chunksize=0"):
        executor.map(power, [1], chunksize=0)
