"""End-to-end behaviour of remote calls, on SLURM and on a plain SSH host."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import clustrix
import clustrix.remote.poller
import clustrix.remote.staging
from clustrix import JobFailedError, cluster
from clustrix.backend import backend_for
from clustrix.errors import ConnectionFailedError, JobCancelledError, JobTimeoutError

from .conftest import output_of, wait_for

SCRIPTS = Path(__file__).parent.parent / "scripts"


class PlainError(ValueError):
    pass


@cluster(time="00:05:00")
def add(a, b):
    return a + b


@cluster(time="00:05:00")
def wait_and_return(seconds, value):
    time.sleep(seconds)
    return value


@cluster(time="00:05:00")
def raise_plain(message):
    raise PlainError(message)


def _remote_exists(test_cluster, folder: str) -> bool:
    result = test_cluster.transport().run(f"test -e {shlex.quote(folder)}", check=False)
    return result.exit_code == 0


@pytest.mark.parametrize("cluster_type", ["slurm", "ssh"])
def test_main_script_with_closure_numpy_and_custom_exception(test_cluster, cluster_type):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(test_cluster.environ(cluster_type), HOME=os.environ["HOME"])
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "remote_main.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["value"] == 6.5
    assert report["backend"].startswith(f"{cluster_type}:clustrix@127.0.0.1")
    assert report["error"]["same_class"] is True
    assert report["error"]["message"] == "it went wrong remotely"
    assert "raise ScriptError(message)" in report["error"]["remote_traceback"]
    assert "remote_main.py" in report["error"]["remote_traceback"]


@pytest.mark.parametrize("fixture", ["on_slurm", "on_ssh"])
def test_value_logs_and_cleanup_on_success(request, fixture):
    test_cluster = request.getfixturevalue(fixture)

    @cluster(time="00:05:00")
    def chatty(x):
        print(f"working on {x}")
        print("a warning", file=sys.stderr)
        return x * 2

    future = chatty.submit(21)
    assert future.result(timeout=300) == 42
    assert future.stdout() == "working on 21\n"
    assert "a warning" in future.stderr()
    assert future.remote_folder.startswith("/home/")
    # Removed once the status check that brought the result has settled every job.
    assert wait_for(lambda: not _remote_exists(test_cluster, future.remote_folder), 30)


_EXITS_AT_ONCE = """
import clustrix

@clustrix.cluster(time="00:05:00")
def triple(x):
    return 3 * x

