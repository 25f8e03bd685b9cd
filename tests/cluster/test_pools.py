"""Warm worker pools (``clustrix.pool``) on the real SLURM, SGE and plain SSH hosts.

Most tests run on SLURM. The scheduler's queue is read over the fixture's SSH login, and
only jobs submitted from this session's remote work folder count, so that other users of
the test cluster cannot disturb the checks. Every pool is stopped by its ``with`` block or
in a ``finally``; workers have little memory and short idle timeouts, so none lingers.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import os
import shlex
import threading
import time
import uuid
from pathlib import Path

import pytest

import clustrix
from clustrix import JobTimeoutError, RemoteTraceback, WorkerCrashedError, cluster
from clustrix.store import JobStore

from .conftest import output_of, wait_for

POOL = {"memory": "500MB", "time": "00:10:00", "idle_timeout": "00:00:30"}


class PoolItemError(ValueError):
    """Raised by a pooled call; must come back as itself."""


# ---------------------------------------------------------------------- functions


@cluster(time="00:05:00")
def double(x):
    time.sleep(0.005)
    return x * 2


@cluster(time="00:05:00")
def chatty(x):
    import sys

    print(f"hello {x}")
    print(f"a warning about {x}", file=sys.stderr)
    return x + 1


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def _scheduler_job():
    """The scheduler's id of the job a call runs in, as a pool worker reports it."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


def _hang_once(x, marker_dir):
    """Item 0 hangs on its first run (its marker holds its worker's job id); others return."""
    marker = os.path.join(marker_dir, str(x))
    if x == 0 and not os.path.exists(marker):
        with open(marker, "w") as out:
            out.write(_scheduler_job())
        time.sleep(300)
    return x * 10


hang_once_retried = cluster(_hang_once, time="00:06:00", retries=1)
hang_once = cluster(_hang_once, time="00:06:00")


@cluster(time="00:00:20")
def timed_call(x):
    """Three seconds of work in a call that asks for 20 s; returns where and when it ran."""
    import subprocess

    job = os.environ["SLURM_JOB_ID"]
    answers = []
    for _ in range(3):  # a busy slurmctld may not answer at once
        answer = subprocess.run(
            ["squeue", "--noheader", "--jobs", job, "--format=%L"],
            capture_output=True,
            text=True,
            check=False,
        )
        answers.append(answer.stdout.strip() or answer.stderr.strip())
        if answer.stdout.split():
            break
    time.sleep(3)
    left = answers[-1].split()
    return x * 2, _scheduler_job(), left[0] if left and left[0][:1].isdigit() else answers


@cluster(time="00:05:00")
def raise_value_error(x):
    raise ValueError(f"bad value {x}")


@cluster(time="00:05:00")
def raise_custom(x):
    raise PoolItemError(f"custom failure {x}")


@cluster(time="00:05:00", cores=2)
def on_two_cores():
    return os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_CPUS_PER_TASK")


@cluster(timeout=3)
def sleeps_past_timeout():
    time.sleep(120)
    return "should not return"


@cluster(time="00:05:00")
def where_am_i(x):
    import socket

    return x, socket.gethostname(), os.getpid()


# ---------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _pool(**arguments):
    """``with clustrix.pool(...)``, except that a failing test does not wait for its calls
    (a hung call would hold the block until the test's timeout): they are cancelled."""
    with clustrix.pool(**arguments) as pool:
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


@pytest.fixture
def shell(test_cluster):
    """A login over SSH, for squeue, scancel and looking at the pool's folder."""
    transport = test_cluster.transport()
    yield transport
    transport.close()


def _work_dir(test_cluster, shell) -> str:
    return test_cluster.work_dir.replace("~", shell.home(), 1)


def _pool_folder(test_cluster, shell, pool) -> str:
    return f"{_work_dir(test_cluster, shell)}/{pool.pool_id}"


def _exists(shell, path: str) -> bool:
    return shell.run(f"test -e {shlex.quote(path)}", check=False).exit_code == 0


def _session_jobs(shell, work_dir: str) -> list[dict[str, str]]:
    """The SLURM jobs in the queue submitted from this session's work folder."""
    listing = output_of(shell, "squeue --noheader --format='%F|%i|%j|%T|%Z'")
    jobs = []
    for line in listing.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        array, job, name, state, folder = fields
        if folder == work_dir or folder.startswith(work_dir + "/"):
            jobs.append(
                {"array": array, "job": job, "name": name, "state": state, "folder": folder}
            )
    return jobs


