"""The job store tells the truth: several watchers, jobs ended while nobody watched (SLURM)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import clustrix
from clustrix import cluster
from clustrix.backend import backend_for
from clustrix.errors import JobCancelledError, ResultsCollectedElsewhereError
from clustrix.store import JobStore

from .conftest import output_of, wait_for


def _environ(test_cluster, cluster_type="slurm"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(test_cluster.environ(cluster_type), HOME=os.environ["HOME"])
    return env


def _submitter(test_cluster, body: str) -> subprocess.Popen:
    """A process that runs ``body`` (with ``slow`` defined) and prints the job id first."""
    source = textwrap.dedent(
        """
        import sys, time, clustrix

        @clustrix.cluster(time="00:10:00")
        def slow(x, seconds):
            import time
            time.sleep(seconds)
            return x * x
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environ(test_cluster),
    )


def _store_path() -> str:
    return os.path.join(os.environ["HOME"], ".clustrix", "jobs.db")


def _delay_status_checks(monkeypatch, wait: str) -> None:
    """This process's status checks each run the shell code ``wait`` first."""
    scheduler_class = type(backend_for(clustrix.get_config()).scheduler)
    original = scheduler_class.status_command
    monkeypatch.setattr(
        scheduler_class,
        "status_command",
        lambda self, jobs, detailed=False: f"{wait}; " + original(self, jobs, detailed),
    )


def test_a_second_watcher_is_told_the_results_went_elsewhere_not_that_the_job_failed(
    on_slurm, monkeypatch
):
    submitter = _submitter(
        on_slurm,
        """
        future = slow.submit(3, 2)
        print(future.job_id, flush=True)
        print(future.result(), flush=True)
        """,
    )
    job_id = submitter.stdout.readline().strip()
    assert job_id, submitter.stderr.read()
    # This process watches too, but its checks wait until the submitter has collected the
    # result and, as cleanup_on_success says, removed the job folder.
    folder = shlex.quote(JobStore(_store_path()).get(job_id).remote_folder)
    _delay_status_checks(
        monkeypatch, f"for _ in $(seq 600); do [ -d {folder} ] || break; sleep 0.2; done"
    )
    job = clustrix.get_job(job_id)
    with pytest.raises(ResultsCollectedElsewhereError, match="collected by another process"):
        job.results(timeout=120)
    assert submitter.wait(timeout=60) == 0
    assert submitter.stdout.read().strip() == "9"
    record = JobStore(job._store.path).get(job_id)
    # The final state the submitter recorded is never downgraded by the second watcher.
    assert (record.state, record.message) == (
        "COMPLETED",
        "result delivered; remote folder removed",
    )


def test_a_final_state_in_the_store_is_never_replaced(tmp_path):
    from clustrix.store import JobRecord

    store = JobStore(tmp_path / "jobs.db")
    store.add(JobRecord("j1", "f", "slurm", "h", "/x", "RUNNING", 1, [1], {}))
    assert store.update("j1", state="COMPLETED", message="result delivered")
    assert not store.update("j1", state="FAILED", message="ended without writing a result")
    record = store.get("j1")
    assert (record.state, record.message) == ("COMPLETED", "result delivered")
    assert store.update("j1", message="note")  # changes other than the state still apply


def _squeue_state(transport, scheduler_id: str) -> str:
    return output_of(transport, f"squeue --noheader --array --format=%T --jobs={scheduler_id}")


def test_status_of_a_job_cancelled_while_nobody_watched_is_cancelled_at_once(on_slurm):
    submitter = _submitter(
        on_slurm,
        """
        future = slow.submit(1, 300)
        print(future.job_id, future.scheduler_id, flush=True)
        time.sleep(600)
        """,
    )
    job_id, scheduler_id = submitter.stdout.readline().split()
    transport = on_slurm.transport()
    assert wait_for(lambda: "RUNNING" in _squeue_state(transport, scheduler_id), 60)
    submitter.send_signal(signal.SIGKILL)  # nobody watches any more
    submitter.wait(timeout=30)
    transport.run(f"scancel {scheduler_id}")
    assert wait_for(lambda: "RUNNING" not in _squeue_state(transport, scheduler_id), 60)
    job = clustrix.get_job(job_id)
    assert job.status() == "CANCELLED"  # the first answer is the current one
    assert job.state == "CANCELLED"


def test_a_job_cancelled_by_the_scheduler_while_watched_is_recorded_cancelled(on_slurm):
    @cluster(time="00:05:00")
    def sleeper(seconds):
        time.sleep(seconds)

    future = sleeper.submit(300)
    transport = on_slurm.transport()
    assert wait_for(lambda: "RUNNING" in _squeue_state(transport, future.scheduler_id), 60)
    transport.run(f"scancel {future.scheduler_id}")
    with pytest.raises(JobCancelledError):
        future.result(timeout=120)
    assert clustrix.get_job(future.job_id).state == "CANCELLED"


@cluster(time="00:05:00")
def fails_on_one(x):
    if x == 1:
        raise ValueError("item 1 is bad")
    return x


