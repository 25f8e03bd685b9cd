"""Many calls as one submission, the Executor, and polling cost, on the real SLURM."""

from __future__ import annotations

import os
import re
import shlex
import time
from concurrent.futures import FIRST_COMPLETED, as_completed, wait

import pytest

import clustrix
from clustrix import cluster
from clustrix.backend import backend_for
from clustrix.calls import CallSpec

from .conftest import output_of, wait_for


class ItemError(ValueError):
    pass


@cluster(time="00:05:00", memory="200MB")
def square(x):
    return x * x


@cluster(time="00:05:00", memory="200MB")
def fail_on_multiples_of_seven(x):
    if x % 7 == 3:
        raise ItemError(f"item {x} failed")
    return x


@cluster(time="00:05:00", memory="200MB")
def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_map_of_200_items_is_one_array_in_input_order(on_slurm):
    results = square.map(range(200))
    assert results == [x * x for x in range(200)]
    (job,) = clustrix.jobs(states=["COMPLETED", "PENDING", "RUNNING"], limit=1)
    record = job.record
    assert record.items == 200
    assert len(record.submissions) == 1, "one submission for the whole map"
    assert record.submissions[0]["is_array"] is True
    assert sum(record.task_sizes) == 200 and len(record.task_sizes) == 100


def test_map_is_split_at_a_small_maximum_array_size(on_slurm):
    clustrix.configure(max_array_size=7, max_parallel_jobs=13, cleanup_on_success=False)
    results = square.map(range(40), chunksize=1)
    assert results == [x * x for x in range(40)]
    (job,) = clustrix.jobs(limit=1, states=None)
    assert [s["count"] for s in job.record.submissions] == [7, 7, 7, 7, 7, 5]
    assert [s["offset"] for s in job.record.submissions] == [0, 7, 14, 21, 28, 35]
    # Six arrays share the 13 tasks allowed at once: 2 each, never 13 each.
    folder = shlex.quote(job.record.remote_folder)
    scripts = on_slurm.transport().run(f"cat {folder}/job-*.sh").stdout
    assert scripts.count("#SBATCH --array=0-6%2\n") == 5
    assert scripts.count("#SBATCH --array=0-4%2\n") == 1


def test_failing_items_with_and_without_return_exceptions(on_slurm):
    results = fail_on_multiples_of_seven.map(range(20), return_exceptions=True)
    for x, value in enumerate(results):
        if x % 7 == 3:
            assert isinstance(value, ItemError) and str(value) == f"item {x} failed"
        else:
            assert value == x

    with pytest.raises(ItemError, match="item 3 failed") as info:
        fail_on_multiples_of_seven.map(range(20))
    note = " ".join(getattr(info.value, "__notes__", []))
    job_id = re.search(r"of the map (\S+);", note).group(1)
    # The other results stay retrievable.
    again = clustrix.get_job(job_id).results(return_exceptions=True, timeout=120)
    assert [v for v in again if not isinstance(v, Exception)] == [
        x for x in range(20) if x % 7 != 3
    ]


def test_cancel_of_a_whole_map(on_slurm):
    backend = backend_for(clustrix.get_config())
    job = backend.submit(
        nap.__wrapped__,
        [((60,), {}) for _ in range(6)],
        CallSpec(resources=nap.resources(), chunksize=1),
        clustrix.get_config(),
    )
    futures = job.futures
    time.sleep(2)
    handle = clustrix.get_job(job.job_id)
    assert handle.cancel() is True
    assert all(f.cancelled() for f in futures)
    squeue = f"squeue -h -r -j {futures[0].scheduler_id} -t PENDING,RUNNING"
    assert wait_for(lambda: output_of(on_slurm.transport(), squeue) == "", 30, 0.5), (
        "no element of the array is left queued or running"
    )
    assert clustrix.get_job(job.job_id).state == "CANCELLED"


def test_polling_is_one_status_command_per_interval_for_200_tasks(on_slurm):
    backend = backend_for(clustrix.get_config())
    commands: list[tuple[float, str]] = []
    original = backend.transport.run

    def recording_run(command, **kwargs):
        commands.append((time.monotonic(), command))
        return original(command, **kwargs)

    backend.transport.run = recording_run
    try:
        started = time.monotonic()
        assert square.map(range(200), chunksize=1) == [x * x for x in range(200)]
        elapsed = time.monotonic() - started
    finally:
        del backend.transport.run
    polls = [c for _, c in commands if "squeue" in c]
    assert polls
    assert all(c.count("squeue") == 1 for c in polls), "one scheduler query per poll command"
    # 200 pending tasks, yet at most one poll per 0.1 s (the shortest interval).
    assert len(polls) <= elapsed / 0.1 + 2
    assert len(polls) < 200


