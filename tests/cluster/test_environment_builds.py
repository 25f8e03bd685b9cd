"""Where environments are built (environment_build) and where their packages come from
(package_source), against the real test cluster.

Each test works in a fresh remote_work_dir, so its environment key has never been built
there: the build really happens, as a job or from shipped wheels.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

import clustrix
from clustrix import cluster
from clustrix.backend import backend_for
from clustrix.config import ClusterConfig
from clustrix.environment import plan_environment
from clustrix.errors import EnvironmentSetupError
from clustrix.remote.environments import Environments
from clustrix.schedulers import scheduler_for

from .conftest import output_of, wait_for

# A user whose pip reaches no index: every index request goes to a closed port (one retry,
# so that pip's log says what went wrong). uv, were it installed, is told to stay offline.
NO_INDEX = {
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_RETRIES": "1",
    "PIP_TIMEOUT": "3",
    "UV_INDEX_URL": "http://127.0.0.1:9/simple",
    "UV_OFFLINE": "1",
}


@cluster(time="00:05:00", environment=["six==1.16.0"])
def six_and_python():
    import six

    return six.__version__, sys.executable


def _fresh_work_dir(test_cluster) -> str:
    return f"{test_cluster.work_dir}/{uuid.uuid4().hex[:8]}"


def _sacct(transport, job: str) -> list[str]:
    """JobName, State, AllocCPUS and Timelimit of a SLURM job, as sacct records it."""
    line = output_of(
        transport, f"sacct -n -X -P -o JobName,State,AllocCPUS,Timelimit -j {shlex.quote(job)}"
    )
    return line.splitlines()[0].split("|") if line else []


def test_a_build_job_builds_the_environment_and_the_call_runs_in_it(on_slurm, monkeypatch):
    clustrix.configure(remote_work_dir=_fresh_work_dir(on_slurm), environment_build="job")
    backend = backend_for(clustrix.get_config())
    commands: list[str] = []
    original_run = backend.transport.run

    def recording_run(command, **kwargs):
        commands.append(command)
        return original_run(command, **kwargs)

    monkeypatch.setattr(backend.transport, "run", recording_run)
    future = six_and_python.submit()
    version, python = future.result(timeout=600)
    report = future.environment
    assert version == "1.16.0"
    assert python == f"{report.path}/bin/python"
    assert report.built and report.build_job

    # The build was a SLURM job of its own, with the build job's request...
    transport = on_slurm.transport()
    assert wait_for(lambda: _sacct(transport, report.build_job)[1:2] == ["COMPLETED"], 30)
    name, _, cores, limit = _sacct(transport, report.build_job)
    assert (name, cores, limit) == (f"clustrix-env-{report.key}", "1", "00:30:00")
    # ... whose log says it ran there ...
    log = output_of(transport, f"cat {shlex.quote(report.path)}.log")
    assert f"in job {report.build_job}" in log
    # ... and the login node never ran the build script: it travelled inside the job's folder.
    assert not any("flock" in command for command in commands)
    leftovers = output_of(transport, f"ls -d {shlex.quote(report.path)}.build-* 2>/dev/null")
    assert leftovers == "", "a successful build job's folder is removed"


def test_two_clients_building_at_once_get_one_environment(on_slurm):
    """Two processes' worth of state (each its own connection), submitting together."""
    work_dir = on_slurm.transport().home() + _fresh_work_dir(on_slurm)[1:]
    config = ClusterConfig(**on_slurm.settings("slurm"), environment_build="job")
    plan = plan_environment(
        len, ["six==1.16.0"], python_executable=None, conda_env_name=None, payload_modules=()
    )
    reports, errors = [], []

    def client() -> None:
        environments = Environments(on_slurm.transport(), scheduler_for("slurm"))
        try:
            reports.append(environments.ensure(plan, work_dir, config))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert sorted(report.built for report in reports) == [False, True]
    assert len({report.build_job for report in reports}) == 2, "each client ran its own job"
    transport = on_slurm.transport()
    envs = output_of(transport, f"cd {shlex.quote(work_dir)}/envs && ls -d */")
    assert envs.split() == [f"{plan.key}/"]
    assert output_of(transport, f"cat {shlex.quote(reports[0].path)}/.clustrix-ready")


