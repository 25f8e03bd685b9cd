"""Checkpoints of pooled calls on the real SLURM: a call whose worker job is cancelled mid-call
goes to another worker, and resumes there from the checkpoint it saved in the pool's folder."""

from __future__ import annotations

import os
import shlex
import time
import uuid

import pytest

import clustrix
from clustrix import cluster

from .conftest import output_of, wait_for
from .test_pools import (
    POOL,
    _heartbeats,
    _marker,
    _pool,
    _pool_folder,
    _scheduler_job,
    _work_dir,
)
from .test_pools import shell as shell  # the fixture, under its own name


@cluster(time="00:05:00", retries=1)
def count_to_six(marker_dir):
    """Counts to six, a checkpoint a step; its first run stops after step three (its marker
    holds its worker's job id, to be cancelled). The steps each run did, and where."""
    state = clustrix.restore({"step": 0, "runs": []})
    state["runs"].append(state["step"])
    while state["step"] < 6:
        state["step"] += 1
        clustrix.checkpoint(state)
        if len(state["runs"]) == 1 and state["step"] == 3:
            with open(os.path.join(marker_dir, "job"), "w") as out:
                out.write(_scheduler_job())
            time.sleep(300)
    return state, clustrix.checkpointing.current_place()


@pytest.mark.timeout(180)
def test_a_call_whose_worker_is_cancelled_resumes_on_another_from_its_checkpoint(on_slurm, shell):
    marker_dir = f"{_work_dir(on_slurm, shell)}/markers-{uuid.uuid4().hex[:8]}"
    shell.run(f"mkdir -p {shlex.quote(marker_dir)}")
    with _pool(workers=2, **POOL) as pool:
        folder = _pool_folder(on_slurm, shell, pool)
        future = count_to_six.submit(marker_dir)
        assert wait_for(lambda: _marker(shell, marker_dir, "job"), 120), "it never started"
        job = _marker(shell, marker_dir, "job")
        assert wait_for(
            lambda: any(
                b["job"] == job and b["state"] == "busy"
                for b in _heartbeats(shell, folder).values()
            ),
            30,
        ), _heartbeats(shell, folder)
        shell.run(f"scancel {shlex.quote(job)}")
        state, place = future.result(timeout=120)
        assert state == {"step": 6, "runs": [0, 3]}, "the second run went on from step 3"
        assert future.attempts == 2
        assert place.startswith(f"{folder}/checkpoints/")
        listing = output_of(shell, f"ls -A {shlex.quote(folder)}/checkpoints")
        assert listing == "", "removed once the call succeeded"
