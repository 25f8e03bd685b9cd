"""A pipeline's later stages run by the runners of its earlier stage (``runner.follow``), and
the own element of a task that such a runner holds (``runner.wait_for_borrower``)."""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from pathlib import Path

import cloudpickle
from jobfolders import job_folder, start_runner

from clustrix import layout, runner

# The runners are processes of their own, which cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _reference(upstream: Path, task: int) -> types.SimpleNamespace:
    """What staging puts in a call's arguments for the value of ``upstream``'s task."""
    reference = {
        "job_id": upstream.name,
        "folder": str(upstream),
        "result": layout.result_file(task),
        "position": 0,
        "item": task,
    }
    return types.SimpleNamespace(**{runner.UPSTREAM_KEY: reference})


def _stage(path: Path, name: str, func, upstream: Path | None, items: int, **options) -> Path:
    """A job of ``items`` one-call tasks; task i takes the value of ``upstream``'s task i."""
    if upstream is None:
        return job_folder(path, func, [[(i,)] for i in range(items)], name=name, **options)
    needs = {str(i): [str(upstream / layout.result_file(i))] for i in range(items)}
    tasks = [[(_reference(upstream, i),)] for i in range(items)]
    return job_folder(path, func, tasks, name=name, needs=needs, **options)


def _offer(upstream: Path, follower: Path) -> None:
    """What the client appends when it submits ``follower`` after ``upstream``."""
    with open(upstream / layout.FOLLOWERS, "a") as handle:
        handle.write(f"{follower}\n")


def _values(folder: Path, task: int) -> list:
    batch = cloudpickle.loads((folder / layout.result_file(task)).read_bytes())
    return [value if ok else value["type"] for ok, value in batch["outcomes"]]


def _takers(folder: Path) -> dict[int, str]:
    """Who claimed each task's calls: ``{task: taker}``."""
    found = {}
    for path in folder.glob(layout.taken_file("*", "*")):
        task, taker = path.stem.removeprefix("taken-").split("-by-")
        found[int(task)] = taker
    return found


def _run(folder: Path, task: int) -> int:
    return start_runner(folder, task).wait(timeout=120)


def _add_one(x):
    print(f"one {x}")
    return x + 1


def _double(x):
    print(f"two {x}")
    return x * 2


def _minus_three_where(x):
    return x - 3, os.path.basename(os.getcwd())


def test_a_runner_goes_on_with_the_ready_calls_of_the_stages_that_follow_its_job(tmp_path):
    one = _stage(tmp_path, "one", _add_one, None, 4)
    two = _stage(tmp_path, "two", _double, one, 4)
    three = _stage(tmp_path, "three", _minus_three_where, two, 4)
    _offer(one, two)
    _offer(two, three)
    assert _run(one, 0) == 0
    for task in range(4):
        assert _values(one, task) == [task + 1]
        assert _values(two, task) == [(task + 1) * 2]
        # Run in the folder of its own job, as its own element would.
        assert _values(three, task) == [((task + 1) * 2 - 3, "three")]
        # Each task's output is in its own job's logs.
        assert (two / layout.stdout_file(task)).read_text() == f"two {task + 1}\n"
    assert set(_takers(one).values()) == {"0"}
    assert set(_takers(two).values()) == set(_takers(three).values()) == {"one.0"}


def test_the_own_element_of_a_task_run_by_an_earlier_stage_ends_at_once(tmp_path):
    one = _stage(tmp_path, "one", _add_one, None, 2)
    two = _stage(tmp_path, "two", _double, one, 2)
    _offer(one, two)
    assert _run(one, 0) == 0
    before = {path.name: path.read_bytes() for path in two.iterdir()}
    started = time.monotonic()
    assert _run(two, 1) == 0
    assert time.monotonic() - started < runner.LEASE_SECONDS
    assert {path.name: path.read_bytes() for path in two.iterdir()} == before


def test_calls_whose_upstream_results_are_not_there_are_left_to_their_own_elements(tmp_path):
    one = _stage(tmp_path, "one", _add_one, None, 3)
    elsewhere = _stage(tmp_path, "elsewhere", _add_one, None, 3)
    # Task i of "two" reads task i of "elsewhere", whose runners have not run yet.
    two = _stage(tmp_path, "two", _double, elsewhere, 3)
    _offer(one, two)
    assert _run(one, 0) == 0
    assert not list(two.glob("result-*"))
    assert sorted(path.name for path in two.glob("calls-*")) == [
        layout.calls_file(task) for task in range(3)
    ]


def test_a_stage_offered_but_gone_or_not_readable_is_skipped(tmp_path):
    one = _stage(tmp_path, "one", _add_one, None, 1)
    _offer(one, tmp_path / "removed")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / layout.JOB_JSON).write_text("{not json")
    _offer(one, broken)
    (one / layout.FOLLOWERS).open("a").write(str(tmp_path / "half-written"))  # no newline yet
    assert _run(one, 0) == 0
    assert _values(one, 0) == [1]


def test_a_later_stage_of_long_calls_is_sampled_once_then_left(tmp_path):
    def slow(x):
        time.sleep(runner.SHORT_TASK_SECONDS + 0.5)
        return x

    one = _stage(tmp_path, "one", _add_one, None, 3)
    two = _stage(tmp_path, "two", slow, one, 3)
    _offer(one, two)
    assert _run(one, 0) == 0
    # One task taken untimed; it turned out long, so the others keep their own elements.
    assert len(list(two.glob("result-*"))) == 1
    assert len(list(two.glob("calls-*"))) == 2


