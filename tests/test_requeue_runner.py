"""A job that requeues itself, on the runner's side: signals, checkpoints and attempts.

The runner runs here as a job script runs it (a process of its own in a job folder), and is
sent the signals a scheduler sends: the warning before the time limit, and SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import cloudpickle
import pytest
from jobfolders import job_folder, start_runner

import clustrix
from clustrix import layout, requeue
from clustrix.job_runtime import shipped_runtime

# What a scheduler with no requeue command asks for: exit with 99 (Grid Engine's way).
SETTINGS = {"max": 1, "signal": "USR1", "command": "", "exit_code": 99}


def _counting():
    """A call counting to ``total`` from its last checkpoint, saving a last one when warned
    (made here, so that it travels by value, as a user's function does)."""

    def counting(total):
        import time

        import clustrix

        state = clustrix.restore({"count": 0, "starts": []})
        state["starts"].append(state["count"])
        clustrix.on_requeue(lambda: clustrix.checkpoint(state))
        print(f"starting from {state['count']}", flush=True)
        while state["count"] < total:
            time.sleep(0.01)
            state["count"] += 1
        return state

    return counting


def _folder(tmp_path: Path, func, args: tuple) -> Path:
    """A job of one call, ``func(*args)``, that requeues itself as ``SETTINGS`` say."""
    extra = shipped_runtime([], always=True)  # the runner imports clustrix.requeue from it
    return job_folder(tmp_path, func, [[args]], extra=extra, requeue=SETTINGS)


def _start(folder: Path) -> subprocess.Popen:
    return start_runner(folder, 0)


def _signal_once_started(runner: subprocess.Popen, folder: Path, signum: int) -> None:
    deadline = time.monotonic() + 60
    while "starting" not in (folder / layout.stdout_file(0)).read_text():
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # some counting done
    runner.send_signal(signum)


def _attempts(folder: Path) -> list[dict]:
    return json.loads((folder / layout.attempts_file(0)).read_text())


def _result(folder: Path):
    batch = cloudpickle.loads((folder / layout.result_file(0)).read_bytes())
    [(ok, value)] = batch["outcomes"]
    assert ok, value
    return value


def test_warned_job_saves_a_checkpoint_requeues_and_resumes(tmp_path):
    folder = _folder(tmp_path, _counting(), (200,))
    first = _start(folder)
    _signal_once_started(first, folder, signal.SIGUSR1)
    assert first.wait(timeout=60) == 99  # the scheduler's "requeue me"
    assert not (folder / layout.result_file(0)).exists()
    saved = cloudpickle.loads((folder / layout.checkpoint_file(0, 0)).read_bytes())
    assert saved["count"] > 0
    info = json.loads((folder / (layout.checkpoint_file(0, 0) + ".json")).read_text())
    assert info["size"] > 0 and abs(info["saved"] - time.time()) < 60
    assert [a["reason"] for a in _attempts(folder)] == [requeue.REQUEUED]

    assert _start(folder).wait(timeout=60) == 0
    value = _result(folder)
    assert value["count"] == 200
    assert value["starts"] == [0, saved["count"]]
    attempts = _attempts(folder)
    assert [a["reason"] for a in attempts] == [requeue.REQUEUED, requeue.FINISHED]
    assert attempts[0]["ended"] <= attempts[1]["started"] <= attempts[1]["ended"]
    # Each attempt's output is kept, the second after a banner.
    stdout = (folder / layout.stdout_file(0)).read_text()
    assert stdout.index("starting from 0") < stdout.index("attempt 2") < stdout.rindex("starting")


def test_with_no_requeue_left_a_warning_lets_the_call_run_on(tmp_path):
    folder = _folder(tmp_path, _counting(), (60,))
    records = [{"attempt": 1, "started": 1.0, "ended": 2.0, "reason": requeue.REQUEUED}]
    (folder / layout.attempts_file(0)).write_text(json.dumps(records))  # max 1: used up
    runner = _start(folder)
    _signal_once_started(runner, folder, signal.SIGUSR1)
    assert runner.wait(timeout=60) == 0
    assert _result(folder)["count"] == 60
    attempts = _attempts(folder)
    assert attempts[1]["note"] == requeue.WARNED_NO_REQUEUE
    assert attempts[1]["reason"] == requeue.FINISHED


def test_a_stopped_job_saves_its_checkpoint_and_the_next_run_resumes(tmp_path):
    # SIGTERM: a preemption or `scontrol requeue` from outside; the scheduler requeues it.
    folder = _folder(tmp_path, _counting(), (200,))
    first = _start(folder)
    _signal_once_started(first, folder, signal.SIGTERM)
    assert first.wait(timeout=60) == 128 + signal.SIGTERM
    assert [a["reason"] for a in _attempts(folder)] == [requeue.STOPPED]
    assert _start(folder).wait(timeout=60) == 0
    assert _result(folder)["starts"][1] > 0


def test_an_attempt_that_vanished_is_recorded_as_such(tmp_path):
    folder = _folder(tmp_path, _counting(), (200,))
    first = _start(folder)
    _signal_once_started(first, folder, signal.SIGKILL)  # a node lost: no word from it
    first.wait(timeout=60)
    assert _start(folder).wait(timeout=60) == 0
    attempts = _attempts(folder)
    assert attempts[0]["reason"] == requeue.VANISHED
    assert _result(folder)["starts"][0] == 0  # nothing saved: started over


def test_outside_a_call_checkpoints_do_nothing():
    clustrix.checkpoint({"a": 1})
    assert clustrix.restore("default") == "default"
    assert clustrix.on_requeue(print) is print


@pytest.mark.parametrize("grace, expected", [(30, "--signal=B:USR1@30"), (None, None)])
def test_slurm_asks_for_a_warning_only_for_jobs_that_requeue(grace, expected):
    from clustrix.resources import Resources
    from clustrix.schedulers import ScriptContext, scheduler_for

    context = ScriptContext("j", "/tmp/j", "python3", requeue_grace=grace)
    script = scheduler_for("slurm").render_script(Resources.parse(time="00:02:00"), context)
    assert ("#SBATCH --requeue" in script) is (grace is not None)
    if expected:
        assert f"#SBATCH {expected}" in script
    else:
        assert "--signal" not in script


def _config(**settings):
    from clustrix.config import ClusterConfig

    return ClusterConfig(**settings)


def test_requeue_settings_per_scheduler():
    from clustrix import ConfigError
    from clustrix.remote.requeues import requeue_settings
    from clustrix.resources import Resources
    from clustrix.schedulers import scheduler_for

    hour = Resources.parse(time="01:00:00")
    slurm = requeue_settings(_config(max_requeues=3), scheduler_for("slurm"), hour)
    assert slurm == {
        "max": 3,
        "signal": "USR1",
        "command": 'scontrol requeue "$SLURM_JOB_ID"',
        "exit_code": 0,
    }
    assert requeue_settings(_config(max_requeues=0), scheduler_for("slurm"), hour) is None
    # A plain SSH host has no time limit and nothing preempts: nothing to do.
    assert requeue_settings(_config(max_requeues=3), scheduler_for("ssh"), hour) is None
    with pytest.raises(ConfigError, match="requeue=2 is not available on pbs") as info:
        requeue_settings(_config(max_requeues=2), scheduler_for("pbs"), hour)
    assert info.value.field == "max_requeues"
    with pytest.raises(ConfigError, match="needs a time limit on sge"):
        requeue_settings(_config(max_requeues=1), scheduler_for("sge"), Resources.parse())
    with pytest.raises(ConfigError, match="option signal= cannot be used") as info:
        requeue_settings(_config(max_requeues=1), scheduler_for("slurm"), hour, {"signal": "B:1"})
    assert info.value.field == "signal"
    with pytest.raises(ConfigError, match="conda run"):
        conda = _config(max_requeues=1, conda_env_name="base")
        requeue_settings(conda, scheduler_for("slurm"), hour)
    short = Resources.parse(time="00:02:00")
    with pytest.raises(ConfigError, match="requeue_grace=120 is not valid") as info:
        requeue_settings(_config(max_requeues=1), scheduler_for("slurm"), short)
    assert info.value.field == "requeue_grace"


def test_requeue_is_checked_where_it_is_written():
    from clustrix import ConfigError

    with pytest.raises(ConfigError, match="requeue=-1 is not valid"):
        clustrix.cluster(requeue=-1)(print)
    with pytest.raises(ConfigError, match="requeue_grace"):
        _config(requeue_grace=0)


def _forking():
    """Counts like ``_counting``'s call, after forking a child that only sleeps and writes
    its pid to ``pid_file``."""

    def forking(total, pid_file):
        import os
        import time

        import clustrix

        state = clustrix.restore({"count": 0, "starts": []})
        state["starts"].append(state["count"])
        clustrix.on_requeue(lambda: clustrix.checkpoint(state))
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        with open(pid_file, "w") as handle:
            handle.write(str(child))
        print(f"starting from {state['count']}", flush=True)
        while state["count"] < total:
            time.sleep(0.01)
            state["count"] += 1
        os.kill(child, 9)
        return state

    return forking


def test_a_process_the_call_forked_does_not_save_its_stale_state(tmp_path):
    # The scheduler signals every process of the job: a forked child that kept the runner's
    # handlers would save its own, older copy of the state over the call's.
    pid_file = tmp_path / "child.pid"
    folder = _folder(tmp_path, _forking(), (300, str(pid_file)))
    runner = _start(folder)
    _signal_once_started(runner, folder, signal.SIGCONT)  # just wait until it counts
    child = int(pid_file.read_text())
    os.kill(child, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and "Z" not in _state_of(child):
        assert time.monotonic() < deadline, "the child should end as SIGTERM's default says"
        time.sleep(0.05)
    assert not (folder / layout.checkpoint_file(0, 0)).exists()
    assert _attempts(folder)[0]["reason"] == ""  # the runner's attempt goes on
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 128 + signal.SIGTERM
    saved = cloudpickle.loads((folder / layout.checkpoint_file(0, 0)).read_bytes())
    assert saved["count"] > 0


def _state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"


def test_a_failed_requeue_command_lets_the_call_run_on(tmp_path, monkeypatch):
    monkeypatch.setitem(SETTINGS, "command", "exit 3")
    folder = _folder(tmp_path, _counting(), (150,))
    runner = _start(folder)
    _signal_once_started(runner, folder, signal.SIGUSR1)
    assert runner.wait(timeout=60) == 0
    assert _result(folder)["count"] == 150
    [attempt] = _attempts(folder)
    assert attempt["reason"] == requeue.FINISHED
    assert "the requeue command failed" in attempt["note"]
