from __future__ import annotations

import functools
import inspect
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, as_completed, wait
from pathlib import Path

import cloudpickle
import pytest

import clustrix
from clustrix import (
    ClusterFunction,
    ConfigError,
    JobTimeoutError,
    RemoteError,
    SerializationError,
    WorkerCrashedError,
    cluster,
)

SCRIPTS = Path(__file__).parent / "scripts"


class CustomError(ValueError):
    pass


class NeedsTwoArguments(Exception):
    def __init__(self, first, second):
        super().__init__(f"{first} and {second}")


@cluster
def square(x: int) -> int:
    """Square a number."""
    return x * x


@cluster(cores=2, memory="1GB", time="00:10:00")
def pid_and_value(x):
    return os.getpid(), x


@cluster(executor="processes")
def fail_with(kind, message):
    if kind == "custom":
        raise CustomError(message)
    if kind == "two":
        raise NeedsTwoArguments(message, "more")
    if kind == "exit":
        sys.exit(4)
    if kind == "unpicklable-result":
        return threading.Lock()
    if kind == "crash":
        os._exit(3)
    return message


@cluster(executor="threads")
def square_in_a_thread(x):
    return x * x


@cluster
def sleep_then_return(seconds, value):
    time.sleep(seconds)
    return value


def test_bare_and_called_forms_keep_metadata():
    assert isinstance(square, ClusterFunction)
    assert square.__name__ == "square"
    assert square.__doc__ == "Square a number."
    assert square.__module__ == __name__
    assert inspect.signature(square) == inspect.signature(square.__wrapped__)
    assert square(7) == 49
    assert pid_and_value.__name__ == "pid_and_value"
    assert functools.WRAPPER_ASSIGNMENTS  # update_wrapper copied them all
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        assert getattr(square, attribute) == getattr(square.__wrapped__, attribute)


def test_runs_in_a_worker_process_by_default():
    worker_pid, value = pid_and_value("x")
    assert value == "x"
    assert worker_pid != os.getpid()


def test_decorated_function_stays_picklable():
    assert pickle.loads(pickle.dumps(square)) is square
    clone = cloudpickle.loads(cloudpickle.dumps(cluster(cores=2)(lambda x: x + 1)))
    assert isinstance(clone, ClusterFunction) and clone(1) == 2
    assert clone.effective_config().default_cores == 2


def _script_output(name, *arguments):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_decorated_function_of_a_script_survives_pickle():
    """``pickle.loads(pickle.dumps(bare))(1)`` for a ``@cluster`` function of ``__main__``."""
    assert _script_output("pickled_decorated.py", "exact").strip() == "2"


def test_a_script_function_decorated_with_arguments_pickles_with_pickle_and_cloudpickle():
    report = json.loads(_script_output("pickled_decorated.py", "arguments"))
    assert report["pickle"] == [10, True]  # by reference: the very same object
    assert report["cloudpickle"] == 10
    # By value: loaded in an interpreter whose __main__ is not the script, arguments kept.
    assert report["cloudpickle_elsewhere"] == ["20", "1"]


def test_decorated_functions_and_methods_run_in_multiprocessing_pools():
    report = json.loads(_script_output("pickled_decorated.py", "pools"))
    expected = [[2, 3], [10, 20], [3, 6], [5, 10]]  # __main__, with arguments, module, method
    assert report == {"fork": expected, "spawn": expected}


def test_decorated_function_and_method_of_an_importable_module_round_trip(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import decorated_module

    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        assert loads(dumps(decorated_module.triple)) is decorated_module.triple
        clone = loads(dumps(decorated_module.Scaler(4).scale))
        assert isinstance(clone, ClusterFunction)
        assert clone.__wrapped__.__func__ is decorated_module.Scaler.scale.__wrapped__
        assert clone(2) == 8


def _squares_in_a_forked_child(connection):
    connection.send([square(3), square_in_a_thread(4)])


def test_a_forked_child_uses_its_own_workers_not_the_parents():
    """The parent's pools (their threads, their workers) do not exist in a forked child."""
    assert square(2) == 4 and square_in_a_thread(2) == 4  # the parent's pools are running
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_squares_in_a_forked_child, args=(sender,))
    child.start()
    try:
        assert receiver.poll(60), "the child's calls never finished"
        assert receiver.recv() == [9, 16]
    finally:
        child.kill()
        child.join()


def test_main_module_functions_closures_lambdas_and_exceptions():
    """Functions defined in a script's __main__ run in worker processes (subprocess run)."""
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "main_module_calls.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["plain"]["value"] == 42
    assert report["plain"]["pid"] != report["caller_pid"]
    assert report["closure"] == [10.0, 11.0, 12.0]
    assert report["lambda"] == 7
    assert report["nested"] == 101
    assert report["map"] == [[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]]
    error = report["error"]
    assert error["type"] == "MainModuleError" and error["is_same_class"]
    assert error["message"] == "bad input 7"
    assert "raise MainModuleError" in error["remote_traceback"]