def test_a_failed_build_job_reports_its_job_and_pips_output(on_slurm):
    clustrix.configure(remote_work_dir=_fresh_work_dir(on_slurm), environment_build="job")

    @cluster(environment=["clustrix-no-such-package-xyz==0.0.1"])
    def never():
        return 1

    with pytest.raises(EnvironmentSetupError) as info:
        never()
    error = info.value
    assert error.job_id and f"slurm job {error.job_id}" in str(error)
    assert "No matching distribution found for clustrix-no-such-package-xyz" in error.stderr_tail
    assert _sacct(on_slurm.transport(), error.job_id)[0].startswith("clustrix-env-")


def test_ctrl_c_while_a_build_job_runs_cancels_it(on_slurm):
    work_dir = _fresh_work_dir(on_slurm)
    script = f"""
import clustrix
clustrix.configure(
    remote_work_dir={work_dir!r},
    environment_build="job",
    pre_execution_commands=["sleep 120"],  # a build that takes its time
)
@clustrix.cluster(time="00:05:00", environment=["six==1.16.0"])
def f():
    return 1
f()
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
    transport = on_slurm.transport()
    queue = "squeue -h -u $USER -o '%i %j'"
    try:
        assert wait_for(lambda: "clustrix-env-" in output_of(transport, queue), 120)
        job = next(
            line.split()[0]
            for line in output_of(transport, queue).splitlines()
            if "clustrix-env-" in line
        )
        process.send_signal(2)  # SIGINT, as Ctrl-C sends
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "KeyboardInterrupt" in stderr
    assert wait_for(lambda: job not in output_of(transport, queue).split(), 60)
    # "CANCELLED by <uid>": the client cancelled it, the scheduler did not end it.
    assert wait_for(
        lambda: (
            _sacct(transport, job)[1:2] != []
            and _sacct(transport, job)[1].startswith("CANCELLED by")
        ),
        30,
    )


def test_on_a_plain_ssh_host_a_build_job_is_a_background_process(on_ssh):
    clustrix.configure(remote_work_dir=_fresh_work_dir(on_ssh), environment_build="job")
    future = six_and_python.submit()
    version, python = future.result(timeout=600)
    assert version == "1.16.0" and python == f"{future.environment.path}/bin/python"
    assert future.environment.built and future.environment.build_job.isdigit()


@pytest.mark.parametrize("environment_build", ["login", "job"])
def test_without_an_index_the_environment_is_built_from_the_clients_wheels(
    on_slurm, environment_build
):
    clustrix.configure(
        remote_work_dir=_fresh_work_dir(on_slurm),
        environment_build=environment_build,
        environment_variables=NO_INDEX,
    )
    # The same settings with the cluster's own index: the build cannot get anything.
    with pytest.raises(EnvironmentSetupError) as info:
        six_and_python()
    assert "Connection refused" in info.value.stderr_tail
    assert "No matching distribution found for" in info.value.stderr_tail
    assert "package_source='client'" in str(info.value)

    clustrix.configure(package_source="client")
    future = six_and_python.submit()
    version, python = future.result(timeout=600)
    assert version == "1.16.0" and python == f"{future.environment.path}/bin/python"
    assert future.environment.built
    cached = list((Path(os.environ["HOME"]) / ".clustrix" / "wheels").glob("*/six-1.16.0-*.whl"))
    assert len(cached) == 1, "the downloaded wheels are kept on the client"
    shipped = output_of(
        on_slurm.transport(), f"ls -d {shlex.quote(future.environment.path)}.build-*/* 2>/dev/null"
    )
    assert "wheels" not in shipped, "the shipped wheels are removed after each build"
