from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clustrix import ConfigError, LocalExecutor, WorkerCrashedError
from clustrix.local.executor import auto_chunksize


def power(base, exponent=2):
    return base**exponent


def pid_of(_):
    return os.getpid()


def pid_once_two_are_busy(folder):
    """Return this process's pid after two processes have each taken a task.

    The first task blocks until a second process writes its pid, so the result
    does not depend on how fast the pool spawns its workers on a loaded machine.
    """
    Path(folder, f"{os.getpid()}.pid").touch()
    deadline = time.monotonic() + 30
    while len(list(Path(folder).glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def fail_on_three(x):
    if x == 3:
        raise KeyError(x)
    return x


def crash(_):
    os._exit(7)


def write_marker(path, seconds=0.0):
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return path


SCRIPTS = Path(__file__).parent / "scripts"


def test_context_manager_and_defaults():
    with LocalExecutor() as executor:
        assert executor.max_workers == len(os.sched_getaffinity(0))
        assert executor.submit(power, 4).result(timeout=30) == 16


def test_map_uses_several_worker_processes(tmp_path):
    with LocalExecutor(max_workers=2) as executor:
        pids = set(executor.map(pid_once_two_are_busy, [tmp_path] * 2, chunksize=1))
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
        assert executor.submit(lambda held: held.locked(), lock).result() is False


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


# ---------------------------------------------------------------- processes end with their caller


def _alive(pid):
    """Whether ``pid`` is a running process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads process states from /proc"
)


def _pids_left_after_caller_dies(*arguments, within=20.0):
    """Run tests/scripts/local_worker_lifetime.py; the pids still alive ``within`` s after it died."""
    script = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "local_worker_lifetime.py"), *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = []
    try:
        pids = [int(pid) for pid in script.stdout.readline().split()]
        assert pids, script.stderr.read()
        assert all(_alive(pid) for pid in pids)
        script.stdin.write("die\n")
        script.stdin.flush()
        script.wait(timeout=60)
        deadline = time.monotonic() + within
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        return pids, [pid for pid in pids if _alive(pid)]
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@needs_proc
def test_workers_end_when_their_caller_is_killed():
    pids, left = _pids_left_after_caller_dies("sigkill")
    assert len(pids) >= 1
    assert left == []


@needs_proc
def test_workers_end_when_their_caller_leaves_with_os_exit():
    _, left = _pids_left_after_caller_dies("os_exit")
    assert left == []


@needs_proc
def test_the_process_of_a_call_with_a_timeout_ends_with_its_killed_caller():
    pids, left = _pids_left_after_caller_dies("sigkill", "timeout")
    assert len(pids) >= 2  # the pool's workers and the timed call's own process
    assert left == []


@needs_proc
def test_without_the_parent_death_signal_workers_still_notice_their_caller_is_gone():
    """The portable mechanism alone (as on macOS): each child watches its parent."""
    _, left = _pids_left_after_caller_dies("sigkill", "timeout", "watchdog-only")
    assert left == []


@needs_proc
def test_workers_started_from_a_thread_that_ended_keep_working():
    """Workers tied to their parent are not tied to the thread that happened to start them."""
    with LocalExecutor(max_workers=2, kind="processes") as executor:
        first = []
        starter = threading.Thread(target=lambda: first.append(executor.map(pid_of, range(2))))
        starter.start()
        starter.join()
        time.sleep(1)
        assert all(_alive(pid) for pid in first[0])
        assert executor.map(power, range(4)) == [0, 1, 4, 9]


# ---------------------------------------------------------------- cancelled calls never start


@pytest.mark.parametrize("mode", ["", "retries", "progress"])
def test_interrupted_map_starts_no_further_call(tmp_path, mode):
    """SIGINT (Ctrl-C) during a map of 8 two-second calls on 2 workers: nothing starts after,
    whether the map runs in batches or (with retries, a progress bar) as a future per call."""
    markers = tmp_path / "markers"
    markers.mkdir()
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "interrupted_map.py"), str(markers), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["interrupted"]
    late = {name: t for name, t in report["started"].items() if t >= report["interrupted_at"]}
    assert late == {}, f"started after the interrupt: {sorted(late)}"
    assert len(report["started"]) <= 2


def _wait_for(path, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_cancelling_a_call_the_pool_has_queued_means_it_never_starts(tmp_path):
    with LocalExecutor(max_workers=1, kind="processes") as executor:
        blocker = executor.submit(write_marker, tmp_path / "blocker", 1.0)
        _wait_for(tmp_path / "blocker")
        queued = executor.submit(write_marker, tmp_path / "queued")
        time.sleep(0.3)  # the pool hands it to the busy worker's queue meanwhile
        assert queued.cancel() is True
        assert queued.cancelled()
        blocker.result(timeout=60)
        # The worker takes calls in order: once a later call ran, the cancelled one never will.
        executor.submit(write_marker, tmp_path / "later").result(timeout=60)
    assert not (tmp_path / "queued").exists()


def test_shutdown_cancelling_futures_starts_none_of_the_queued_calls(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    executor = LocalExecutor(max_workers=1, kind="processes")
    blocker = executor.submit(write_marker, markers / "blocker", 1.0)
    _wait_for(markers / "blocker")
    queued = [executor.submit(write_marker, markers / f"queued-{i}") for i in range(3)]
    time.sleep(0.3)  # the pool hands some to the busy worker's queue meanwhile
    executor.shutdown(wait=True, cancel_futures=True)
    assert blocker.result(timeout=60) == markers / "blocker"
    assert all(future.cancelled() for future in queued)
    assert sorted(p.name for p in markers.iterdir()) == ["blocker"]
