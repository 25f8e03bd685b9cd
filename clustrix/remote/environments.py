"""The Python environments of a cluster: built once per requirement set.

A venv lives in ``remote_work_dir/envs/<key>``; the key is a hash of what it holds, so calls
needing the same packages share one. This process remembers which keys it has seen ready, and
asks the cluster only once per key.

Where the build runs is ``environment_build``: on the login node, over the transport (the
default), or in a short job of its own (``buildjobs``). Where its packages come from is
``package_source``: an index the cluster reaches, or wheels the client downloads for the
cluster's platform and ships with the build (``wheels``).
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
import uuid
from dataclasses import dataclass

from ..config import ClusterConfig
from ..environment import EnvironmentPlan, bootstrap_script
from ..errors import EnvironmentSetupError, tail_lines
from ..schedulers import Scheduler, ScriptContext
from ..schedulers.base import setup_lines
from ..transport.base import CommandResult, Transport
from ..wheels import (
    RemotePlatform,
    download_wheels,
    index_hint,
    parse_probe,
    probe_script,
    wheel_files,
)
from .archive import tar_bytes
from .buildjobs import BOOTSTRAP, JOB_SCRIPT, WHEELS, BuildJob, build_resources

logger = logging.getLogger("clustrix.remote")

_READY_WORDS = ("BUILT", "REUSED")


@dataclass(frozen=True)
class EnvironmentReport:
    """Which environment a job ran in, and whether this submission had to build it
    (``build_job``: the scheduler id of the job that built it, with ``environment_build="job"``).
    """

    key: str | None
    path: str | None
    built: bool
    build_job: str | None = None


class Environments:
    """Builds (or finds) the venvs of one cluster's work folder."""

    def __init__(self, transport: Transport, scheduler: Scheduler) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._ready: set[str] = set()

    def ensure(
        self, plan: EnvironmentPlan, work_dir: str, config: ClusterConfig
    ) -> EnvironmentReport:
        """Build the plan's venv on the cluster unless it exists; once per key per process.

        Raises EnvironmentSetupError when the build fails (with the end of its log), and
        KeyboardInterrupt after cancelling a build job (with ``cancel_on_interrupt``).
        """
        if not plan.builds_venv:
            return EnvironmentReport(None, None, built=False)
        assert plan.key is not None
        path = f"{work_dir}/envs/{plan.key}"
        with self._lock:
            key_lock = self._key_locks.setdefault(plan.key, threading.Lock())
        with key_lock:
            if plan.key in self._ready:
                return EnvironmentReport(plan.key, path, built=False)
            started = time.monotonic()
            built, build_job = self._build(plan, path, config)
            if built:
                logger.info("built environment %s in %.1f s", path, time.monotonic() - started)
            self._ready.add(plan.key)
            return EnvironmentReport(plan.key, path, built=built, build_job=build_job)

    def forget(self) -> None:
        """Forget which environments were seen ready: the next call asks the cluster again,
        as a new process would."""
        with self._lock:
            self._ready.clear()

    def _build(
        self, plan: EnvironmentPlan, path: str, config: ClusterConfig
    ) -> tuple[bool, str | None]:
        """Build or find the venv where ``config`` says; whether it was built (False: found
        ready), and the id of the build job if one ran."""
        setup = setup_lines(
            config.module_loads, config.environment_variables, config.pre_execution_commands
        )
        wheels: dict[str, bytes] = {}
        if config.package_source == "client":
            platform = self._probe(path, setup)
            if platform is None:
                return False, None
            assert plan.key is not None
            wheels = download_wheels(plan.requirements, platform, plan.key)
        folder = f"{path}.build-{uuid.uuid4().hex[:12]}"
        shipped = f"{folder}/{WHEELS}" if wheels else None
        script = bootstrap_script(path, plan.requirements, setup, wheels=shipped)
        if config.environment_build == "job":
            return self._build_in_job(plan, path, folder, script, wheels, config)
        if wheels:
            quoted = shlex.quote(folder)
            envs = shlex.quote(f"{path.rsplit('/', 1)[0]}")
            command = (
                f"mkdir -p {envs} && chmod 700 {envs} && mkdir -m 700 {quoted} && "
                f"tar -x -f - -C {quoted} && bash -c {shlex.quote(script)}; "
                f"status=$?; rm -rf {quoted}; exit $status"
            )
            stdin = tar_bytes(wheel_files(wheels, WHEELS))
            result = self.transport.run(command, stdin=stdin, check=False)
        else:
            result = self.transport.run(f"bash -c {shlex.quote(script)}", check=False)
        return self._outcome(result, plan, path, config.package_source), None

    def _probe(self, path: str, setup: list[str]) -> RemotePlatform | None:
        """One round trip: None if the venv is ready, else the platform to download for."""
        script = probe_script(path, setup)
        result = self.transport.run(f"bash -c {shlex.quote(script)}", check=False)
        if result.exit_code != 0:
            raise EnvironmentSetupError(
                f"could not find the Python to build {path} with on {self.transport.where} "
                f"(exit code {result.exit_code})",
                state="ENVIRONMENT",
                exit_code=result.exit_code,
                host=self.transport.where,
                stderr_tail=tail_lines(result.stderr, 40),
            )
        return parse_probe(result.stdout)

    def _build_in_job(
        self,
        plan: EnvironmentPlan,
        path: str,
        folder: str,
        script: str,
        wheels: dict[str, bytes],
        config: ClusterConfig,
    ) -> tuple[bool, str | None]:
        """Run the bootstrap as a job and wait for it; Ctrl-C cancels the job."""
        job = BuildJob(self.transport, self.scheduler, path, folder, config.package_source)
        context = ScriptContext(
            job_name=f"clustrix-env-{plan.key}",
            job_dir=folder,
            python_command="",
            account=config.account,
            qos=config.qos,
            options={},
        )
        resources = build_resources(config.default_partition, config.default_queue)
        files = {
            BOOTSTRAP: (script.encode(), 0o600),
            JOB_SCRIPT: (job.job_script(resources, context).encode(), 0o700),
            **wheel_files(wheels, WHEELS),
        }
        job.submit(tar_bytes(files), context)
        try:
            built = job.wait(config.job_poll_interval, config.status_check_patience)
        except KeyboardInterrupt:
            if config.cancel_on_interrupt:
                job.cancel()
            raise
        return built, job.id

    def _outcome(
        self, result: CommandResult, plan: EnvironmentPlan, path: str, package_source: str
    ) -> bool:
        """Whether a bootstrap run on the login node built (True) or found (False) the venv;
        EnvironmentSetupError with the end of its log when it did neither."""
        said = (result.stdout.strip().splitlines() or [""])[-1].strip()
        if result.exit_code != 0 or said not in _READY_WORDS:
            # Ready only when the script's last word says so: an exit status of 0 alone may
            # come from a setup command that ended the script early.
            raise EnvironmentSetupError(
                f"could not build the Python environment {path} on {self.transport.where} "
                f"(exit code {result.exit_code}"
                + ("" if said in _READY_WORDS else ", and it never reported ready")
                + f"); requirements: {', '.join(plan.requirements)}"
                + index_hint(result.stderr, package_source),
                state="ENVIRONMENT",
                exit_code=result.exit_code,
                host=self.transport.where,
                stderr_tail=tail_lines(result.stderr, 40),
            )
        return said == "BUILT"


def python_command(plan: EnvironmentPlan, report: EnvironmentReport) -> str:
    """The interpreter a job script runs the runner with, quoted for the shell."""
    if plan.python:
        return shlex.quote(plan.python)
    if plan.conda_env:
        return f"conda run --no-capture-output -n {shlex.quote(plan.conda_env)} python"
    assert report.path is not None
    return shlex.quote(f"{report.path}/bin/python")