def _store() -> JobStore:
    return JobStore(clustrix.get_config().job_store)


def _worker_jobs(pool) -> list:
    """The job store's records of the pool's worker jobs."""
    store = _store()
    record = store.get_pool(pool.pool_id)
    assert record is not None, f"{pool.pool_id} is not in the job store"
    jobs = [store.get(job_id) for job_id in dict.fromkeys(record.worker_jobs)]
    return [job for job in jobs if job is not None]


def _worker_scheduler_ids(pool) -> set[str]:
    return {sid for job in _worker_jobs(pool) for sid in job.scheduler_ids}


def _heartbeats(shell, folder: str) -> dict[str, dict]:
    """``workers/<w>.json`` of the pool's folder, by worker name."""
    quoted = shlex.quote(f"{folder}/workers")
    output = output_of(shell, f'for f in {quoted}/*.json; do [ -e "$f" ] && cat "$f" && echo; done')
    beats = {}
    for line in output.splitlines():
        if line.strip():
            status = json.loads(line)
            beats[status["worker"]] = status
    return beats


def _marker(shell, marker_dir: str, name: str) -> str:
    return output_of(shell, f"cat {shlex.quote(marker_dir)}/{name} 2>/dev/null")


def _time_left(text: str) -> int:
    """squeue's %L (``M:SS``, ``H:MM:SS`` or ``D-HH:MM:SS``) in seconds."""
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def _pool_messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("clustrix"))


# ---------------------------------------------------------------------- SLURM: calls


def test_map_of_a_thousand_runs_on_the_pool_workers_only(on_slurm, shell):
    work_dir = _work_dir(on_slurm, shell)
    samples: list[tuple[float, list[dict[str, str]]]] = []
    stop = threading.Event()
    sampled = threading.Event()

    def sample() -> None:
        transport = on_slurm.transport()
        try:
            while not stop.is_set():
                samples.append((time.time(), _session_jobs(transport, work_dir)))
                sampled.set()
                stop.wait(0.3)
        finally:
            transport.close()

    with _pool(workers=2, **POOL) as pool:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            assert sampled.wait(60)
            started = time.time()
            values = double.map(range(1000))
            ended = time.time()
            assert double(21) == 42
        finally:
            stop.set()
            sampler.join(60)
        worker_ids = _worker_scheduler_ids(pool)
        assert pool.status()["calls_done"] == 1001

    assert values == [2 * x for x in range(1000)]
    assert len(worker_ids) == 1, worker_ids  # one job array of two workers
    during = [jobs for at, jobs in samples if started <= at <= ended]
    assert during, "no look at the queue while the map ran"
    assert any(during), "the workers were not in the queue while they ran the map"
    seen = [job for _, jobs in samples for job in jobs]
    assert seen, "the pool's workers never showed in the queue"
    for job in seen:
        assert job["name"] == "clustrix-pool-w2", job
        assert job["array"] in worker_ids, job


def test_pool_submit_futures_work_with_wait_and_as_completed(on_slurm):
    with _pool(workers=2, **POOL) as pool:
        # Both workers serving first, so that the slow and the fast call run side by side.
        assert wait_for(lambda: pool.status()["idle"] == 2, 120), pool.status()
        slow = pool.submit(sleep_then, 4, "slow")
        fast = pool.submit(sleep_then, 0, "fast")
        done, not_done = cf.wait([slow, fast], timeout=120, return_when=cf.FIRST_COMPLETED)
        assert done == {fast} and not_done == {slow}
        futures = [pool.submit(sleep_then, 0.1, n) for n in range(10)]
        done, not_done = cf.wait([*futures, slow], timeout=120)
        assert not not_done
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=120)) == list(range(10))
        assert slow.result() == "slow"
        assert all(f.job_id == pool.pool_id for f in [slow, fast, *futures])
        assert list(pool.map(sleep_then, [0, 0, 0], ["a", "b", "c"])) == ["a", "b", "c"]
        decorated = pool.submit(double, 21)  # a @cluster function submitted to the pool
        assert decorated.result(timeout=120) == 42
        assert decorated.job_id == pool.pool_id


