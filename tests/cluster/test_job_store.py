"""Nothing is lost when the client dies: re-attaching from another process, and the CLI."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

import clustrix
from clustrix.cli import main

SUBMITTER = """
import sys, time, clustrix

@clustrix.cluster(time="00:05:00", memory="200MB")
def slow_square(x):
    import time
    time.sleep(4)
    print("computing", x)
    return x * x

future = slow_square.submit(12)
print(future.job_id, flush=True)
time.sleep(600)  # killed long before this ends
"""


def _environ(test_cluster, cluster_type="slurm"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(test_cluster.environ(cluster_type), HOME=os.environ["HOME"])
    return env


def test_killed_client_then_result_from_a_new_process(on_slurm):
    env = _environ(on_slurm)
    submitter = subprocess.Popen(
        [sys.executable, "-c", SUBMITTER], stdout=subprocess.PIPE, text=True, env=env
    )
    job_id = submitter.stdout.readline().strip()
    assert job_id, "the submitter printed its job id"
    submitter.send_signal(signal.SIGKILL)
    submitter.wait(timeout=30)
    assert submitter.returncode == -signal.SIGKILL

    fetch = (
        "import clustrix, sys\n"
        f"job = clustrix.get_job({job_id!r})\n"
        "print(job.result(timeout=300))\n"
        "print(job.stdout().strip())\n"
        "print(job.state)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", fetch],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["144", "computing 12", "COMPLETED"]


def test_cli_commands_against_real_jobs(on_slurm, tmp_path):
    env = _environ(on_slurm)
    runner = CliRunner()

    @clustrix.cluster(time="00:05:00", memory="200MB")
    def triple(x):
        print("tripling", x)
        return 3 * x

    finished = triple.submit(5)
    assert finished.result(timeout=300) == 15
    clustrix.configure(cleanup_on_success=False)
    kept = triple.submit(7)
    assert kept.result(timeout=300) == 21

    @clustrix.cluster(time="00:05:00", memory="200MB")
    def wait_long():
        time.sleep(300)

    running = wait_long.submit()
    time.sleep(1)

    listed = runner.invoke(main, ["jobs"], env=env)
    assert listed.exit_code == 0, listed.output
    assert running.job_id in listed.output and kept.job_id not in listed.output
    everything = runner.invoke(main, ["jobs", "--all"], env=env)
    assert kept.job_id in everything.output and "COMPLETED" in everything.output
    only_done = runner.invoke(main, ["jobs", "--state", "completed"], env=env)
    assert running.job_id not in only_done.output and kept.job_id in only_done.output

    details = runner.invoke(main, ["job", kept.job_id[:-4]], env=env)  # a unique prefix works
    assert details.exit_code == 0, details.output
    assert "state:          COMPLETED" in details.output
    assert kept.remote_folder in details.output

    logs = runner.invoke(main, ["logs", kept.job_id], env=env)
    assert logs.output == "tripling 7\n"

    printed = runner.invoke(main, ["result", kept.job_id], env=env)
    assert printed.output.strip() == "21"
    saved = tmp_path / "result.pkl"
    runner.invoke(main, ["result", kept.job_id, "--output", str(saved)], env=env)
    assert pickle.loads(saved.read_bytes()) == 21

    gone = runner.invoke(main, ["result", finished.job_id], env=env)
    assert gone.exit_code == 1 and "remote folder was then removed" in gone.output

    cancelled = runner.invoke(main, ["cancel", running.job_id], env=env)
    assert cancelled.output.strip() == f"{running.job_id}: cancelled"
    assert clustrix.get_job(running.job_id).state == "CANCELLED"

    refused = runner.invoke(main, ["clean", "--older-than", "0s"], env=env, input="n\n")
    assert refused.exit_code == 1 and "nothing was removed" in refused.output
    assert clustrix.get_job(kept.job_id)
    cleaned = runner.invoke(main, ["clean", "--older-than", "0s", "--yes"], env=env)
    assert cleaned.exit_code == 0, cleaned.output
    assert on_slurm.transport().run(f"test -e {kept.remote_folder}", check=False).exit_code == 1
    assert runner.invoke(main, ["job", kept.job_id], env=env).exit_code == 1

    missing = runner.invoke(main, ["job", "no-such-job"], env=env)
    assert missing.exit_code == 1 and missing.output.startswith("Error: no job 'no-such-job'")
