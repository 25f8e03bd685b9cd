"""A pool's cluster side on this machine's file system: workers claiming tasks from the
queue, the call process, walltime, timeouts, SIGTERM, leaving. No scheduler is involved: the
workers are plain processes running ``clustrix.pools.worker.serve``."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from clustrix.futures import ClusterFuture
from clustrix.job_runtime import runtime_archive
from clustrix.pools import files
from clustrix.pools.calls import run_fitting
from clustrix.pools.relay import encode, read_frame
from clustrix.pools.tasks import PoolTask

PYTHON = shlex.quote(sys.executable)


def _pool(tmp_path: Path, func) -> Path:
    folder = tmp_path / "pool"
    files.make_folders(folder)
    (folder / "clustrix-runtime.zip").write_bytes(runtime_archive())
    (folder / files.FUNCTIONS / "f.pkl").write_bytes(cloudpickle.dumps(func))
    (folder / files.RELAY_ALIVE).touch()
    return folder


def _queue(folder: Path, task_id: str, calls: list, **fields) -> None:
    record = {
        "id": task_id,
        "function": "f",
        "python": PYTHON,
        "calls": cloudpickle.dumps([((*args,), {}) for args in calls]),
        "count": len(calls),
        "seconds": fields.pop("seconds", None),
        "timeout": fields.pop("timeout", None),
        **fields,
    }
    order = time.time_ns() // 1000
    name = files.task_name(order, record["seconds"], task_id)
    files.write_record(folder / files.QUEUE / name, record)


def _worker(folder: Path, name: str, walltime=None, idle=30.0) -> subprocess.Popen:
    code = (
        "import json, sys; from clustrix.pools.worker import serve; "
        f"print(json.dumps(serve({str(folder)!r}, {name!r}, {walltime!r}, {idle!r})))"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _results(folder: Path) -> dict[str, dict]:
    return {
        p.name: files.read_record(p)
        for p in (folder / files.RESULTS).iterdir()
        if not p.name.startswith(".")
    }


def _wait(predicate, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _outcomes(record: dict) -> list:
    return cloudpickle.loads(record["batch"])["outcomes"]


def test_task_names_carry_the_walltime_a_task_needs():
    name = files.task_name(12, 90.5, "abc-def")
    assert files.parse_task_name(name) == (90, "abc-def")
    assert files.task_name(1, None, "x").split("-")[1] == "0"
    assert files.parse_task_name(".tmp-file") is None


def test_frames_carry_messages_whole():
    data = bytearray(encode(("tasks", [{"id": "a", "calls": b"\x00" * 70_000}])))

    def trickle(size: int) -> bytes:  # a pipe hands over at most a few bytes at a time
        chunk = bytes(data[: min(size, 5)])
        del data[: len(chunk)]
        return chunk

    assert read_frame(trickle) == (
        "tasks",
        [{"id": "a", "calls": b"\x00" * 70_000}],
    )
    assert read_frame(lambda size: b"") is None


def test_two_workers_run_every_task_exactly_once(tmp_path):
    folder = _pool(tmp_path, lambda x: x * 2)
    for n in range(300):
        _queue(folder, f"t{n}", [(n,), (n + 1000,)])
    workers = [_worker(folder, f"w{i}", idle=2.0) for i in range(2)]
    summaries = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    results = _results(folder)
    assert sorted(results) == sorted(f"t{n}" for n in range(300))
    for n in range(300):
        assert _outcomes(results[f"t{n}"]) == [(True, 2 * n), (True, 2 * (n + 1000))]
    assert sum(s["tasks"] for s in summaries) == 300, "no task ran twice"
    # No relay touches its heartbeat here: a worker leaves as idle, or as without client.
    assert {s["reason"] for s in summaries} <= {
        "idle for 2 s",
        "the client has been gone for 2 s",
    }
    assert not list((folder / files.QUEUE).iterdir())
    heartbeat = json.loads((folder / files.WORKERS / "w0.json").read_text())
    assert heartbeat["state"] == "exited" and heartbeat["calls"] == 2 * summaries[0]["tasks"]


def test_a_call_prints_into_its_own_task_logs(tmp_path):
    def chatty(x):
        print("out", x)
        os.write(2, f"err {x}\n".encode())
        return x

    folder = _pool(tmp_path, chatty)
    _queue(folder, "a", [(1,)])
    _queue(folder, "b", [(2,)])
    worker = _worker(folder, "w0", idle=1.0)
    worker.communicate(timeout=60)
    results = _results(folder)
    assert (results["a"]["stdout"], results["a"]["stderr"]) == ("out 1\n", "err 1\n")
    assert (results["b"]["stdout"], results["b"]["stderr"]) == ("out 2\n", "err 2\n")


def test_a_task_past_its_timeout_is_stopped_and_the_worker_goes_on(tmp_path):
    def nap(seconds):
        import time

        time.sleep(seconds)
        return seconds

    folder = _pool(tmp_path, nap)
    _queue(folder, "slow", [(30,)], timeout=0.5)
    _queue(folder, "quick", [(0,)])
    worker = _worker(folder, "w0", idle=1.0)
    summary = json.loads(worker.communicate(timeout=60)[0])
    results = _results(folder)
    assert results["slow"]["timeout"] == 0.5 and "batch" not in results["slow"]
    assert _outcomes(results["quick"]) == [(True, 0)]
    assert summary["tasks"] == 2


def test_a_crashed_call_process_makes_its_task_lost_not_the_worker(tmp_path):
    def crash(code):
        import os

        if code:
            os._exit(code)
        return "fine"

    folder = _pool(tmp_path, crash)
    _queue(folder, "dies", [(7,)])
    _queue(folder, "after", [(0,)])
    worker = _worker(folder, "w0", idle=1.0)
    worker.communicate(timeout=60)
    lost = files.read_record(folder / files.LOST / "dies")
    assert lost["lost"] and "its process died (exit code 7)" in lost["reason"]
    assert _outcomes(_results(folder)["after"]) == [(True, "fine")]


def test_sigterm_gives_the_running_task_back_as_lost(tmp_path):
    def nap(seconds):
        import time

        time.sleep(seconds)

    folder = _pool(tmp_path, nap)
    _queue(folder, "long", [(60,)])
    worker = _worker(folder, "w0")
    heartbeat = folder / files.WORKERS / "w0.json"
    assert _wait(lambda: heartbeat.exists() and '"busy"' in heartbeat.read_text())
    worker.send_signal(signal.SIGTERM)
    summary = json.loads(worker.communicate(timeout=30)[0])
    assert summary["reason"] == "stopped by the scheduler (SIGTERM)"
    lost = files.read_record(folder / files.LOST / "long")
    assert "its worker's job was stopped" in lost["reason"]
    assert not list((folder / files.CLAIMED / "w0").iterdir())


def test_no_task_starts_that_does_not_fit_in_the_walltime_left(tmp_path):
    folder = _pool(tmp_path, lambda x: x)
    # A 10 s walltime keeps a 1 s margin: a task needing 60 s never fits.
    _queue(folder, "big", [(1,)], seconds=60)
    worker = _worker(folder, "w0", walltime=10.0)
    summary = json.loads(worker.communicate(timeout=60)[0])
    assert summary["reason"] == "no queued task fits in the walltime it has left"
    assert summary["tasks"] == 0
    assert len(list((folder / files.QUEUE).iterdir())) == 1


def test_calls_of_a_task_stop_before_one_that_would_not_fit(monkeypatch):
    import clustrix.pools.calls as calls_module

    clock = {"now": 1000.0}

    class Clock:
        @staticmethod
        def time() -> float:
            return clock["now"]

    monkeypatch.setattr(calls_module, "time", Clock)
    ran = []

    def record(x):
        ran.append(x)
        clock["now"] += 6.0  # each call takes six seconds
        return x

    calls = [((n,), {}) for n in range(5)]
    # 10 s per call: at 1000 and 1006 a call fits before 1017, at 1012 it no longer does.
    batch = run_fitting(record, calls, seconds=10, deadline=1017.0)
    assert [value for _, value in batch["outcomes"]] == [0, 1] == ran
    everything = run_fitting(record, calls, seconds=None, deadline=1017.0)
    assert len(everything["outcomes"]) == 5


@pytest.mark.parametrize("how", ["stop file", "client gone"])
def test_workers_leave_when_the_pool_stops_or_its_client_is_gone(tmp_path, how):
    folder = _pool(tmp_path, lambda x: x)
    if how == "client gone":
        old = time.time() - 3600
        os.utime(folder / files.RELAY_ALIVE, (old, old))
        worker = _worker(folder, "w0", idle=1.5)
        # Idle for less than idle_timeout, but the relay's heartbeat is older than that.
        summary = json.loads(worker.communicate(timeout=30)[0])
        assert summary["reason"] in ("the client has been gone for 1.5 s", "idle for 1.5 s")
    else:
        worker = _worker(folder, "w0")
        assert _wait(lambda: (folder / files.WORKERS / "w0.json").exists())
        (folder / files.STOP).touch()
        summary = json.loads(worker.communicate(timeout=30)[0])
        assert summary["reason"] == "the pool was stopped"


def test_a_result_record_pickles_plain_data(tmp_path):
    folder = _pool(tmp_path, lambda x: {"value": x})
    _queue(folder, "a", [(3,)])
    _worker(folder, "w0", idle=1.0).communicate(timeout=60)
    record = pickle.loads((folder / files.RESULTS / "a").read_bytes())
    assert set(record) == {"id", "worker", "job", "batch", "stdout", "stderr"}
    assert record["job"].startswith("pid ")


def test_a_task_queued_again_keeps_the_key_its_checkpoints_are_named_by():
    task = PoolTask("first", "f", len, [ClusterFuture("f", "pool")], {"count": 1}, [], 1)
    assert task.message() == {"count": 1, "id": "first", "key": "first"}
    task.again()
    assert task.id != "first" and task.message()["key"] == "first"
    template = files.checkpoint_template(Path("/pools/{odd}"), task.key)
    assert template.format(position=2) == "/pools/{odd}/checkpoints/first-2.pkl"


def test_a_lost_call_queued_again_resumes_from_its_checkpoint(tmp_path):
    def resume(n):
        import os

        import clustrix

        state = clustrix.restore()
        if state is None:
            clustrix.checkpoint({"done": n * 10})
            os._exit(1)  # lost with its call process, as with its worker's node
        return state["done"] + 1, clustrix.checkpointing.current_place()

    folder = _pool(tmp_path, resume)
    _queue(folder, "first", [(4,)], key="k")
    _queue(folder, "again", [(4,)], key="k")  # as the client queues a lost task
    _worker(folder, "w0", idle=1.0).communicate(timeout=60)
    assert "its process died" in files.read_record(folder / files.LOST / "first")["reason"]
    place = str(folder / files.CHECKPOINTS / "k-0.pkl")
    assert _outcomes(_results(folder)["again"]) == [(True, (41, place))]
    assert not list((folder / files.CHECKPOINTS).iterdir()), "removed once it succeeded"