future = triple.submit(7)
print(future.result(timeout=300), future.remote_folder, flush=True)
"""


@pytest.mark.parametrize("cluster_type", ["slurm", "ssh"])
def test_a_process_exiting_as_its_result_arrives_still_removes_the_folder(
    test_cluster, cluster_type
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(test_cluster.environ(cluster_type), HOME=os.environ["HOME"])
    done = subprocess.run(
        [sys.executable, "-c", _EXITS_AT_ONCE], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    value, folder = done.stdout.split()
    assert value == "21"
    assert not _remote_exists(test_cluster, folder), "removed on the way out"


@pytest.mark.parametrize("fixture", ["on_slurm", "on_ssh"])
def test_failure_keeps_the_folder_and_reraises_the_type(request, fixture):
    test_cluster = request.getfixturevalue(fixture)
    future = raise_plain.submit("bad value")
    with pytest.raises(PlainError, match="bad value") as info:
        future.result(timeout=300)
    assert "raise PlainError(message)" in str(info.value.__cause__)
    assert _remote_exists(test_cluster, future.remote_folder), "kept after a failure"
    mode = test_cluster.transport().run(f"stat -c %a {shlex.quote(future.remote_folder)}").stdout
    assert mode.strip() == "700"


def test_cleanup_can_be_turned_off(on_slurm):
    clustrix.configure(cleanup_on_success=False)
    future = add.submit(1, 2)
    assert future.result(timeout=300) == 3
    assert _remote_exists(on_slurm, future.remote_folder)
    files = on_slurm.transport().run(f"ls {shlex.quote(future.remote_folder)}").stdout.split()
    assert {
        "job.json",
        "function.pkl",
        "taken-0-by-0.pkl",  # the calls, once the task's runner claimed them
        "runner.py",
        "job-0.sh",
        "result-0.pkl",
        "stdout-0",
        "stderr-0",
    } <= set(files)


def test_scancel_from_outside_raises_job_cancelled(on_slurm):
    future = wait_and_return.submit(120, "never")
    squeue = f"squeue -h -o %T -j {future.scheduler_id}"
    wait_for(lambda: output_of(on_slurm.transport(), squeue) == "RUNNING", 60, 0.2)
    on_slurm.transport().run(f"scancel {future.scheduler_id}")
    started = time.monotonic()
    with pytest.raises(JobCancelledError) as info:
        future.result(timeout=60)
    assert time.monotonic() - started < 15, "noticed within a few poll intervals"
    assert info.value.state == "CANCELLED"
    assert info.value.job_id == future.job_id


def test_time_limit_raises_job_timeout_on_slurm(on_slurm):
    # SLURM counts limits in whole minutes and checks them periodically: expect ~1-2 minutes.
    # requeue=0 (the default): the job is not warned and does not requeue itself.
    @cluster(time="00:00:05", requeue=0)
    def overrun():
        time.sleep(600)

    future = overrun.submit()
    with pytest.raises(JobTimeoutError) as info:
        future.result(timeout=400)
    assert info.value.state == "TIMEOUT"
    assert "attempt" not in str(info.value) and future.attempt_history == []
    script = output_of(on_slurm.transport(), f"cat {future.remote_folder}/job-0.sh")
    assert "--signal" not in script and "--requeue" not in script


def test_time_limit_raises_job_timeout_on_ssh(on_ssh):
    @cluster(time="00:00:05")
    def overrun():
        time.sleep(600)

    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match="time limit"):
        overrun()
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("fixture", ["on_slurm", "on_ssh"])
def test_future_cancel_stops_the_job(request, fixture):
    test_cluster = request.getfixturevalue(fixture)
    future = wait_and_return.submit(300, "never")
    time.sleep(2)
    assert future.cancel() is True
    assert future.cancelled()
    if fixture == "on_slurm":
        sacct = f"sacct -n -X -P -o State -j {future.scheduler_id}"
        assert wait_for(
            lambda: output_of(test_cluster.transport(), sacct).startswith("CANCELLED"), 30, 0.5
        )
    else:
        # Gone, or a zombie waiting for init to reap it.
        ps = f"ps -o stat= -s {future.scheduler_id}"

        def only_zombies() -> bool:
            return all(s.startswith("Z") for s in output_of(test_cluster.transport(), ps).split())

        assert wait_for(only_zombies, 10, 0.2), output_of(test_cluster.transport(), ps)


def test_quoting_of_environment_values_and_job_names(on_slurm, tmp_path):
    canary = f"/tmp/clustrix-canary-{os.getpid()}"
    nasty = f'it\'s "quoted"; $(touch {canary}) `touch {canary}` \nnext line & | > <'
    clustrix.configure(environment_variables={"NASTY": nasty})

    @cluster(time="00:05:00", job_name=f"name {nasty}")
    def report():
        return os.environ["NASTY"], os.environ["SLURM_JOB_NAME"]

    value, job_name = report()
    assert value == nasty
    assert job_name == f"name {nasty}"
    assert on_slurm.transport().run(f"test -e {canary}", check=False).exit_code != 0


def test_twenty_concurrent_submissions_from_threads(on_slurm):
    results: dict[int, int] = {}
    folders: set[str] = set()
    lock = threading.Lock()

    def submit(i):
        future = add.submit(i, 1000)
        value = future.result(timeout=600)
        with lock:
            results[i] = value
            folders.add(future.remote_folder)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert results == {i: i + 1000 for i in range(20)}
    assert len(folders) == 20


def test_environment_is_built_once_and_reused(on_slurm):
    @cluster(time="00:05:00", environment=["six==1.16.0"])
    def six_version():
        import six

        return six.__version__

    first = six_version.submit()
    assert first.result(timeout=600) == "1.16.0"
    marker = f"{first.environment.path}/.clustrix-ready"
    stamp = on_slurm.transport().run(f"stat -c %Y {shlex.quote(marker)}").stdout

    # A new process knows nothing: forget what this one remembered, as a restart would.
    backend_for(clustrix.get_config()).staging.environments.forget()
    second = six_version.submit()
    assert second.result(timeout=300) == "1.16.0"
    assert second.environment.key == first.environment.key
    assert second.environment.built is False
    assert on_slurm.transport().run(f"stat -c %Y {shlex.quote(marker)}").stdout == stamp


def test_environment_failure_is_reported_with_pips_output(on_slurm):
    @cluster(environment=["clustrix-no-such-package-xyz==0.0.1"])
    def never():
        return 1

    with pytest.raises(clustrix.errors.EnvironmentSetupError) as info:
        never()
    assert "clustrix-no-such-package-xyz" in str(info.value)
    assert "No matching distribution" in info.value.stderr_tail or "ERROR" in info.value.stderr_tail


def test_version_skew_is_reported_before_unpickling(on_ssh):
    transport = on_ssh.transport()
    venv = f"{transport.home()}/clustrix-tests/old-cloudpickle"
    transport.run(
        f"test -x {venv}/bin/python || (python3 -m venv {venv} && "
        f"{venv}/bin/pip install -q cloudpickle==2.2.1)",
        timeout=300,
    )
    clustrix.configure(python_executable=f"{venv}/bin/python")
    with pytest.raises(clustrix.errors.VersionMismatchError, match=r"cloudpickle 2\.2\.1"):
        add(1, 2)


def test_unknown_scheduler_option_is_refused(on_slurm):
    @cluster(constraint="fast", exlusive=True)
    def f():
        return 1

    with pytest.raises(
        clustrix.ConfigError, match="unknown slurm option 'exlusive'; did you mean 'exclusive'"
    ):
        f()


def test_job_failed_error_carries_the_scheduler_state(on_slurm):
    @cluster(time="00:05:00")
    def hard_exit():
        os._exit(7)

    with pytest.raises(JobFailedError) as info:
        hard_exit()
    assert info.value.state == "FAILED"
    assert info.value.exit_code == 7


def test_pre_execution_commands_and_requirements_file(on_slurm, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    clustrix.configure(pre_execution_commands=["export FROM_PRE=ran", "cd /tmp"])

    @cluster(time="00:05:00", environment=str(requirements))
    def inspect_job():
        import six

        return os.environ.get("FROM_PRE"), six.__version__

    assert inspect_job() == ("ran", "1.16.0")


def test_all_pending_jobs_share_one_status_command_per_poll(on_slurm):
    backend = backend_for(clustrix.get_config())
    commands: list[str] = []
    original = backend.transport.run

    def recording_run(command, **kwargs):
        commands.append(command)
        return original(command, **kwargs)

    backend.transport.run = recording_run
    try:
        futures = [wait_and_return.submit(2, i) for i in range(6)]
        assert [f.result(timeout=300) for f in futures] == list(range(6))
    finally:
        del backend.transport.run
    polls = [c for c in commands if "squeue" in c]
    assert polls, "the jobs were polled"
    ids = [f.scheduler_id for f in futures]
    assert any(all(i in poll for i in ids) for poll in polls), "one command covers every job"
    assert len(polls) < 6 * 10, "not one query per job per interval"


def test_output_can_be_echoed_locally(on_ssh, capsys):
    clustrix.configure(echo_job_output=True)

    @cluster(time="00:05:00")
    def speak():
        print("hello from the job")
        return 1

    assert speak() == 1
    assert "hello from the job" in capsys.readouterr().out


def test_ctrl_c_while_waiting_cancels_the_job(on_slurm):
    script = """
