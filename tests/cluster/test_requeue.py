"""Jobs that outlive their time limit by checkpointing and requeueing themselves (SLURM).

SLURM warns a job with --signal=B:USR1@<grace> somewhere between grace and grace + 60 s
before its limit, checks limits every 30 s or so, and holds a requeued job back about 120 s
(reason BeginTime) unless its owner starts it at once: these tests take minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

import clustrix
from clustrix import JobTimeoutError, cluster, requeue
from clustrix.cli import main as cli

from .conftest import output_of, wait_for

_COUNTER = textwrap.dedent(
    """
    import time

    import clustrix

    @clustrix.cluster(time="00:02:00", requeue=5)
    def count_to(total, seconds_per_step):
        state = clustrix.restore({"count": 0, "starts": []})
        state["starts"].append(state["count"])
        while state["count"] < total:
            time.sleep(seconds_per_step)
            state["count"] += 1
            if state["count"] % 3 == 0:
                clustrix.checkpoint(state)
        return state

    future = count_to.submit(180, 1.0)
    print(future.job_id, flush=True)
    """
)


def _environ(test_cluster, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(test_cluster.environ("slurm"), HOME=os.environ["HOME"])
    env.update({f"CLUSTRIX_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@pytest.mark.timeout(900)
def test_a_long_count_requeues_itself_past_its_time_limit_and_resumes(on_slurm):
    # Submitted by a process that exits at once: the job requeues itself with nobody watching.
    done = subprocess.run(
        [sys.executable, "-c", _COUNTER],
        capture_output=True,
        text=True,
        env=_environ(on_slurm, requeue_grace=30, cleanup_on_success=False),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    job = clustrix.get_job(done.stdout.split()[-1])
    state = job.result(timeout=900)
    assert state["count"] == 180
    assert len(state["starts"]) >= 2, state
    assert state["starts"][0] == 0 and all(start > 0 for start in state["starts"][1:]), state
    [future] = job.futures()
    reasons = [attempt.reason for attempt in future.attempt_history]
    assert reasons == [requeue.REQUEUED] * (len(reasons) - 1) + [requeue.FINISHED]
    assert len(reasons) == len(state["starts"]) == future.attempts
    assert [len(runs) for runs in job.attempts().values()] == [len(reasons)]
    assert f"attempt {len(reasons)} on" in job.stderr() + job.stdout()
    shown = CliRunner().invoke(cli, ["job", job.job_id])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("attempt:") == len(reasons), shown.output


def count_with_checkpoints(total, seconds_per_step):
    """Counts to ``total`` from its last checkpoint, saving one at every step; returns the
    count and where each run started from."""
    import time

    state = clustrix.restore({"count": 0, "starts": []})
    state["starts"].append(state["count"])
    while state["count"] < total:
        time.sleep(seconds_per_step)
        state["count"] += 1
        clustrix.checkpoint(state)
    return state


count_slowly = cluster(time="00:10:00", requeue=1)(count_with_checkpoints)
count_each_second = cluster(time="00:01:00", requeue=3)(count_with_checkpoints)


def test_a_job_requeued_from_outside_resumes_from_its_checkpoint(on_slurm):
    future = count_slowly.submit(60, 0.25)
    transport = on_slurm.transport()
    job_id = future.scheduler_id
    assert wait_for(lambda: "RUNNING" in output_of(transport, f"squeue -h -j {job_id} -o %T"), 120)
    time.sleep(4)  # some counting saved
    output_of(transport, f"scontrol requeue {job_id}")  # what a preemption does
    state = future.result(timeout=400)
    assert state["count"] == 60
    assert len(state["starts"]) == 2 and state["starts"][1] > 0, state
    reasons = [attempt.reason for attempt in future.attempt_history]
    assert reasons == [requeue.STOPPED, requeue.FINISHED]


@cluster(time="00:01:00", requeue=1)
def never_done():
    import time

    count = clustrix.restore(0)
    while True:
        time.sleep(0.5)
        count += 1
        clustrix.checkpoint(count)


def test_when_requeues_run_out_the_time_limit_fails_naming_attempts_and_checkpoint(on_slurm):
    clustrix.configure(requeue_grace=20)
    future = never_done.submit()
    with pytest.raises(JobTimeoutError) as info:
        future.result(timeout=600)
    message = str(info.value)
    assert "it ran 2 attempt(s) (requeue=1)" in message, message
    assert "checkpoint-0-0.pkl" in message and "restore()" in message, message
    assert clustrix.get_job(future.job_id).restore() > 0
    assert len(future.attempt_history) == 2


@pytest.mark.timeout(600)
def test_a_grid_engine_job_requeues_itself_at_its_soft_time_limit(on_sge):
    # s_rt = h_rt - requeue_grace sends SIGUSR1; exit status 99 makes Grid Engine run the
    # job again (about 15 s later here), with the same id.
    clustrix.configure(requeue_grace=30)
    future = count_each_second.submit(50, 1.0)
    state = future.result(timeout=500)
    assert state["count"] == 50
    assert len(state["starts"]) >= 2 and all(s > 0 for s in state["starts"][1:]), state
    reasons = [attempt.reason for attempt in future.attempt_history]
    assert reasons == [requeue.REQUEUED] * (len(reasons) - 1) + [requeue.FINISHED]
    assert {attempt.scheduler_id for attempt in future.attempt_history} == {future.scheduler_id}