def test_an_untimed_first_task_is_taken_only_early_in_the_time_limit():
    trusting = runner.Pace(started=0.0, time_limit=1000.0, calls_per_task=1, on_trust=True)
    assert trusting.allows_another(now=runner.TRUST_SHARE * 1000.0 - 1)
    assert not trusting.allows_another(now=runner.TRUST_SHARE * 1000.0 + 1)
    trusting.record(runner.SHORT_TASK_SECONDS + 1, 1)  # then: timed, and long
    assert not trusting.allows_another(now=1.0)
    unlimited = runner.Pace(started=0.0, time_limit=None, calls_per_task=1, on_trust=True)
    assert unlimited.allows_another(now=1.0)
    assert not unlimited.allows_another(now=runner.UNLIMITED_BUDGET + 1)


# ------------------------------------------------------------ the own element as a fallback


def _borrowed(tmp_path: Path) -> tuple[runner.JobFolder, Path]:
    """A one-task job whose calls a runner of job ``other`` claimed."""
    folder = job_folder(tmp_path, _double, [[(5,)]])
    claim = folder / layout.taken_file(0, "other.3")
    os.rename(folder / layout.calls_file(0), claim)
    return runner.JobFolder.load(folder), claim


def test_the_own_element_waits_while_the_claim_is_touched_and_reads_the_result(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(runner, "LEASE_SECONDS", 0.6)
    monkeypatch.setattr(runner, "BORROWED_POLL_SECONDS", 0.05)
    folder, claim = _borrowed(tmp_path)
    assert folder.borrowed(0) == claim and folder.claimed_by_another(0)

    def borrower() -> None:  # touches its claim more often than the lease, then writes
        for _ in range(8):
            time.sleep(0.2)
            os.utime(claim, ns=(time.time_ns(), time.time_ns()))
        (folder.path / layout.result_file(0)).write_bytes(b"written by the borrower")

    thread = threading.Thread(target=borrower)
    thread.start()
    assert runner.wait_for_borrower(folder, 0, claim) is None
    thread.join()
    assert claim.exists(), "the borrower's claim stays: its result is the task's"


def test_the_own_element_takes_back_calls_whose_claim_went_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "LEASE_SECONDS", 0.3)
    monkeypatch.setattr(runner, "BORROWED_POLL_SECONDS", 0.05)
    folder, claim = _borrowed(tmp_path)
    own = runner.wait_for_borrower(folder, 0, claim)
    assert own == folder.file("taken", 0, 0) and own.exists() and not claim.exists()


def test_calls_given_back_meanwhile_are_claimed_by_the_own_element(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "BORROWED_POLL_SECONDS", 0.05)
    folder, claim = _borrowed(tmp_path)
    os.rename(claim, folder.file("calls", 0))  # a resubmission gives them back
    assert runner.wait_for_borrower(folder, 0, claim) == folder.file("taken", 0, 0)


def _crash(x):
    os._exit(3)  # as a segfault or a kill would: no result, no exception


def test_a_later_stage_that_crashes_its_process_leaves_the_runner_s_job_ending_well(tmp_path):
    # The scheduler removes the jobs depending on an element that failed: the crash must
    # be the later stage's own, seen by its own element, not the earlier stage's.
    one = _stage(tmp_path, "one", _add_one, None, 1)
    two = _stage(tmp_path, "two", _crash, one, 1)
    _offer(one, two)
    assert _run(one, 0) == 0
    assert _values(one, 0) == [1]
    assert not (two / layout.result_file(0)).exists()
    assert (two / layout.calls_file(0)).exists(), "given back to its own element"
    assert _run(two, 0) != 0  # which then crashes, as the stage's own failure


def _sleep_long(x):
    time.sleep(60)


def test_later_stages_are_stopped_and_given_back_before_the_time_limit(tmp_path, monkeypatch):
    # A limit of 100 s, of which the margin leaves 2 s (the runner's own process alone
    # stops its child: the child keeps the usual rules, and takes the task untimed).
    monkeypatch.setattr(runner, "FOLLOW_MARGIN_SECONDS", 98.0)
    monkeypatch.setattr(runner, "LEASE_TOUCH_SECONDS", 0.2)
    one = _stage(tmp_path, "one", _add_one, None, 1, time_limit=100.0)
    two = _stage(tmp_path, "two", _sleep_long, one, 1)
    _offer(one, two)
    (one / layout.result_file(0)).write_bytes(cloudpickle.dumps({"outcomes": [(True, 1)]}))
    os.utime(two / layout.calls_file(0), (0, 0))
    code = runner.follow_apart(runner.JobFolder.load(one), "one.0", time.monotonic(), 100.0)
    assert code is None, "stopped at the margin"
    calls = two / layout.calls_file(0)
    assert calls.exists() and not (two / layout.result_file(0)).exists()
    assert calls.stat().st_mtime > 0, "its claim was touched while it ran"


def test_nothing_is_followed_once_the_margin_is_reached(tmp_path):
    one = _stage(tmp_path, "one", _add_one, None, 1)
    two = _stage(tmp_path, "two", _double, one, 1)
    _offer(one, two)
    (one / layout.result_file(0)).write_bytes(cloudpickle.dumps({"outcomes": [(True, 1)]}))
    started = time.monotonic() - 3600.0
    assert runner.follow_apart(runner.JobFolder.load(one), "one.0", started, 3600.0) is None
    assert (two / layout.calls_file(0)).exists()
