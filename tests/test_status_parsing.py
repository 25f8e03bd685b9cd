"""Status output read by the schedulers' parsers: only their own framed lines count.

A login shell may print text before any command runs (an ``echo`` in ``~/.bashrc``, a site
notice); a parser must never take it for the scheduler's answer, nor for its complaint.
"""

from __future__ import annotations

import subprocess

import pytest

from clustrix.errors import SchedulerUnavailableError
from clustrix.schedulers import JobState
from clustrix.schedulers.pbs import PbsScheduler
from clustrix.schedulers.sge import SgeScheduler
from clustrix.schedulers.slurm import _SECTION, SlurmScheduler

BANNER = "Please report errors to the help desk.\nERROR: quota nearly full on /home\n"


def test_a_login_banner_mentioning_errors_is_not_a_squeue_failure():
    output = "Please report errors to the help desk.\n4242|RUNNING|None\n" + _SECTION + "\n"
    statuses = SlurmScheduler().parse_status(output, ["4242"])
    assert statuses["4242"].state is JobState.RUNNING


def test_a_banner_before_the_framed_squeue_answer_is_ignored():
    # What the status command prints through a chatty shell, squeue's exit status included.
    output = (
        BANNER
        + "--clustrix-queue--\n"
        + "4242|RUNNING|None\n4243_1|PENDING|Priority\n4243_[2-5%2]|PENDING|JobArrayTaskLimit\n"
        + "--clustrix-queue-exit 0\n"
        + _SECTION
        + "\n"
        + BANNER
        + "4244|COMPLETED|0:0\n4244.batch|COMPLETED|0:0\n"
    )
    statuses = SlurmScheduler().parse_status(output, ["4242", "4243", "4244"])
    assert statuses["4242"].state is JobState.RUNNING
    assert statuses["4243_1"].state is JobState.PENDING
    assert statuses["4244"].state is JobState.COMPLETED
    assert statuses["4244"].exit_code == 0
    assert statuses["4243"].state is JobState.UNKNOWN


def test_squeue_failing_is_told_by_its_exit_status_and_its_own_words():
    down = (
        "--clustrix-queue--\n"
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
        "--clustrix-queue-exit 1\n" + _SECTION + "\n"
    )
    with pytest.raises(SchedulerUnavailableError, match="Unable to contact slurm controller"):
        SlurmScheduler().parse_status(BANNER + down, ["9"])
    # Forgotten jobs: squeue exits 1 but only says the ids are invalid.
    forgotten = (
        "--clustrix-queue--\nslurm_load_jobs error: Invalid job id specified\n"
        "--clustrix-queue-exit 1\n" + _SECTION + "\n"
    )
    assert SlurmScheduler().parse_status(BANNER + forgotten, ["9"])["9"].state is JobState.UNKNOWN
    # A failure in words squeue does not use (the command missing) is still a failure.
    missing = (
        "--clustrix-queue--\nbash: line 1: squeue: command not found\n"
        "--clustrix-queue-exit 127\n" + _SECTION + "\n"
    )
    with pytest.raises(SchedulerUnavailableError, match="command not found"):
        SlurmScheduler().parse_status(missing, ["9"])


def _status_output(tmp_path, scheduler, fake_name: str, fake_body: str, banner: str) -> str:
    """What ``scheduler``'s real status command prints in bash after ``banner``, with a fake
    ``fake_name`` command (a shell script body) first on PATH."""
    fake = tmp_path / fake_name
    fake.write_text(f"#!/bin/sh\n{fake_body}\n")
    fake.chmod(0o755)
    command = scheduler.status_command({"7": "/a", "42": "/b"})
    return subprocess.run(
        ["bash", "-c", f"echo '{banner}'; {command}"],
        capture_output=True,
        text=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        check=True,
    ).stdout


def test_the_slurm_status_command_frames_squeue_in_a_real_shell(tmp_path):
    # A fake squeue that fails like an unreachable controller, run by the real command text.
    failing = "echo 'slurm_load_jobs error: Socket timed out' >&2\nexit 1"
    output = _status_output(tmp_path, SlurmScheduler(), "squeue", failing, "Please report errors.")
    with pytest.raises(SchedulerUnavailableError, match="Socket timed out"):
        SlurmScheduler().parse_status(output, ["7"])


def test_a_banner_before_qstat_is_not_a_pbs_server_failure():
    # The job is gone from qstat (harmless), and the shell said something beforehand.
    command_output = BANNER + "--clustrix-qstat--\nqstat: Unknown Job Id Error 7.pbs01\n"
    statuses = PbsScheduler().parse_status(command_output, ["7.pbs01"])
    assert statuses["7.pbs01"].state is JobState.UNKNOWN
    with pytest.raises(SchedulerUnavailableError, match="cannot connect to server"):
        PbsScheduler().parse_status(
            BANNER + "--clustrix-qstat--\nqstat: cannot connect to server pbs01 (errno=111)\n",
            ["7.pbs01"],
        )


def test_a_banner_before_qstat_is_not_an_sge_job_line():
    # Eight words starting with a number look like a qstat job line ("users" has an "s",
    # a suspended state) unless only the framed part is read.
    banner = "42 jobs of 12 users are running now\n"
    output = banner + "--clustrix-qstat--\n--clustrix-qstat-exit-- 0\n"
    assert SgeScheduler().parse_status(output, ["42"])["42"].state is JobState.UNKNOWN


def test_the_sge_status_command_frames_qstat_in_a_real_shell(tmp_path):
    banner = "42 jobs of 12 users are running now"
    output = _status_output(tmp_path, SgeScheduler(), "qstat", "exit 0", banner)
    assert SgeScheduler().parse_status(output, ["42"])["42"].state is JobState.UNKNOWN