def test_the_store_holds_the_final_state_when_a_map_raises(on_slurm, monkeypatch):
    # Both array tasks end before the first status check answers (each check first waits
    # until the queue holds none of the jobs), so both results arrive in one check; the
    # caller, woken by the failure, must find the job's end already recorded.
    scheduler_class = type(backend_for(clustrix.get_config()).scheduler)
    original = scheduler_class.status_command

    def after_the_queue_empties(self, jobs, detailed=False):
        ids = shlex.quote(",".join(jobs))
        wait = f'for _ in $(seq 600); do [ -z "$(squeue -h -j {ids} 2>/dev/null)" ] && break; '
        return wait + "sleep 0.2; done; " + original(self, jobs, detailed)

    monkeypatch.setattr(scheduler_class, "status_command", after_the_queue_empties)
    with pytest.raises(ValueError, match="item 1 is bad") as caught:
        fails_on_one.map(range(4), chunksize=2)
    job_id = next(
        note.split("clustrix.get_job(")[1].split("'")[1]
        for note in getattr(caught.value, "__notes__", [])
        if "get_job(" in note
    )
    assert (
        JobStore(clustrix.get_config().job_store.replace("~", os.environ["HOME"])).get(job_id).state
        == "FAILED"
    )


SLOW_SUBMISSIONS = """
from clustrix.schedulers.slurm import SlurmScheduler

_submit = SlurmScheduler.submit_command
# Each part waits a moment before sbatch, so the client can be killed in the middle.
SlurmScheduler.submit_command = lambda self, script, context: (
    "sleep 0.4; " + _submit(self, script, context)
)
"""


def _killed_mid_submission(test_cluster, calls: int, seconds: float):
    """A client mapping ``calls`` calls as one job per call, SIGKILLed once the scheduler has
    accepted the first; returns the job's store record once its shell on the cluster ended."""
    store = JobStore(os.path.join(os.environ["HOME"], ".clustrix", "jobs.db"))
    before = {record.job_id for record in store.list()}
    submitter = _submitter(
        test_cluster,
        SLOW_SUBMISSIONS
        + f"clustrix.configure(max_array_size=1)\nslow.map(range({calls}), [{seconds}] * {calls})\n",
    )
    transport = test_cluster.transport()
    new: list = []

    def first_part_accepted() -> bool:
        new[:] = [r for r in store.list(states=["SUBMITTING"]) if r.job_id not in before]
        folder = new[0].remote_folder if new else None
        return bool(folder) and output_of(transport, f"cat {folder}/submitted-0") != ""

    assert wait_for(first_part_accepted, 60, interval=0.1), submitter.stderr.read()
    submitter.send_signal(signal.SIGKILL)
    submitter.wait(timeout=30)
    record = store.get(new[0].job_id)
    assert record.state == "SUBMITTING" and not record.submissions
    # The shell on the cluster carries on without its client: let it finish.
    pid_file = f"{record.remote_folder}/submitting.pid"
    assert wait_for(
        lambda: (
            output_of(transport, f'kill -0 "$(cat {pid_file})" 2>/dev/null || echo ended')
            == "ended"
        ),
        120,
    )
    return record


def _cancel_recorded(test_cluster, job_id: str) -> None:
    """Whatever the test did, leave none of the job's submissions in the queue."""
    store = JobStore(os.path.join(os.environ["HOME"], ".clustrix", "jobs.db"))
    ids = store.get(job_id).scheduler_ids
    if ids:
        test_cluster.transport().run(f"scancel {' '.join(ids)}", check=False)


def test_a_job_whose_client_died_mid_submission_is_adopted_listed_and_cancellable(
    on_slurm, request
):
    from click.testing import CliRunner

    from clustrix.cli import main

    record = _killed_mid_submission(on_slurm, 40, 120)
    request.addfinalizer(lambda: _cancel_recorded(on_slurm, record.job_id))
    listing = CliRunner().invoke(main, ["jobs"])
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if record.job_id in line)
    assert "SUBMITTING" not in row and ("PENDING" in row or "RUNNING" in row)
    adopted = JobStore(record_path := os.path.join(os.environ["HOME"], ".clustrix", "jobs.db"))
    ids = adopted.get(record.job_id).scheduler_ids
    assert len(ids) == 40, ids
    cancelled = CliRunner().invoke(main, ["cancel", record.job_id])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output, cancelled.output
    transport = on_slurm.transport()
    assert wait_for(
        lambda: (
            output_of(
                transport, f"squeue --noheader --states=PENDING,RUNNING --jobs={','.join(ids)}"
            )
            == ""
        ),
        60,
    )
    assert JobStore(record_path).get(record.job_id).state == "CANCELLED"


def test_the_results_of_a_job_whose_client_died_mid_submission_can_be_collected(on_slurm, request):
    record = _killed_mid_submission(on_slurm, 6, 0)
    request.addfinalizer(lambda: _cancel_recorded(on_slurm, record.job_id))
    assert clustrix.get_job(record.job_id).results(timeout=180) == [x * x for x in range(6)]


def test_clean_settles_a_submission_whose_client_died_before_anything_was_accepted(on_slurm):
    from click.testing import CliRunner

    from clustrix.cli import main
    from clustrix.store import JobRecord, this_process

    backend = backend_for(clustrix.get_config())
    dead = subprocess.Popen(["true"])
    dead.wait()
    store = backend.store(clustrix.get_config())
    store.add(
        JobRecord(
            job_id="20261129-000000-deadsubmitter",
            function="f",
            cluster_type="slurm",
            host=backend.transport.where,
            remote_folder=f"{backend.work_dir}/20261129-000000-deadsubmitter",
            state="SUBMITTING",
            items=2,
            task_sizes=[1, 1],
            connection=backend.connection,
            parts=[{"offset": 0, "count": 2, "is_array": True}],
            submitter=dict(this_process(), pid=dead.pid),
        )
    )
    cleaned = CliRunner().invoke(main, ["clean", "--older-than", "0s", "--yes"])
    assert cleaned.exit_code == 0, cleaned.output
    assert "20261129-000000-deadsubmitter" in cleaned.output
    assert store.get("20261129-000000-deadsubmitter") is None