def test_exception_type_message_and_remote_traceback():
    with pytest.raises(CustomError, match=r"^broken input$") as info:
        fail_with("custom", "broken input")
    cause = info.value.__cause__
    assert isinstance(cause, clustrix.RemoteTraceback)
    assert "raise CustomError(message)" in cause.traceback_text
    assert "in fail_with" in cause.traceback_text
    printed = "".join(traceback.format_exception(info.value))
    assert "raise CustomError(message)" in printed, "the remote traceback is shown to the user"


def test_exception_that_cannot_be_rebuilt_keeps_type_name_and_message():
    with pytest.raises(RemoteError) as info:
        fail_with("two", "first")
    assert info.value.type_name.endswith("NeedsTwoArguments")
    assert "first and more" in str(info.value)
    assert "raise NeedsTwoArguments" in str(info.value.__cause__)


def test_sys_exit_in_the_function_does_not_exit_the_caller():
    with pytest.raises(WorkerCrashedError, match=r"sys.exit\(4\)") as info:
        fail_with("exit", "")
    assert info.value.exit_code == 4


def test_unpicklable_return_value_is_a_clear_error():
    with pytest.raises(SerializationError, match="return value \\(lock\\) could not be pickled"):
        fail_with("unpicklable-result", "")


def test_worker_crash_is_reported_and_the_caller_survives():
    with pytest.raises(WorkerCrashedError) as info:
        fail_with("crash", "")
    assert info.value.exit_code == 3
    assert "exited with code 3" in str(info.value)
    assert "The caller is unaffected" in str(info.value)
    # The pool is replaced: the next calls work.
    assert fail_with("ok", "again") == "again"
    assert square.map(range(5)) == [0, 1, 4, 9, 16]


def test_retries_rerun_a_crashed_call(tmp_path):
    marker = tmp_path / "attempts"

    @cluster(executor="processes", retries=2)
    def crash_twice(path):
        count = int(Path(path).read_text()) + 1 if Path(path).exists() else 1
        Path(path).write_text(str(count))
        if count < 3:
            os._exit(9)
        return count

    future = crash_twice.submit(str(marker))
    assert future.result(timeout=60) == 3
    assert future.attempts == 3

    @cluster(executor="processes", retries=1)
    def always_crash():
        os._exit(5)

    future = always_crash.submit()
    with pytest.raises(WorkerCrashedError):
        future.result(timeout=60)
    assert future.attempts == 2


def test_unpicklable_argument_fails_before_running_and_names_it(tmp_path):
    marker = tmp_path / "ran"

    @cluster(executor="processes")
    def touch(path, handle=None):
        Path(path).write_text("ran")

    with pytest.raises(SerializationError) as info:
        touch(str(marker), handle=threading.Lock())
    assert info.value.argument == "handle"
    assert "argument 'handle' of" in str(info.value)
    assert "cannot pickle '_thread.lock' object" in str(info.value)
    assert not marker.exists()

    with pytest.raises(SerializationError, match="argument 'path'"):
        touch(threading.Lock())


def test_unpicklable_call_falls_back_to_threads_automatically(caplog):
    lock = threading.Lock()

    @cluster
    def use_lock(shared_lock, value):
        with shared_lock:
            return value, threading.get_ident()

    with caplog.at_level("DEBUG", logger="clustrix.local"):
        value, ident = use_lock(lock, 5)
    assert value == 5
    assert ident != threading.get_ident()
    assert "use_lock in a thread: argument 'shared_lock' cannot be pickled" in caplog.text


def test_inline_executor_runs_in_the_callers_thread():
    @cluster(executor="inline")
    def where():
        return os.getpid(), threading.get_ident()

    assert where() == (os.getpid(), threading.get_ident())

    @cluster(executor="inline")
    def failing():
        raise CustomError("inline")

    with pytest.raises(CustomError) as info:
        failing()
    assert any(frame.name == "failing" for frame in traceback.extract_tb(info.value.__traceback__))


def test_executor_can_be_forced_by_configuration():
    clustrix.configure(local_executor="threads")

    @cluster
    def where():
        return os.getpid()

    assert where() == os.getpid()


def test_submit_returns_futures_that_work_with_concurrent_futures():
    futures = [square.submit(i) for i in range(6)]
    assert all(isinstance(f, Future) for f in futures)
    done, _ = wait(futures, timeout=60)
    assert len(done) == 6
    assert sorted(f.result() for f in as_completed(futures)) == [0, 1, 4, 9, 16, 25]
    assert [f.result() for f in futures] == [0, 1, 4, 9, 16, 25]

    slow = sleep_then_return.submit(0.5, "slow")
    fast = sleep_then_return.submit(0.0, "fast")
    done, _ = wait([slow, fast], return_when=FIRST_COMPLETED, timeout=60)
    assert fast in done
    assert slow.result(timeout=60) == "slow"


def test_future_callbacks_and_cancel_of_pending_work():
    seen = []
    future = square.submit(3)
    future.add_done_callback(lambda f: seen.append(f.result()))
    assert future.result(timeout=60) == 9
    deadline = time.time() + 5
    while not seen and time.time() < deadline:
        time.sleep(0.01)
    assert seen == [9]

    # Fill both workers and the pool's small hand-over queue, then cancel a call still waiting.
    blockers = [sleep_then_return.submit(0.5, i) for i in range(8)]
    queued = sleep_then_return.submit(0, "never")
    assert queued.cancel() is True
    assert queued.cancelled()
    assert [b.result(timeout=60) for b in blockers] == list(range(8))


