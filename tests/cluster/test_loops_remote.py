"""Loop parallelisation where the call runs remotely: over a job's cores, or as a job array."""

from __future__ import annotations

import os
import time

import pytest

import clustrix
from clustrix import cluster

from .conftest import output_of, wait_for


def busy(seconds):
    """CPU work (not sleep) so that the cost model sees iterations worth spreading."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        count += 1
    return os.getpid()


def sweep(n):
    where = os.getpid()
    pids = []
    total = 0
    for i in range(n):
        pid = busy(0.2)
        pids.append(pid)
        total += i * i
    return where, pids, total


@pytest.mark.parametrize("backend", ["slurm", "sge", "pbs", "ssh"])
def test_safe_loop_spreads_over_the_cores_of_the_job(backend, request):
    request.getfixturevalue(f"on_{backend}")
    # os.getpid and time.perf_counter answer differently each time: declared pure here, as
    # what the test wants to see is where the iterations ran.
    job_pid, pids, total = cluster(
        cores=2, memory="300MB", time="00:05:00", parallel=True, pure=[os.getpid, time.perf_counter]
    )(sweep)(8)
    assert total == sum(i * i for i in range(8))
    assert job_pid != os.getpid(), "the call ran remotely"
    workers = set(pids) - {job_pid}
    assert len(workers) == 2, f"iterations ran in the job's two worker processes: {pids}"


def test_one_core_keeps_the_loop_sequential_in_the_job(on_slurm):
    job_pid, pids, _ = cluster(
        cores=1, memory="200MB", time="00:05:00", parallel=True, pure=[os.getpid, time.perf_counter]
    )(sweep)(3)
    assert set(pids) == {job_pid}


def test_array_mode_sends_the_iterations_as_one_array(on_slurm):
    before = {job.job_id for job in clustrix.jobs()}

    def spread(n):
        where = os.getpid()
        seen = {}
        largest = 0
        for i in range(n):
            if i % 5 == 4:
                continue
            seen[i] = os.getpid()
            largest = max(largest, i * 3)
        return where, seen, largest

    where, seen, largest = cluster(
        memory="200MB", time="00:05:00", parallel="array", pure=[os.getpid, time.perf_counter]
    )(spread)(12)
    assert where == os.getpid(), "the code around the loop ran in the caller"
    assert sorted(seen) == [i for i in range(12) if i % 5 != 4]
    assert os.getpid() not in seen.values()
    assert largest == 33
    new = [job for job in clustrix.jobs() if job.job_id not in before]
    assert len(new) == 1, "all iterations went out as one job"
    assert new[0].items == 12
    assert new[0].function.endswith("iteration")


def test_array_mode_raises_the_first_failing_iteration(on_slurm):
    def inverses(n):
        out = []
        for i in range(n):
            out.append(60 // (7 - i) + 1 // (9 - i))
        return out

    with pytest.raises(ZeroDivisionError) as caught:
        cluster(memory="200MB", time="00:05:00", parallel="array")(inverses)(10)
    assert "60 // (7 - i)" in str(caught.value.__cause__)


def test_cancelling_an_array_mode_call_cancels_its_array(on_slurm):
    before = {job.job_id for job in clustrix.jobs()}

    def waits(n):
        out = []
        for i in range(n):
            time.sleep(300)
            out.append(i)
        return out

    future = cluster(memory="200MB", time="00:10:00", parallel="array")(waits).submit(3)

    def array_job():
        new = [job for job in clustrix.jobs() if job.job_id not in before]
        return new[0] if new and new[0].state in ("PENDING", "RUNNING") else None

    assert wait_for(array_job, 60), "the loop's array was submitted"
    job = array_job()
    transport = on_slurm.transport()
    squeue = "squeue -h -n clustrix-waits-loop -o %i"
    assert wait_for(lambda: output_of(transport, squeue), 30), "SLURM lists the array's tasks"
    assert future.cancel(), repr(future.exception())
    assert wait_for(lambda: clustrix.get_job(job.job_id).state == "CANCELLED", 60)
    assert wait_for(lambda: not output_of(transport, squeue), 60), output_of(transport, squeue)