import clustrix, time
@clustrix.cluster(time="00:05:00")
def slow():
    time.sleep(300)
future = slow.submit()
print(future.scheduler_id, flush=True)
slow()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(on_slurm.environ("slurm"), HOME=os.environ["HOME"])
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first_job = process.stdout.readline().strip()
    time.sleep(3)  # the second call is now waiting for its job
    process.send_signal(2)  # SIGINT, as Ctrl-C sends
    _, stderr = process.communicate(timeout=60)
    assert "KeyboardInterrupt" in stderr
    transport = on_slurm.transport()
    queue = transport.run("squeue -h -u $USER -o '%i %T %j'").stdout
    running = [line for line in queue.splitlines() if "RUNNING" in line or "PENDING" in line]
    # The interrupted call's job is gone; the first one (only submitted) is still there.
    assert any(line.startswith(first_job + " ") for line in running)
    assert len([line for line in running if "clustrix-slow" in line]) == 1
    transport.run(f"scancel {first_job}")


def test_ssh_map_tracks_each_task_by_its_own_process(on_ssh):
    """Without arrays each task is a submission of its own, all in one job folder."""

    @cluster(time="00:05:00")
    def exit_on_three(x):
        if x == 3:
            os._exit(7)
        return x + 1

    results = exit_on_three.map(range(6), chunksize=1, return_exceptions=True)
    assert results[:3] + results[4:] == [1, 2, 3, 5, 6]
    assert isinstance(results[3], JobFailedError) and results[3].exit_code == 7
    job = clustrix.jobs(limit=1)[0]
    assert len({submission["scheduler_id"] for submission in job.record.submissions}) == 6