def test_stdout_and_stderr_of_a_pooled_call(on_slurm):
    with _pool(workers=1, **POOL) as pool:
        future = chatty.submit(10)
        assert future.result(timeout=120) == 11
        assert future.job_id == pool.pool_id
        assert future.stdout() == "hello 10\n"
        assert "a warning about 10" in future.stderr()
        other = chatty.submit(20)
        assert other.result(timeout=120) == 21
        assert other.stdout() == "hello 20\n"
        assert future.stdout() == "hello 10\n", "each call keeps its own output"


def test_exceptions_come_back_with_their_type_and_remote_traceback(on_slurm):
    with _pool(workers=1, **POOL):
        with pytest.raises(ValueError, match="bad value 7") as info:
            raise_value_error(7)
        assert type(info.value) is ValueError
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_value_error" in str(cause)
        assert 'raise ValueError(f"bad value {x}")' in str(cause)

        with pytest.raises(PoolItemError, match="custom failure 3") as info:
            raise_custom.submit(3).result(timeout=120)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "raise PoolItemError" in str(info.value.__cause__)

        outcomes = raise_value_error.map([1, 2], return_exceptions=True)
        assert [str(e) for e in outcomes] == ["bad value 1", "bad value 2"]
        assert double(4) == 8, "the pool goes on after its calls raised"


def test_a_call_asking_for_more_cores_runs_as_a_job(on_slurm, caplog):
    caplog.set_level(logging.INFO, logger="clustrix.pools")
    with _pool(workers=1, cores=1, **POOL) as pool:
        assert double(1) == 2
        future = on_two_cores.submit()
        job_id, cpus = future.result(timeout=300)
        worker_ids = _worker_scheduler_ids(pool)
    assert future.job_id != pool.pool_id
    assert not future.backend.startswith("pool")
    assert future.scheduler_id and future.scheduler_id not in worker_ids
    assert job_id == future.scheduler_id
    assert cpus == "2"
    assert "on_two_cores asks for 2 cores, a pool worker has 1" in _pool_messages(caplog)


def test_a_call_past_its_timeout_is_stopped_and_the_pool_goes_on(on_slurm):
    with _pool(workers=1, **POOL) as pool:
        assert double(1) == 2
        began = time.time()
        with pytest.raises(JobTimeoutError) as info:
            sleeps_past_timeout()
        assert isinstance(info.value, TimeoutError)
        assert time.time() - began < 60, "stopped at its timeout, not at the end of the call"
        assert "sleeps_past_timeout" in str(info.value)
        assert double.map(range(20)) == [2 * x for x in range(20)]
        assert pool.status()["workers"] == 1


# ---------------------------------------------------------------------- SLURM: lost workers


def test_a_worker_cancelled_mid_call_gives_its_call_to_another(on_slurm, shell, caplog):
    caplog.set_level(logging.INFO, logger="clustrix.pools")
    marker_dir = f"{_work_dir(on_slurm, shell)}/markers-{uuid.uuid4().hex[:8]}"
    shell.run(f"mkdir -p {shlex.quote(marker_dir)}")
    outcome: dict[str, object] = {}

    def run_map() -> None:
        try:
            outcome["values"] = hang_once_retried.map(range(8), [marker_dir] * 8)
        except BaseException as exc:
            outcome["error"] = exc

    with _pool(workers=2, **POOL) as pool:
        folder = _pool_folder(on_slurm, shell, pool)
        runner = threading.Thread(target=run_map, daemon=True)
        runner.start()
        assert wait_for(lambda: _marker(shell, marker_dir, "0"), 120), "item 0 never started"
        job = _marker(shell, marker_dir, "0")
        assert wait_for(
            lambda: any(
                b["job"] == job and b["state"] == "busy"
                for b in _heartbeats(shell, folder).values()
            ),
            30,
        ), _heartbeats(shell, folder)
        assert job.split("_")[0] in _worker_scheduler_ids(pool)
        shell.run(f"scancel {shlex.quote(job)}")
        runner.join(240)
        assert not runner.is_alive(), "the map did not finish"
        assert "error" not in outcome, outcome.get("error")
        assert outcome["values"] == [10 * x for x in range(8)]
    messages = _pool_messages(caplog)
    assert "running it again" in messages, messages
    assert job in messages