def test_executor_submit_map_wait_as_completed_and_shutdown(on_slurm):
    with clustrix.Executor(time="00:05:00", memory="200MB") as executor:
        futures = [executor.submit(pow, 2, i) for i in range(5)]
        assert sorted(f.result(timeout=300) for f in as_completed(futures, timeout=300)) == [
            1,
            2,
            4,
            8,
            16,
        ]
        assert list(executor.map(pow, [2, 3, 4], [2, 2, 2], chunksize=2)) == [4, 9, 16]
        slow = executor.submit(time.sleep, 30)
        fast = executor.submit(abs, -1)
        done, _ = wait([slow, fast], timeout=300, return_when=FIRST_COMPLETED)
        assert fast in done
        executor.shutdown(wait=True, cancel_futures=True)
        assert slow.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(abs, 1)


def test_progress_bar_shows_counts(on_slurm, capsys):
    square.map(range(10), progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err and "done=10" in err and "failed=0" in err


def test_retries_resubmit_a_task_lost_with_its_node(on_slurm):
    """A node failure (the node set down under a running job) is resubmitted with retries=1."""
    from clustrix.transport.local import LocalTransport

    @cluster(time="00:05:00", memory="200MB", retries=1, no_requeue=True)
    def survive(x):
        import time

        time.sleep(8)
        return x

    future = survive.submit(5)
    root = LocalTransport()  # the tests run as root on the cluster's machine
    squeue = f"squeue -h -o %T -j {future.scheduler_id}"
    wait_for(lambda: output_of(root, squeue) == "RUNNING", 60, 0.2)
    first_id = future.scheduler_id
    try:
        root.run("scontrol update nodename=$(hostname -s) state=down reason=clustrix-test")
        time.sleep(2)
    finally:
        root.run("scontrol update nodename=$(hostname -s) state=resume", check=False)
    assert future.result(timeout=240) == 5
    assert future.attempts == 2
    assert future.scheduler_id != first_id


def test_retry_on_user_exceptions_only_when_asked(on_slurm, tmp_path):
    marker = f"/tmp/clustrix-retry-{os.getpid()}"
    on_slurm.transport().run(f"rm -f {marker}")

    @cluster(time="00:05:00", memory="200MB", retries=2, retry_on=(ConnectionError,))
    def flaky(path):
        from pathlib import Path

        count = int(Path(path).read_text()) + 1 if Path(path).exists() else 1
        Path(path).write_text(str(count))
        if count < 3:
            raise ConnectionError(f"attempt {count}")
        return count

    future = flaky.submit(marker)
    assert future.result(timeout=300) == 3
    assert future.attempts == 3

    @cluster(time="00:05:00", memory="200MB", retries=2)
    def fails_once(path):
        raise ItemError("not retried: ItemError is not in retry_on")

    future = fails_once.submit(marker)
    with pytest.raises(ItemError):
        future.result(timeout=300)
    assert future.attempts == 1


# ------------------------------------------------- array tasks taking the calls of others


def _claims(transport, folder: str) -> list[tuple[int, int]]:
    """``(task, taker)`` of every claimed task's calls in a job folder."""
    listing = output_of(transport, f"cd {shlex.quote(folder)} && ls")
    claims = re.findall(r"^taken-(\d+)-by-(\d+)\.pkl$", listing, flags=re.MULTILINE)
    return [(int(task), int(taker)) for task, taker in claims]


def test_a_map_of_10000_short_calls_runs_in_fewer_elements_than_tasks(on_slurm):
    clustrix.configure(cleanup_on_success=False)
    assert square.map(range(10_000)) == [x * x for x in range(10_000)]
    (job,) = clustrix.jobs(limit=1, states=None)
    record = job.record
    assert record.state == "COMPLETED" and len(record.task_sizes) == 100
    claims = _claims(on_slurm.transport(), record.remote_folder)
    assert sorted(task for task, _ in claims) == list(range(100)), "every task ran once"
    ran_their_own = [task for task, taker in claims if task == taker]
    assert 0 < len(ran_their_own) < 100, "fewer elements ran than tasks were planned"


def test_calls_too_long_to_take_are_each_run_by_their_own_element(on_slurm):
    # Two elements at a time: the last two wait in the queue while the first two run, so
    # a runner could take them, were the calls short.
    clustrix.configure(cleanup_on_success=False, max_parallel_jobs=2)
    assert nap.map([5.5] * 4, chunksize=1) == [5.5] * 4
    (job,) = clustrix.jobs(limit=1, states=None)
    claims = _claims(on_slurm.transport(), job.record.remote_folder)
    assert sorted(claims) == [(task, task) for task in range(4)]


def blocks_on_two(x, marker):
    """Item 2 waits (two minutes at most) for ``marker`` to exist; the others return at once."""
    if x == 2:
        deadline = time.time() + 120
        while not os.path.exists(marker) and time.time() < deadline:
            time.sleep(0.1)
    return x


_RETRIED = {
    retries: cluster(time="00:05:00", memory="200MB", retries=retries)(blocks_on_two)
    for retries in (0, 1)
}


def _start_with_a_taker_stuck_on_task_two(cluster_under_test, marker: str, retries: int):
    """A map of 3 one-call tasks, one element at a time: element 0 runs task 0, then takes
    task 2 (takers start from the end) and waits in it; that element is cancelled then."""
    transport = cluster_under_test.transport()
    transport.run(f"rm -f {shlex.quote(marker)}")
    clustrix.configure(max_parallel_jobs=1, cleanup_on_success=False)
    futures = _RETRIED[retries].submit_map(range(3), [marker] * 3, chunksize=1)
    folder = futures[0].remote_folder
    assert wait_for(lambda: (2, 0) in _claims(transport, folder), 120, 0.3)
    assert futures[0].result(timeout=60) == 0
    transport.run(f"scancel {shlex.quote(futures[0].scheduler_id)}_0")
    return futures


def test_a_task_whose_taker_was_cancelled_fails_naming_both(on_slurm):
    marker = f"/tmp/clustrix-taker-{os.getpid()}-{time.monotonic_ns()}"
    futures = _start_with_a_taker_stuck_on_task_two(on_slurm, marker, retries=0)
    with pytest.raises(clustrix.JobFailedError, match=r"had its calls taken by task 0") as info:
        futures[2].result(timeout=120)
    assert f"{futures[0].scheduler_id}_0" in str(info.value)
    assert futures[1].result(timeout=120) == 1, "the task not taken runs on its own element"


def test_a_task_whose_taker_was_cancelled_is_retried(on_slurm):
    marker = f"/tmp/clustrix-taker-{os.getpid()}-{time.monotonic_ns()}"
    futures = _start_with_a_taker_stuck_on_task_two(on_slurm, marker, retries=1)
    on_slurm.transport().run(f"touch {shlex.quote(marker)}")
    try:
        assert [future.result(timeout=180) for future in futures] == [0, 1, 2]
        assert futures[2].attempts == 2
    finally:
        on_slurm.transport().run(f"rm -f {shlex.quote(marker)}")


def waits_on_zero_and_logs(x, marker, log):
    """Item 0 waits (two minutes at most) for ``marker``; every item appends itself to
    ``log`` (one short append per call: lines never mix)."""
    if x == 0:
        deadline = time.time() + 120
        while not os.path.exists(marker) and time.time() < deadline:
            time.sleep(0.1)
    with open(log, "a") as handle:
        handle.write(f"{x}\n")
    return x


def test_cancelled_calls_are_not_taken_by_a_runner_still_at_work(on_slurm):
    # One element at a time: element 0 waits in its call while the others are queued;
    # some are cancelled meanwhile; then element 0 goes on with the calls of the rest.
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    marker, log = f"/tmp/clustrix-go-{stamp}", f"/tmp/clustrix-ran-{stamp}"
    transport = on_slurm.transport()
    clustrix.configure(max_parallel_jobs=1)
    logged = cluster(time="00:05:00", memory="200MB")(waits_on_zero_and_logs)
    futures = logged.submit_map(range(6), [marker] * 6, [log] * 6, chunksize=1)
    assert wait_for(
        lambda: "RUNNING" in output_of(transport, f"squeue -h -o %T -j {futures[0].scheduler_id}"),
        60,
    )
    assert all(future.cancel() for future in futures[3:])
    transport.run(f"touch {shlex.quote(marker)}")
    assert [future.result(timeout=120) for future in futures[:3]] == [0, 1, 2]
    assert sorted(output_of(transport, f"cat {shlex.quote(log)}").split()) == ["0", "1", "2"]
    transport.run(f"rm -f {shlex.quote(marker)} {shlex.quote(log)}")