def test_ssh_map_runs_a_cores_worth_of_tasks_at_a_time(on_ssh):
    """No scheduler shares the host out: the tasks of one job take turns for its cores."""

    @cluster(time="00:05:00", cores=1)
    def interval(x):
        start = time.time()
        time.sleep(1.5)
        return start, time.time()

    cores = int(output_of(on_ssh.transport(), "nproc"))
    spans = interval.map(range(cores + 2), chunksize=1)
    most = max(sum(1 for a, b in spans if a <= start < b) for start, _ in spans)
    assert most == cores, f"{most} tasks ran at once on {cores} cores: {spans}"


@pytest.mark.parametrize("many", [False, True], ids=["call", "map"])
def test_ctrl_c_while_submitting_cancels_the_submitted_job(on_slurm, many):
    backend = backend_for(clustrix.get_config())
    submit_and_reply = backend.transport.run

    def run(command, *args, **kwargs):
        result = submit_and_reply(command, *args, **kwargs)
        if "tar -x" in command:  # the scheduler has the job; its id is on the way back
            os.kill(os.getpid(), signal.SIGINT)
        return result

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(backend.transport, "run", run)
        if many:
            wait_and_return.map([120, 120], ["never", "never"])
        else:
            wait_and_return(120, "never")
    (job,) = clustrix.jobs(limit=1)
    assert job.state == "CANCELLED"
    ids = ",".join(sorted({s["scheduler_id"] for s in job.record.submissions}))
    squeue = f"squeue -h -r -j {ids} -t PENDING,RUNNING"
    assert wait_for(lambda: output_of(on_slurm.transport(), squeue) == "", 30, 0.5)


