"""Pipelines the cluster runs by itself: futures of jobs as arguments of further calls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import clustrix
from clustrix import DependencyFailedError, cluster

from .conftest import output_of, wait_for


@cluster(time="00:10:00")
def slow_square(x, seconds=0):
    import time

    time.sleep(seconds)
    return x * x


@cluster
def plus_one(x):
    return x + 1


@cluster
def total(values):
    return sum(values)


@cluster(time="00:10:00")
def add_ten(x):
    return x + 10


@cluster
def fails_on_three(x):
    if x == 3:
        raise ValueError("three is not welcome")
    return x


def _environ(test_cluster, cluster_type="slurm"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(test_cluster.environ(cluster_type), HOME=os.environ["HOME"])
    return env


_SUBMITTER = textwrap.dedent(
    """
    import clustrix

    @clustrix.cluster(time="00:10:00")
    def first(x):
        import time
        time.sleep(8)
        return x * 10

    @clustrix.cluster
    def second(x):
        return x + 1

    @clustrix.cluster
    def third(values):
        return sum(values)

    a = first.submit_map(range(4))
    b = second.submit_map(a)
    c = third.submit(b)
    print(a[0].scheduler_id, b[0].scheduler_id, c.scheduler_id, c.job_id, flush=True)
    """
)


def test_a_pipeline_submitted_by_a_process_that_exits_is_collected_by_another(on_slurm):
    done = subprocess.run(
        [sys.executable, "-c", _SUBMITTER],
        capture_output=True,
        text=True,
        env=_environ(on_slurm),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    _, second, third, job_id = done.stdout.split()
    transport = on_slurm.transport()
    queue = output_of(
        transport, f"squeue --noheader --array --format='%i %T %r' -j {second},{third}"
    )
    assert "PENDING" in queue and "Dependency" in queue, queue
    later = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import clustrix; print(clustrix.get_job({job_id!r}).result(timeout=180))",
        ],
        capture_output=True,
        text=True,
        env=_environ(on_slurm),
        timeout=240,
    )
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == str(sum(x * 10 + 1 for x in range(4)))
    record = clustrix.get_job(job_id).record
    assert len(record.depends_on) == 1


def test_element_wise_dependencies_on_an_array(on_slurm):
    upstream = slow_square.submit_map(range(10), [2] * 10)
    downstream = plus_one.submit_map(upstream)
    detail = output_of(on_slurm.transport(), f"scontrol show job {downstream[0].scheduler_id}")
    assert f"aftercorr:{upstream[0].scheduler_id}" in detail, detail
    assert [f.result(timeout=180) for f in downstream] == [x * x + 1 for x in range(10)]


def test_an_upstream_failure_removes_the_downstream_jobs(on_slurm):
    upstream = fails_on_three.submit_map(range(5))
    downstream = slow_square.submit_map(upstream, [30] * 5)
    with pytest.raises(DependencyFailedError) as caught:
        downstream[3].result(timeout=180)
    assert caught.value.upstream_job_id == upstream[0].job_id
    assert caught.value.job_id == downstream[0].job_id, "the failed job is the downstream one"
    assert caught.value.item == 3
    assert "three is not welcome" in str(caught.value)
    assert [f.result(timeout=180) for i, f in enumerate(downstream) if i != 3] == [
        x * x for x in (0, 1, 2, 4)
    ]
    element = f"{downstream[0].scheduler_id}_3"
    transport = on_slurm.transport()
    assert wait_for(
        lambda: "PENDING" not in output_of(transport, f"squeue --noheader -h -j {element} -o %T"),
        60,
    )


def _two_stages() -> None:
    squares = slow_square.submit_map(range(3))
    assert total.submit(squares).result(timeout=180) == 5
    assert plus_one.submit(squares[2]).result(timeout=180) == 5


def test_a_two_stage_pipeline_on_grid_engine(on_sge):
    _two_stages()


def test_a_two_stage_pipeline_on_a_plain_ssh_host(on_ssh):
    _two_stages()


def test_a_stage_whose_calls_all_succeeded_frees_its_dependents(on_slurm):
    # One element at a time (max_parallel_jobs=1): the first element runs every call of the
    # stage (they are short), while the others wait in the queue. Once the stage's calls all
    # succeeded, the next stage's dependency is cleared and those queued elements are
    # cancelled, instead of each starting and ending before the next stage may start.
    clustrix.configure(max_parallel_jobs=1)
    first = plus_one.submit_map(range(30), chunksize=1)
    second = plus_one.submit_map(first, chunksize=1)
    assert [f.result(timeout=300) for f in second] == [x + 2 for x in range(30)]
    transport = on_slurm.transport()
    command = f"sacct -n -X -P -o State -j {first[0].scheduler_id} --starttime now-1hour"
    # Cancelled right after the check that brought the results (and accounted a moment later).
    assert wait_for(lambda: "CANCELLED" in output_of(transport, command).split(), 30)


# ------------------------------------------------------------ later stages in earlier runners


def _claims(transport, folder: str) -> dict[int, str]:
    """Who claimed each task's calls in a job folder: ``{task: taker}``."""
    found = {}
    for name in output_of(transport, f"ls {folder}").split():
        if name.startswith("taken-"):
            task, taker = name.removeprefix("taken-").removesuffix(".pkl").split("-by-")
            found[int(task)] = taker
    return found


@pytest.mark.parametrize("where", ["on_slurm", "on_sge", "on_ssh"])
def test_later_stages_run_in_the_processes_of_the_first(where, request):
    # The first stage's calls last long enough for the later stages to be submitted; its
    # runners then run their ready calls, as the stages ask for the same resources.
    test_cluster = request.getfixturevalue(where)
    clustrix.configure(cleanup_on_success=False)
    first = slow_square.submit_map(range(4), [3] * 4)
    second = add_ten.submit_map(first)
    third = add_ten.submit_map(second)
    assert [f.result(timeout=180) for f in third] == [x * x + 20 for x in range(4)]
    transport = test_cluster.transport()
    for stage in (second, third):
        takers = _claims(transport, stage[0].remote_folder)
        assert sorted(takers) == [0, 1, 2, 3]
        assert all(taker.startswith(f"{first[0].job_id}.") for taker in takers.values()), takers


def test_a_later_stage_asking_for_other_resources_runs_in_its_own_elements(on_slurm):
    clustrix.configure(cleanup_on_success=False)
    first = slow_square.submit_map(range(3), [3] * 3)
    second = plus_one.submit_map(first)  # no time limit: not what the first stage asked for
    assert [f.result(timeout=180) for f in second] == [x * x + 1 for x in range(3)]
    takers = _claims(on_slurm.transport(), second[0].remote_folder)
    assert sorted(takers) == [0, 1, 2] and all(t.isdigit() for t in takers.values()), takers
