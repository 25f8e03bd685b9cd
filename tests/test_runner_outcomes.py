"""The runner reports each call's outcome on its own, whatever a call raised."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from pathlib import Path

import cloudpickle
from jobfolders import job_folder, start_runner

from clustrix import cluster, layout, runner


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


# ------------------------------------------------------------ taking the work of other tasks
#
# A job folder as staging writes it, and the runner run on it as a job script runs it: as a
# process of its own, its output appended to the task's log files.


def _job_folder(path: Path, func, tasks: list[list], time_limit: float | None = None):
    """A job whose task ``i`` calls ``func(x)`` for each ``x`` of ``tasks[i]``."""
    return job_folder(path, func, [[(x,) for x in chunk] for chunk in tasks], time_limit=time_limit)


def _start(folder: Path, task: int) -> subprocess.Popen:
    return start_runner(folder, task)


def _run(folder: Path, task: int) -> int:
    return _start(folder, task).wait(timeout=120)


def _values(folder: Path, task: int) -> list:
    batch = cloudpickle.loads((folder / layout.result_file(task)).read_bytes())
    return [value if ok else value["type"] for ok, value in batch["outcomes"]]


def _printing():
    def double(x):
        print(f"out {x}")
        print(f"err {x}", file=sys.stderr)
        return 2 * x

    return double


def test_a_runner_whose_calls_were_short_runs_the_tasks_not_started(tmp_path):
    tasks = [[3 * t, 3 * t + 1, 3 * t + 2] for t in range(5)]
    folder = _job_folder(tmp_path, _printing(), tasks)
    assert _run(folder, 1) == 0
    for index, chunk in enumerate(tasks):
        assert _values(folder, index) == [2 * x for x in chunk]
        # Each task's output is in its own logs, whichever runner ran it.
        stdout, stderr = (folder / name for name in layout.logs(index))
        assert stdout.read_text() == "".join(f"out {x}\n" for x in chunk)
        assert stderr.read_text() == "".join(f"err {x}\n" for x in chunk)
        assert (folder / layout.taken_file(index, 1)).exists()
    assert not list(folder.glob(layout.calls_file("*")))


def test_a_task_whose_calls_were_taken_exits_at_once_without_writing(tmp_path):
    folder = _job_folder(tmp_path, _printing(), [[1], [2], [3]])
    assert _run(folder, 0) == 0
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert _run(folder, 2) == 0
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_nothing_is_taken_once_the_time_limit_leaves_no_room(tmp_path):
    folder = _job_folder(tmp_path, _printing(), [[1], [2], [3]], time_limit=0.001)
    assert _run(folder, 1) == 0
    assert _values(folder, 1) == [4]
    assert sorted(path.name for path in folder.glob("result-*")) == [layout.result_file(1)]
    assert (folder / layout.calls_file(0)).exists() and (folder / layout.calls_file(2)).exists()


def test_runners_started_together_run_every_call_exactly_once(tmp_path):
    log = tmp_path / "calls.log"

    def record(x):
        with open(log, "a") as handle:  # one short append per call: lines never mix
            handle.write(f"{x}\n")
        return x

    tasks = [list(range(4 * t, 4 * t + 4)) for t in range(30)]
    folder = _job_folder(tmp_path, record, tasks)
    runners = [_start(folder, task) for task in range(8)]
    assert [runner.wait(timeout=120) for runner in runners] == [0] * 8
    assert sorted(int(line) for line in log.read_text().split()) == list(range(120))
    for index, chunk in enumerate(tasks):
        assert _values(folder, index) == chunk
    claims = [path.stem.split("-by-") for path in folder.glob(layout.taken_file("*", "*"))]
    assert sorted(int(task.removeprefix("taken-")) for task, _ in claims) == list(range(30))
    assert {int(taker) for _, taker in claims} <= set(range(8))


def test_a_requeued_task_runs_the_calls_it_had_claimed_again(tmp_path):
    folder = _job_folder(tmp_path, _printing(), [[1], [2]], time_limit=0.001)
    assert _run(folder, 0) == 0
    (folder / layout.result_file(0)).unlink()
    assert _run(folder, 0) == 0
    assert _values(folder, 0) == [2]


def test_a_task_whose_calls_are_missing_reports_it(tmp_path):
    folder = _job_folder(tmp_path, _printing(), [[1], [2]])
    (folder / layout.calls_file(1)).unlink()
    assert _run(folder, 1) == 3
    assert _values(folder, 1) == ["clustrix.PayloadError"]
    assert "the calls of task 1 are missing" in (folder / layout.stderr_file(1)).read_text()


def test_the_pace_takes_short_tasks_while_they_fit_the_budget():
    unknown = runner.Pace(started=0.0, time_limit=None, calls_per_task=10)
    assert not unknown.allows_another(now=0.1), "nothing measured yet"
    unknown.record(0.5, 10)  # 0.05 s a call: 0.5 s a task of 10
    assert unknown.allows_another(now=1.0)
    assert not unknown.allows_another(now=runner.UNLIMITED_BUDGET - 0.5)

    limited = runner.Pace(started=0.0, time_limit=100.0, calls_per_task=10)
    limited.record(1.0, 10)  # a task: 1 s, counted twice against half the limit
    assert limited.allows_another(now=47.9)
    assert not limited.allows_another(now=48.1)

    slow = runner.Pace(started=0.0, time_limit=3600.0, calls_per_task=2)
    slow.record(runner.SHORT_TASK_SECONDS, 1)  # a task of 2 such calls is not short
    assert not slow.allows_another(now=10.0)


def _upstream_reference(folder: Path, task: int) -> types.SimpleNamespace:
    reference = {
        "job_id": "up",
        "folder": str(folder),
        "result": layout.result_file(task),
        "position": 0,
        "item": task,
    }
    return types.SimpleNamespace(**{runner.UPSTREAM_KEY: reference})


def test_calls_failed_by_their_upstream_do_not_make_a_runner_take_other_tasks(tmp_path):
    # A call whose upstream failed ends at once without running: were that counted as a
    # short call, its runner would take the calls of tasks that may run for hours, and then
    # be cancelled with them (the client cancels the tasks of a failed upstream).
    upstream = tmp_path / "up"
    upstream.mkdir()
    failure = {"type": "ValueError", "message": "three is not welcome", "exception": None}
    for task, outcome in ((0, (False, failure)), (1, (True, 5))):
        batch = {"outcomes": [outcome]}
        (upstream / layout.result_file(task)).write_bytes(cloudpickle.dumps(batch))
    tasks = [[_upstream_reference(upstream, 0)], *[[_upstream_reference(upstream, 1)]] * 2]
    folder = _job_folder(tmp_path, _printing(), tasks)
    assert _run(folder, 0) == 0
    assert _values(folder, 0) == ["clustrix.DependencyFailedError"]
    assert not (folder / layout.result_file(1)).exists()
    assert (folder / layout.calls_file(1)).exists() and (folder / layout.calls_file(2)).exists()
    # A call that ran still counts: the runner of task 1 goes on with task 2.
    assert _run(folder, 1) == 0
    assert _values(folder, 1) == _values(folder, 2) == [10]