def test_a_worker_cancelled_mid_call_without_retries_fails_it(on_slurm, shell):
    marker_dir = f"{_work_dir(on_slurm, shell)}/markers-{uuid.uuid4().hex[:8]}"
    shell.run(f"mkdir -p {shlex.quote(marker_dir)}")
    with _pool(workers=2, **POOL) as pool:
        folder = _pool_folder(on_slurm, shell, pool)
        future = hang_once.submit(0, marker_dir)
        assert wait_for(lambda: _marker(shell, marker_dir, "0"), 120), "the call never started"
        job = _marker(shell, marker_dir, "0")
        busy = [b["job"] for b in _heartbeats(shell, folder).values() if b["state"] == "busy"]
        assert wait_for(
            lambda: (
                [b["job"] for b in _heartbeats(shell, folder).values() if b["state"] == "busy"]
                == [job]
            ),
            30,
        ), busy
        shell.run(f"scancel {shlex.quote(job)}")
        with pytest.raises(WorkerCrashedError) as info:
            future.result(timeout=120)
        assert f"job {job}" in str(info.value)
        assert info.value.job_id == job
        assert "hang_once" in str(info.value)
        # The other worker (or a replacement) still serves.
        assert double(5) == 10


# ---------------------------------------------------------------------- SLURM: walltime


@pytest.mark.timeout(300)
def test_workers_near_their_walltime_are_replaced_while_work_remains(on_slurm, caplog):
    # Walltime 90 s, less a margin of 9 s: a worker starts a 20 s call only in its first
    # 61 s. 48 calls of 3 s are 72 s of work per worker, more than that, so the pool must
    # replace its workers; every call must start with its 20 s still ahead of it.
    caplog.set_level(logging.INFO, logger="clustrix")
    count = 48
    with _pool(workers=2, memory="500MB", time="00:01:30", idle_timeout="00:00:15") as pool:
        outcomes = timed_call.map(range(count))
        worker_ids = _worker_scheduler_ids(pool)
    assert [value for value, _, _ in outcomes] == [2 * x for x in range(count)]
    ran_on = {job for _, job, _ in outcomes}
    assert len(ran_on) > 2, f"no replacement worker ran a call: {outcomes}"
    assert {job.split("_")[0] for job in ran_on} <= worker_ids, (worker_ids, outcomes)
    assert len(worker_ids) >= 2, "replacements are jobs of their own"
    for _, job, left in outcomes:
        assert isinstance(left, str), f"squeue gave no time left for {job}: {left!r}"
        assert _time_left(left) >= 20, f"a 20 s call started on {job} with {left} left"


def test_idle_workers_leave_after_idle_timeout(on_slurm, shell):
    work_dir = _work_dir(on_slurm, shell)
    idle_timeout = 15  # seconds; a bare number would be minutes, like @cluster's time
    pool = clustrix.pool(workers=1, memory="500MB", time="00:10:00", idle_timeout="00:00:15")
    try:
        assert pool.submit(sleep_then, 0, "one call").result(timeout=120) == "one call"
        done = time.time()
        worker_ids = _worker_scheduler_ids(pool)

        def workers_in_queue() -> list[dict[str, str]]:
            return [j for j in _session_jobs(shell, work_dir) if j["array"] in worker_ids]

        assert workers_in_queue(), "the worker should still be there right after its call"
        assert wait_for(lambda: not workers_in_queue(), idle_timeout + 60, interval=1)
        gone = time.time() - done
        assert idle_timeout / 3 <= gone <= idle_timeout + 45, gone
        assert wait_for(lambda: pool.status()["workers"] == 0, 30), pool.status()
        # An idle pool whose workers left starts workers again for new calls.
        assert pool.submit(sleep_then, 0, "again").result(timeout=180) == "again"
    finally:
        pool.shutdown()
    assert wait_for(lambda: not _session_jobs(shell, work_dir), 30)