def test_map_keeps_input_order_and_zips_iterables():
    assert square.map(range(50)) == [i * i for i in range(50)]
    assert square.map([]) == []

    @cluster
    def add(a, b):
        return a + b

    assert add.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    assert add.map(range(1000), range(1000), chunksize=7) == [2 * i for i in range(1000)]


def test_map_raises_the_first_failure_in_input_order_or_returns_exceptions():
    @cluster(executor="processes")
    def check(x):
        if x in (3, 7):
            raise CustomError(f"item {x}")
        return x

    with pytest.raises(CustomError, match="item 3") as info:
        check.map(range(10))
    if hasattr(info.value, "__notes__"):
        assert "(raised by item 3 of the map)" in info.value.__notes__
    results = check.map(range(10), return_exceptions=True)
    assert [r if not isinstance(r, Exception) else str(r) for r in results] == [
        0,
        1,
        2,
        "item 3",
        4,
        5,
        6,
        "item 7",
        8,
        9,
    ]


def test_timeout_stops_a_process_call():
    @cluster(timeout=0.5, executor="processes")
    def too_slow():
        time.sleep(30)

    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match=r"timeout of 0\.5 s; its process was stopped"):
        too_slow()
    assert time.monotonic() - started < 10

    @cluster(timeout=30, executor="processes")
    def quick(x):
        return x + 1

    assert quick(1) == 2


def test_timeout_in_threads_mode_is_reported():
    @cluster(timeout=0.2, executor="threads")
    def too_slow():
        time.sleep(1)

    with pytest.raises(JobTimeoutError, match="a thread cannot be stopped"):
        too_slow()


def test_nested_decorated_calls_run_inside_the_worker():
    @cluster
    def inner(x):
        return os.getpid(), x

    @cluster(executor="processes")
    def outer_call(x):
        return os.getpid(), inner(x), inner.map([x, x + 1])

    outer_pid, (inner_pid, value), mapped = outer_call(1)
    assert outer_pid == inner_pid, "a nested call does not start another pool"
    assert value == 1
    assert [v for _, v in mapped] == [1, 2]


def test_methods_can_be_decorated():
    class Model:
        def __init__(self, scale):
            self.scale = scale

        @cluster(executor="threads")
        def predict(self, x):
            return self.scale * x

    model = Model(3)
    assert model.predict(2) == 6
    assert model.predict.map([1, 2]) == [3, 6]
    assert model.predict.submit(4).result(timeout=30) == 12


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"cores": 0}, "cores=0 is not valid: expected an integer >= 1"),
        ({"memory": "8XB"}, "memory='8XB' is not valid"),
        ({"time": "forever"}, "time='forever' is not valid"),
        ({"gpus": -1}, "gpus=-1 is not valid"),
        (
            {"executor": "gpu"},
            "executor='gpu' is not valid: expected one of auto, processes, threads, inline",
        ),
        ({"parallel": "yes"}, "parallel='yes' is not valid"),
        ({"retries": -1}, "retries=-1 is not valid: expected an integer >= 0"),
        ({"timeout": 0}, "timeout=0 is not valid: expected a number >= 0.001"),
        ({"environment": 5}, "environment=5 is not valid: expected 'auto'"),
        ({"profile": ""}, "profile='' is not valid"),
    ],
)
def test_decorator_arguments_are_validated_when_decorating(options, expected):
    with pytest.raises(ConfigError) as info:
        cluster(**options)(lambda: None)
    assert expected in str(info.value)


def test_a_call_never_mutates_the_global_config():
    before = clustrix.get_config()

    @cluster(cores=4, memory="2GB", queue="q", executor="threads")
    def f():
        return clustrix.get_config()

    assert f() == before
    assert clustrix.get_config() == before
    assert f.resources().cores == 4 and f.resources().memory_mb == 2048


def test_cluster_types_without_a_backend_are_refused_clearly(monkeypatch):
    # Every accepted cluster_type has a backend now: take one away to see the message.
    from clustrix.schedulers import SCHEDULERS

    monkeypatch.delitem(SCHEDULERS, "sge")
    clustrix.configure(cluster_type="sge", cluster_host="login.example.edu")
    with pytest.raises(clustrix.BackendUnavailableError, match="cluster_type='sge' has no backend"):
        square(2)


def test_local_map_honours_the_per_call_timeout():
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    limited = cluster(timeout=0.5)(nap)
    results = limited.map([0.01, 3], return_exceptions=True)
    assert results[0] == 0.01
    assert isinstance(results[1], clustrix.JobTimeoutError)


def test_local_map_retries_a_crashed_worker():
    def crash_once(marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        return "ran again"

    flaky = cluster(retries=1, executor="processes")(crash_once)
    marker = str(Path.cwd() / "crashed-once")
    assert flaky.map([marker]) == ["ran again"]