def _server_processes(ssh_port: int, client_port: int) -> list[int]:
    """The sshd processes serving the connection that starts at ``client_port``."""
    listing = subprocess.run(
        [
            "ss",
            "-tnpH",
            "state",
            "established",
            f"( sport = :{ssh_port} and dport = :{client_port} )",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", listing)})


def test_a_connection_that_hangs_while_a_call_waits_is_replaced(on_slurm, monkeypatch):
    # A laptop that slept or a VPN that vanished: the TCP connection stays open but nothing
    # answers, here in the middle of a status check. The check gives up and the next one
    # connects afresh.
    monkeypatch.setattr(clustrix.remote.poller, "POLL_TIMEOUT", 6.0)
    backend = backend_for(clustrix.get_config())
    marker = f"{on_slurm.transport().home()}/clustrix-status-check-{os.getpid()}"
    status_command = type(backend.scheduler).status_command

    def slow_status_command(self, jobs, detailed=False):
        # The first check says it is running, then lasts long enough to be caught in flight.
        first = f"if mkdir {shlex.quote(marker)} 2>/dev/null; then sleep 4; fi; "
        return first + status_command(self, jobs, detailed)

    monkeypatch.setattr(type(backend.scheduler), "status_command", slow_status_command)
    future = wait_and_return.submit(1, "survived")
    transport = backend.transport
    client_port = transport._client.get_transport().sock.getsockname()[1]
    pids = _server_processes(on_slurm.port, client_port)
    assert pids, "the sshd processes of the connection were found"
    assert wait_for(lambda: _remote_exists(on_slurm, marker), 30)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # the check in flight never gets its answer
    try:
        assert future.result(timeout=120) == "survived"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        on_slurm.transport().run(f"rm -rf {shlex.quote(marker)}")
    new_port = transport._client.get_transport().sock.getsockname()[1]
    assert new_port != client_port, "the result came over a new connection"


def _drop_during_submission(on_slurm, monkeypatch, submit_for, then=None):
    """Make each part's submission run ``submit_for(script, original)`` and drop the backend's
    connection while the first part is being submitted (then call ``then(transport)``).

    The drop follows the first part's start within a second or so; the slowed parts sleep
    long enough for that on a busy machine."""
    backend = backend_for(clustrix.get_config())
    marker = f"{on_slurm.transport().home()}/clustrix-submitting-{os.getpid()}"
    original = type(backend.scheduler).submit_command

    def submit_command(self, script, context):
        return f"mkdir -p {shlex.quote(marker)}; " + submit_for(
            script, original(self, script, context)
        )

    monkeypatch.setattr(type(backend.scheduler), "submit_command", submit_command)

    def drop_when_submitting() -> None:
        if wait_for(lambda: _remote_exists(on_slurm, marker), 120, 0.2):
            if then is not None:
                then(backend.transport)
            backend.transport._client.get_transport().close()

    dropper = threading.Thread(target=drop_when_submitting, daemon=True)
    dropper.start()
    return dropper, marker


def test_a_submission_whose_connection_drops_is_still_tracked(on_slurm, monkeypatch, caplog):
    dropper, marker = _drop_during_submission(
        on_slurm, monkeypatch, lambda script, original: f"sleep 6; {original}"
    )
    try:
        future = wait_and_return.submit(1, "submitted anyway")
    finally:
        dropper.join(timeout=10)
        on_slurm.transport().run(f"rm -rf {shlex.quote(marker)}")
    assert "dropped during a submission; the scheduler had accepted it" in caplog.text
    assert future.result(timeout=120) == "submitted anyway"
    (job,) = clustrix.jobs(limit=1, states=None)
    assert job.record.submissions[0]["scheduler_id"] == future.scheduler_id


def test_a_dropped_submission_that_cannot_be_confirmed_leaves_nothing_running(
    on_slurm, monkeypatch
):
    # Two arrays: the first is accepted, the second never answers. The accepted one must not
    # run untracked.
    monkeypatch.setattr(clustrix.remote.staging, "SUBMISSION_GRACE", 2.0)
    clustrix.configure(max_array_size=2, cleanup_on_success=False)
    dropper, marker = _drop_during_submission(
        on_slurm,
        monkeypatch,
        lambda script, original: "sleep 6; false" if script == "job-1.sh" else original,
    )
    try:
        with pytest.raises(ConnectionFailedError, match="were cancelled") as info:
            wait_and_return.map([30] * 4, ["never"] * 4, chunksize=1)
    finally:
        dropper.join(timeout=10)
        on_slurm.transport().run(f"rm -rf {shlex.quote(marker)}")
    accepted = re.search(r"accepted \(([^)]*)\)", str(info.value)).group(1)
    squeue = f"squeue -h -r -j {shlex.quote(accepted)} -t PENDING,RUNNING"
    assert wait_for(lambda: output_of(on_slurm.transport(), squeue) == "", 30, 0.5)
    (job,) = clustrix.jobs(limit=1, states=None)
    assert job.record.state == "FAILED"
    # A part that had not started yet will not start later either.
    assert _remote_exists(on_slurm, f"{job.record.remote_folder}/submission-abandoned")


def test_a_dropped_submission_that_cannot_reconnect_says_the_outcome_is_unknown(
    on_slurm, monkeypatch
):
    monkeypatch.setattr(clustrix.remote.staging, "SUBMISSION_GRACE", 2.0)

    def unreachable(transport) -> None:
        def refuse():
            raise ConnectionFailedError("cannot connect: the network is gone")

        monkeypatch.setattr(transport, "_connect", refuse)

    dropper, marker = _drop_during_submission(
        on_slurm, monkeypatch, lambda script, original: f"sleep 5; {original}", unreachable
    )
    try:
        with pytest.raises(ConnectionFailedError, match="could not be reopened") as info:
            wait_and_return.submit(1, "unknown")
    finally:
        dropper.join(timeout=10)
        on_slurm.transport().run(f"rm -rf {shlex.quote(marker)}")
    assert "whether the scheduler accepted it is unknown" in str(info.value)
    (job,) = clustrix.jobs(limit=1, states=None)
    assert job.record.state == "FAILED"
    assert job.record.remote_folder in str(info.value)
