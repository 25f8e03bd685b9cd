"""Status checks against the real SLURM: text a shell adds, and a scheduler that stops answering."""

from __future__ import annotations

import time

import pytest

import clustrix
from clustrix import cluster
from clustrix.backend import backend_for
from clustrix.errors import SchedulerUnavailableError


@cluster(time="00:05:00")
def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


def _patch_status_command(monkeypatch, prefix: str):
    """Run ``prefix`` in the shell before every status check of this cluster; returns a
    function that puts the real command back."""
    backend = backend_for(clustrix.get_config())
    scheduler_class = type(backend.scheduler)
    original = scheduler_class.status_command

    def status_command(self, jobs, detailed=False):
        return prefix + original(self, jobs, detailed)

    monkeypatch.setattr(scheduler_class, "status_command", status_command)
    return lambda: monkeypatch.setattr(scheduler_class, "status_command", original)


def test_text_mentioning_errors_before_the_status_answer_does_not_stall_calls(
    on_slurm, monkeypatch
):
    # What an `echo` in a site's shell start-up file adds to every command's output.
    _patch_status_command(monkeypatch, "echo 'Please report errors to the help desk.'; ")
    futures = [slow_square.submit(x, 1) for x in (2, 3)]
    assert [future.result(timeout=90) for future in futures] == [4, 9]


def test_checks_failing_for_longer_than_the_patience_fail_the_waiting_calls(on_slurm, monkeypatch):
    # squeue as it answers with the controller down; the job itself goes on running.
    clustrix.configure(status_check_patience=3)
    restore = _patch_status_command(
        monkeypatch,
        "squeue() { echo 'slurm_load_jobs error: Unable to contact slurm controller "
        "(connect failure)'; return 1; }; ",
    )
    future = slow_square.submit(7, 8)
    with pytest.raises(SchedulerUnavailableError) as caught:
        future.result(timeout=90)
    message = str(caught.value)
    assert "Unable to contact slurm controller" in message
    assert future.job_id in message and "get_job" in message
    # The controller is back: the job was left alone, and re-attaching collects its value.
    restore()
    assert clustrix.get_job(future.job_id).result(timeout=120) == 49


def test_a_broken_status_parser_fails_the_calls_instead_of_retrying_forever(on_slurm, monkeypatch):
    # Not the scheduler's fault but ours: any error of the check counts against the patience.
    clustrix.configure(status_check_patience=2)
    backend = backend_for(clustrix.get_config())

    def broken(self, output, job_ids):
        raise ValueError(f"cannot read {output[:20]!r}")

    monkeypatch.setattr(type(backend.scheduler), "parse_status", broken)
    future = slow_square.submit(3, 0)
    with pytest.raises(SchedulerUnavailableError, match="cannot read"):
        future.result(timeout=90)
