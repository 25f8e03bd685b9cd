"""Remote calls on Grid Engine, and on "PBS" through SLURM's PBS-style wrappers."""

from __future__ import annotations

import os
import re
import shlex
import time

import pytest

import clustrix
from clustrix import JobFailedError, cluster
from clustrix.errors import JobCancelledError, JobTimeoutError

from .conftest import wait_for


class ItemError(ValueError):
    pass


@cluster(time="00:05:00")
def add(a, b):
    return a + b


@cluster(time="00:05:00", memory="500MB")
def square(x):
    return x * x


@cluster(time="00:05:00")
def fail_on_three(x):
    if x % 7 == 3:
        raise ItemError(f"item {x} failed")
    return x


@cluster(time="00:05:00")
def wait_and_return(seconds, value):
    time.sleep(seconds)
    return value


@cluster(time="00:05:00")
def hard_exit():
    os._exit(7)


def _sge_state(test_cluster, job_id: str) -> str:
    """The qstat state of a job, or "" once it has left the queue."""
    listing = test_cluster.transport().run('qstat -u "$(id -un)"').stdout
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == job_id:
            return fields[4]
    return ""


def _last_job():
    (job,) = clustrix.jobs(limit=1, states=None)
    return job.record


# ---------------------------------------------------------------------- SGE


def test_sge_single_call_returns_its_value(on_sge):
    future = add.submit(2, 3)
    assert future.result(timeout=300) == 5
    assert future.scheduler_id.isdigit()


def test_sge_cores_use_the_smp_parallel_environment(on_sge):
    @cluster(time="00:05:00", cores=2, memory="1GB")
    def slots():
        import resource

        return os.environ["NSLOTS"], os.environ["PE"], resource.getrlimit(resource.RLIMIT_AS)[0]

    # h_vmem is per slot: 512M for each of the 2 slots is a 1 GiB address space limit.
    assert slots() == ("2", "smp", 1024**3)


def test_sge_map_of_50_items_is_one_array_in_input_order(on_sge):
    assert square.map(range(50)) == [x * x for x in range(50)]
    record = _last_job()
    assert len(record.submissions) == 1 and record.submissions[0]["is_array"] is True
    assert record.submissions[0]["count"] == 50


def test_sge_failing_items_with_and_without_return_exceptions(on_sge):
    results = fail_on_three.map(range(10), return_exceptions=True)
    for x, value in enumerate(results):
        if x % 7 == 3:
            assert isinstance(value, ItemError) and str(value) == f"item {x} failed"
        else:
            assert value == x
    with pytest.raises(ItemError, match="item 3 failed"):
        fail_on_three.map(range(10))


def test_sge_map_is_split_at_a_small_maximum_array_size(on_sge):
    clustrix.configure(max_array_size=7, max_parallel_jobs=7, cleanup_on_success=False)
    assert square.map(range(20), chunksize=1) == [x * x for x in range(20)]
    record = _last_job()
    assert [s["count"] for s in record.submissions] == [7, 7, 6]
    assert [s["offset"] for s in record.submissions] == [0, 7, 14]
    script = on_sge.transport().run(f"cat {shlex.quote(record.remote_folder)}/job-2.sh").stdout
    assert "#$ -t 1-6\n#$ -tc 2\n" in script  # three arrays share the 7 tasks at once
    assert "task=$(( 14 + $SGE_TASK_ID - 1 ))" in script


def test_sge_future_cancel_deletes_the_job(on_sge):
    future = wait_and_return.submit(300, "never")
    assert wait_for(lambda: _sge_state(on_sge, future.scheduler_id) == "r")
    assert future.cancel() is True
    assert future.cancelled()
    assert wait_for(lambda: _sge_state(on_sge, future.scheduler_id) == "", 30)


def test_sge_qdel_from_outside_raises_job_cancelled(on_sge):
    future = wait_and_return.submit(300, "never")
    assert wait_for(lambda: _sge_state(on_sge, future.scheduler_id) == "r")
    on_sge.transport().run(f"qdel {future.scheduler_id}")
    with pytest.raises(JobCancelledError) as info:
        future.result(timeout=60)
    assert info.value.state == "CANCELLED"


def test_sge_time_limit_raises_job_timeout(on_sge):
    @cluster(time="00:00:05")
    def overrun():
        time.sleep(60)

    started = time.monotonic()
    with pytest.raises(JobTimeoutError) as info:
        overrun()
    assert info.value.state == "TIMEOUT"
    assert time.monotonic() - started < 50, "killed at h_rt, well before the sleep ends"


def test_sge_exit_code_comes_from_qacct(on_sge):
    with pytest.raises(JobFailedError) as info:
        hard_exit()
    assert (info.value.state, info.value.exit_code) == ("FAILED", 7)


def test_sge_unknown_option_is_refused(on_sge):
    @cluster(prioirty=-5)
    def f():
        return 1

    with pytest.raises(clustrix.ConfigError, match="did you mean 'priority'"):
        f()


# ---------------------------------------------------------------------- PBS (wrappers)


def test_pbs_single_call_returns_its_value(on_pbs):
    future = add.submit(20, 22)
    assert future.result(timeout=300) == 42
    assert re.fullmatch(r"\d+", future.scheduler_id), "the wrappers print a bare id"


@pytest.mark.parametrize("flavor", ["pro", "torque"])
def test_pbs_small_map_is_one_array_in_input_order(on_pbs, flavor):
    @cluster(time="00:05:00", flavor=flavor)
    def cube(x):
        return x**3

    assert cube.map(range(6)) == [x**3 for x in range(6)]
    record = _last_job()
    assert len(record.submissions) == 1 and record.submissions[0]["is_array"] is True


def test_pbs_future_cancel_deletes_the_job(on_pbs):
    future = wait_and_return.submit(300, "never")

    def running() -> bool:
        command = f"squeue -h -o %T -j {future.scheduler_id}"
        return on_pbs.transport().run(command, check=False).stdout.strip() == "RUNNING"

    assert wait_for(running)
    assert future.cancel() is True
    assert future.cancelled()

    def gone() -> bool:
        command = f"squeue -h -o %T -j {future.scheduler_id} -t PENDING,RUNNING"
        return on_pbs.transport().run(command, check=False).stdout.strip() == ""

    assert wait_for(gone, 30)


def test_pbs_job_dying_without_a_result_is_a_failure(on_pbs):
    # The wrappers' qstat shows job_state C and no exit status: a plain failure.
    with pytest.raises(JobFailedError) as info:
        hard_exit()
    assert info.value.state == "FAILED"