def test_leaving_the_block_empties_the_queue_and_removes_the_folder(on_slurm, shell):
    work_dir = _work_dir(on_slurm, shell)
    with _pool(workers=2, **POOL) as pool:
        folder = _pool_folder(on_slurm, shell, pool)
        assert double.map(range(50)) == [2 * x for x in range(50)]
        assert wait_for(lambda: pool.status()["workers"] == 2, 60), pool.status()
        assert _exists(shell, folder)
        assert {"queue", "claimed", "results", "lost", "workers"} <= set(
            output_of(shell, f"ls {shlex.quote(folder)}").split()
        )
        jobs = _session_jobs(shell, work_dir)
        assert jobs and all(job["name"] == "clustrix-pool-w2" for job in jobs)
        job_folders = {job["folder"] for job in jobs}
    assert not _exists(shell, folder), "the pool's folder is removed on leaving the block"
    assert wait_for(lambda: not _session_jobs(shell, work_dir), 15), _session_jobs(shell, work_dir)
    assert not _exists(shell, folder), "nothing wrote the folder again"
    for job_folder in job_folders:
        assert not _exists(shell, job_folder), f"the worker job folder {job_folder} remains"
    with pytest.raises(RuntimeError):
        pool.submit(sleep_then, 0, "too late")
    future = double.submit(3)
    assert future.job_id != pool.pool_id, "outside the block calls are jobs again"
    assert future.result(timeout=300) == 6


def test_shutdown_without_waiting_lets_running_calls_finish_then_stops(on_slurm, shell):
    """As concurrent.futures has it: shutdown(wait=False) returns at once, calls already
    given to the pool still finish, and the pool stops afterwards."""
    work_dir = _work_dir(on_slurm, shell)
    pool = clustrix.pool(workers=1, **POOL)
    folder = _pool_folder(on_slurm, shell, pool)
    try:
        assert pool.submit(sleep_then, 0, "warm").result(timeout=300) == "warm"
        future = pool.submit(sleep_then, 3, "finished")
        started = time.monotonic()
        pool.shutdown(wait=False)
        assert time.monotonic() - started < 2, "shutdown(wait=False) returns at once"
        assert future.result(timeout=120) == "finished"
        assert wait_for(lambda: not _session_jobs(shell, work_dir), 30)
        assert wait_for(lambda: not _exists(shell, folder), 30)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- SGE and plain SSH


def _sge_jobs(shell) -> set[str]:
    listing = output_of(shell, 'qstat -u "$(id -un)"')
    return {line.split()[0] for line in listing.splitlines()[2:] if line.split()}


def test_sge_pool_map_and_submit(on_sge, shell):
    with _pool(workers=2, **POOL) as pool:
        folder = _pool_folder(on_sge, shell, pool)
        assert double.map(range(300)) == [2 * x for x in range(300)]
        futures = [pool.submit(sleep_then, 0.1, n) for n in range(6)]
        done, not_done = cf.wait(futures, timeout=180)
        assert not not_done
        assert sorted(f.result() for f in done) == list(range(6))
        future = chatty.submit(5)
        assert future.result(timeout=120) == 6
        assert future.stdout() == "hello 5\n"
        beats = _heartbeats(shell, folder)
        worker_ids = _worker_scheduler_ids(pool)
        assert beats and all(b["job"].split(".")[0] in worker_ids for b in beats.values()), beats
        assert _sge_jobs(shell) & worker_ids, "the workers are SGE jobs"
    assert not _exists(shell, folder)
    assert wait_for(lambda: not (_sge_jobs(shell) & worker_ids), 30), _sge_jobs(shell)


def test_ssh_pool_map_and_submit(on_ssh, shell):
    with _pool(workers=2, **POOL) as pool:
        folder = _pool_folder(on_ssh, shell, pool)
        assert double.map(range(300)) == [2 * x for x in range(300)]
        futures = [pool.submit(sleep_then, 0.1, n) for n in range(6)]
        done, not_done = cf.wait(futures, timeout=180)
        assert not not_done
        assert sorted(f.result() for f in done) == list(range(6))
        hosts = {host for _, host, _ in where_am_i.map(range(20))}
        assert len(hosts) == 1
        job_folders = [job.remote_folder for job in _worker_jobs(pool)]

        def workers_running() -> str:
            # "[2]0261130-..." matches the folder's name but not this command line itself.
            patterns = "|".join(f"[{Path(f).name[0]}]{Path(f).name[1:]}" for f in job_folders)
            command = f'pgrep -u "$(id -un)" -af -- {shlex.quote(patterns)} || true'
            return output_of(shell, command)

        assert job_folders and workers_running(), "the workers are processes on the host"
    assert not _exists(shell, folder)
    assert wait_for(lambda: not workers_running(), 15), workers_running()
