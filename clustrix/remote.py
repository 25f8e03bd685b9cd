"""Running calls as jobs on a cluster or an SSH host.

One ``RemoteBackend`` exists per cluster (scheduler, host, port, user, work folder). It stages
each job in one round trip, builds the job's Python environment once per requirement set, and
runs a single polling thread that asks about *all* of its pending jobs with one command per
interval, however many there are. Results, logs and failures come back through the futures.
"""

from __future__ import annotations

import base64
import logging
import shlex
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import ClusterConfig
from .environment import EnvironmentPlan, bootstrap_script, plan_environment, prepare_local_modules
from .errors import (
    BackendUnavailableError,
    ClustrixError,
    CommandError,
    EnvironmentSetupError,
    JobCancelledError,
    JobFailedError,
    JobOutOfMemoryError,
    JobTimeoutError,
    NodeFailureError,
)
from .futures import ClusterFuture
from .jobs import RESULT_FILE, RemoteJob, job_files, new_job_id, tar_bytes, untar
from .payload import (
    batch_outcomes,
    function_name,
    pickle_calls,
    pickle_function,
    pickling_for_remote_job,
)
from .resources import Resources
from .schedulers import JobState, JobStatus, Scheduler, ScriptContext, scheduler_for
from .transport.base import Transport
from .transport.local import LocalTransport

logger = logging.getLogger("clustrix.remote")

_SECTION = "--clustrix-results--"
_MARK = "--clustrix-job--"
_INLINE_LIMIT = 4 * 1024 * 1024
# collect FOLDER JOB_ID: print a marker and, if small, the result and logs as base64 tar.
_COLLECT_FUNCTION = (
    'collect() { [ -e "$1/' + RESULT_FILE + '" ] || return 0; '
    'if [ "$(stat -c %s "$1/' + RESULT_FILE + '")" -le ' + str(_INLINE_LIMIT) + " ]; then "
    'echo "' + _MARK + ' $2 inline"; '
    'tar -c -f - -C "$1" --ignore-failed-read ' + RESULT_FILE + " stdout stderr 2>/dev/null "
    "| base64 -w0; echo; "
    'else echo "' + _MARK + ' $2 large"; fi; }'
)
_FAILURES: dict[JobState, type[JobFailedError]] = {
    JobState.CANCELLED: JobCancelledError,
    JobState.TIMEOUT: JobTimeoutError,
    JobState.OUT_OF_MEMORY: JobOutOfMemoryError,
    JobState.NODE_FAIL: NodeFailureError,
}
_EXPLANATIONS = {
    JobState.CANCELLED: "was cancelled",
    JobState.TIMEOUT: "reached its time limit; ask for more with time=",
    JobState.OUT_OF_MEMORY: "ran out of memory; ask for more with memory=",
    JobState.NODE_FAIL: "was lost with the node running it; retries=N resubmits such jobs",
    JobState.FAILED: "failed before producing a result",
    JobState.COMPLETED: "ended without writing a result",
    JobState.UNKNOWN: "is no longer known to the scheduler and left no result",
}


@dataclass(frozen=True)
class EnvironmentReport:
    """Which environment a job ran in, and whether this submission had to build it."""

    key: str | None
    path: str | None
    built: bool


def make_transport(config: ClusterConfig) -> Transport:
    if not config.cluster_host:
        if config.cluster_type == "ssh":
            raise BackendUnavailableError("cluster_type='ssh' needs cluster_host to be set")
        return LocalTransport()  # on the login node itself: run sbatch & co. directly
    from .transport.ssh import shared_transport

    known_hosts = config.known_hosts_file
    return shared_transport(
        config.cluster_host,
        port=config.cluster_port,
        username=config.username,
        key_file=config.key_file,
        password=config.password,
        host_key_policy=config.host_key_policy,
        known_hosts=None if known_hosts is None else _expand(known_hosts),
    )


def _expand(path: str) -> Any:
    from pathlib import Path

    return Path(path).expanduser()


class RemoteBackend:
    """Submits, tracks and collects the jobs of one cluster."""

    def __init__(self, transport: Transport, scheduler: Scheduler, work_dir: str) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self._configured_work_dir = work_dir
        self._work_dir: str | None = None
        self._lock = threading.Condition()
        self._pending: dict[str, RemoteJob] = {}
        self._poller: threading.Thread | None = None
        self._ready_environments: set[str] = set()
        self._environment_locks: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"<RemoteBackend {self.scheduler.name} at {self.transport.where}>"

    @property
    def work_dir(self) -> str:
        """``remote_work_dir`` with ``~`` expanded on the remote side, as an absolute path."""
        if self._work_dir is None:
            path = self._configured_work_dir
            if path == "~" or path.startswith("~/"):
                path = self.transport.home() + path[1:]
            elif not path.startswith("/"):
                path = f"{self.transport.home()}/{path}"
            self._work_dir = path.rstrip("/")
        return self._work_dir

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        func: Callable[..., Any],
        args: tuple,
        kwargs: dict[str, Any],
        *,
        config: ClusterConfig,
        resources: Resources,
        environment: str | list[str] | None,
        options: Mapping[str, Any],
    ) -> ClusterFuture:
        """Stage and submit one call; returns once the scheduler has accepted the job."""
        options = dict(options)
        job_name = str(options.pop("job_name", f"clustrix-{getattr(func, '__name__', 'call')}"))
        self.scheduler.check_options(options)
        name = function_name(func)
        modules = prepare_local_modules(func, [*args, *kwargs.values()])
        with pickling_for_remote_job():
            function_bytes = pickle_function(func)
            calls_bytes = pickle_calls(func, [(args, kwargs)])
        plan = plan_environment(
            func,
            environment,
            python_executable=config.python_executable,
            conda_env_name=config.conda_env_name,
            payloads=[function_bytes, calls_bytes],
            modules=modules,
        )
        report = self.ensure_environment(plan, config)
        job_id = new_job_id()
        folder = f"{self.work_dir}/{job_id}"
        context = ScriptContext(
            job_name=job_name,
            job_dir=folder,
            python_command=self._python_command(plan, report),
            module_loads=config.module_loads,
            environment_variables=config.environment_variables,
            pre_execution_commands=config.pre_execution_commands,
            account=config.account,
            qos=config.qos,
            options=options,
        )
        script = self.scheduler.render_script(resources, context)
        files = job_files(
            job_id=job_id,
            name=name,
            function_bytes=function_bytes,
            calls_bytes=calls_bytes,
            script=script,
        )
        command = (
            f"mkdir -p {shlex.quote(self.work_dir)} && chmod 700 {shlex.quote(self.work_dir)} && "
            f"mkdir -m 700 {shlex.quote(folder)} && cd {shlex.quote(folder)} && tar -x -f - && "
            f"{{ {self.scheduler.submit_command('job.sh', context)}; }}"
        )
        result = self.transport.run(command, stdin=tar_bytes(files))
        scheduler_id = self.scheduler.parse_job_id(result.stdout)
        future = ClusterFuture(name, f"{self.scheduler.name}:{self.transport.where}")
        future.job_id = job_id
        future.scheduler_id = scheduler_id
        future.remote_folder = folder
        future.environment = report
        job = RemoteJob(
            job_id=job_id,
            folder=folder,
            scheduler_id=scheduler_id,
            future=future,
            func=func,
            poll_interval=config.job_poll_interval,
            cleanup_on_success=config.cleanup_on_success,
            echo_output=config.echo_job_output,
        )
        future.bind_cancel(lambda: self.cancel(job))
        future.bind_logs(lambda stream: self.read_log(job, stream))
        logger.info(
            "submitted %s as %s job %s (%s)", name, self.scheduler.name, scheduler_id, folder
        )
        self._track(job)
        return future

    def _python_command(self, plan: EnvironmentPlan, report: EnvironmentReport) -> str:
        if plan.python:
            return shlex.quote(plan.python)
        if plan.conda_env:
            return f"conda run --no-capture-output -n {shlex.quote(plan.conda_env)} python"
        assert report.path is not None
        return shlex.quote(f"{report.path}/bin/python")

    def ensure_environment(self, plan: EnvironmentPlan, config: ClusterConfig) -> EnvironmentReport:
        """Build the plan's venv on the cluster unless it exists; once per key per process."""
        if not plan.builds_venv:
            return EnvironmentReport(None, None, built=False)
        assert plan.key is not None
        path = f"{self.work_dir}/envs/{plan.key}"
        with self._lock:
            key_lock = self._environment_locks.setdefault(plan.key, threading.Lock())
        with key_lock:
            if plan.key in self._ready_environments:
                return EnvironmentReport(plan.key, path, built=False)
            from .schedulers.base import setup_lines

            script = bootstrap_script(
                path,
                plan.requirements,
                setup_lines(
                    config.module_loads, config.environment_variables, config.pre_execution_commands
                ),
            )
            started = time.monotonic()
            result = self.transport.run(f"bash -c {shlex.quote(script)}", check=False)
            if result.exit_code != 0:
                raise EnvironmentSetupError(
                    f"could not build the Python environment {path} on {self.transport.where} "
                    f"(exit code {result.exit_code}); requirements: {', '.join(plan.requirements)}",
                    state="ENVIRONMENT",
                    exit_code=result.exit_code,
                    host=self.transport.where,
                    stderr_tail=_tail(result.stderr, 40),
                )
            built = "BUILT" in result.stdout
            if built:
                logger.info("built environment %s in %.1f s", path, time.monotonic() - started)
            self._ready_environments.add(plan.key)
            return EnvironmentReport(plan.key, path, built=built)

    # ------------------------------------------------------------------ tracking

    def _track(self, job: RemoteJob) -> None:
        with self._lock:
            job.schedule_next_check(time.monotonic())
            self._pending[job.job_id] = job
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(
                    target=self._poll_forever,
                    name=f"clustrix-poll-{self.transport.where}",
                    daemon=True,
                )
                self._poller.start()
            self._lock.notify_all()

    def _poll_forever(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while not self._pending:
                    self._lock.wait()
                now = time.monotonic()
                soonest = min(job.next_check for job in self._pending.values())
                if soonest > now:
                    self._lock.wait(timeout=soonest - now)
                    continue
                # Ask about every pending job, not only the due ones: it is the same one
                # command, and it keeps the query count at one per interval.
                jobs = list(self._pending.values())
            try:
                self.poll(jobs)
                failures = 0
            except Exception as exc:  # the connection, mostly: keep every job, try again
                failures += 1
                logger.warning(
                    "status check of %d job(s) on %s failed (%s); retrying",
                    len(jobs),
                    self.transport.where,
                    exc,
                )
                with self._lock:
                    for job in jobs:
                        job.next_check = time.monotonic() + min(job.poll_interval, 0.5 * failures)

    def poll(self, jobs: list[RemoteJob]) -> None:
        """One round trip: the scheduler's view of every job, and the finished jobs' results.

        Results up to ``_INLINE_LIMIT`` bytes come back in the same output (base64 of a tar
        with the logs), so a short call costs no extra round trip to collect.
        """
        status_command = self.scheduler.status_command(
            {j.scheduler_id: j.folder for j in jobs},
            detailed=any(j.missing_result_checks for j in jobs),
        )
        collect = "; ".join(
            f"collect {shlex.quote(j.folder)} {shlex.quote(j.job_id)}" for j in jobs
        )
        output = self.transport.run(
            f"{_COLLECT_FUNCTION}; {status_command}; echo {_SECTION}; {collect}; true",
            check=False,
        ).stdout
        status_part, _, result_part = output.partition(_SECTION)
        statuses = self.scheduler.parse_status(status_part, [j.scheduler_id for j in jobs])
        collected = _parse_collected(result_part)
        now = time.monotonic()
        finished: list[RemoteJob] = []
        for job in jobs:
            if job.future.done():
                self._forget(job)
            elif job.job_id in collected:
                files = collected[job.job_id]
                if files is None:  # too large to inline: fetch it on its own
                    files = self._fetch(job, [RESULT_FILE, "stdout", "stderr"])
                if self._collect(job, files):
                    finished.append(job)
            else:
                self._judge(job, statuses[job.scheduler_id], now)
        cleanup = [shlex.quote(job.folder) for job in finished if job.cleanup_on_success]
        if cleanup:  # after the futures are settled: nobody waits for this
            self.transport.run(f"rm -rf {' '.join(cleanup)}", check=False)

    def _judge(self, job: RemoteJob, status: JobStatus, now: float) -> None:
        job.state = status.state
        if status.state.finished or status.state is JobState.UNKNOWN:
            # Ended (or forgotten by the queue) without a result: a result written at the very
            # end may not be visible yet on a shared file system, so look a few more times,
            # asking the scheduler for details (exit code, accounting) meanwhile.
            job.missing_result_checks += 1
            if job.missing_result_checks > 3:
                self._fail(job, status)
                return
            job.next_check = now + 0.5
            return
        job.schedule_next_check(now)

    def _collect(self, job: RemoteJob, files: Mapping[str, bytes]) -> bool:
        """Settle a job's future from its fetched files; True if the call succeeded."""
        self._remember_logs(job, files)
        try:
            ((ok, value),) = batch_outcomes(
                files[RESULT_FILE],
                where=f"{self.scheduler.name} job {job.scheduler_id}",
                func=job.func,
            )
        except Exception as exc:
            ok, value = (
                False,
                ClustrixError(f"could not read the result of job {job.job_id}: {exc}"),
            )
        self._forget(job)
        _settle(job.future, ok, value)
        return ok

    def _fail(self, job: RemoteJob, status: JobStatus) -> None:
        files = self._fetch(job, ["stdout", "stderr"])
        self._remember_logs(job, files)
        state = status.state
        error_class = _FAILURES.get(state, JobFailedError)
        reason = f" ({status.reason})" if status.reason and status.reason != state.value else ""
        error = error_class(
            f"{self.scheduler.name} job {job.scheduler_id} running {job.future.name!r} "
            f"{_EXPLANATIONS.get(state, 'failed')}{reason}; its files are kept in {job.folder} "
            f"on {self.transport.where}",
            job_id=job.job_id,
            state=state.value,
            exit_code=status.exit_code,
            host=self.transport.where,
            stdout_tail=_tail(job.stdout or "", 20),
            stderr_tail=_tail(job.stderr or "", 20),
        )
        self._forget(job)
        _settle(job.future, False, error)

    def _fetch(self, job: RemoteJob, names: list[str]) -> dict[str, bytes]:
        listed = " ".join(shlex.quote(name) for name in names)
        command = (
            f"cd {shlex.quote(job.folder)} && tar -c -f - --ignore-failed-read {listed} 2>/dev/null"
        )
        return untar(self.transport.run(command, check=False).stdout_bytes or _EMPTY_TAR)

    def _remember_logs(self, job: RemoteJob, files: Mapping[str, bytes]) -> None:
        job.stdout = files.get("stdout", b"").decode(errors="replace")
        job.stderr = files.get("stderr", b"").decode(errors="replace")
        if job.echo_output:
            prefix = f"[{job.future.name} {job.scheduler_id}]"
            for text, stream in ((job.stdout, sys.stdout), (job.stderr, sys.stderr)):
                for line in text.splitlines():
                    print(f"{prefix} {line}", file=stream)

    def _forget(self, job: RemoteJob) -> None:
        with self._lock:
            self._pending.pop(job.job_id, None)

    # ------------------------------------------------------------------ control

    def cancel(self, job: RemoteJob) -> bool:
        """Cancel a job that has not finished; False if it already has."""
        if job.future.done():
            return False
        self.transport.run(self.scheduler.cancel_command([job.scheduler_id]), check=False)
        self._forget(job)
        logger.info("cancelled %s job %s", self.scheduler.name, job.scheduler_id)
        return True

    def read_log(self, job: RemoteJob, stream: str) -> str:
        """A job's stdout or stderr: kept after it finished, read live while it runs."""
        kept = job.stdout if stream == "stdout" else job.stderr
        if kept is not None:
            return kept
        path = shlex.quote(f"{job.folder}/{stream}")
        try:
            return self.transport.run(f"cat {path} 2>/dev/null; true").stdout
        except CommandError:
            return ""


_EMPTY_TAR = b"\0" * 1024


def _parse_collected(text: str) -> dict[str, dict[str, bytes] | None]:
    """``{job id: files}`` from the collect output; None marks a result too large to inline."""
    collected: dict[str, dict[str, bytes] | None] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if not line.startswith(_MARK):
            continue
        _, job_id, how = line.split()
        collected[job_id] = untar(base64.b64decode(next(lines, ""))) if how == "inline" else None
    return collected


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _settle(future: ClusterFuture, ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_backends: dict[tuple[Any, ...], RemoteBackend] = {}
_backends_lock = threading.Lock()


def backend_for(config: ClusterConfig) -> RemoteBackend:
    """The shared backend of the cluster ``config`` points at, created on first use."""
    scheduler = scheduler_for(config.cluster_type)
    if scheduler is None:
        raise BackendUnavailableError(
            f"cluster_type={config.cluster_type!r} has no backend in this version of Clustrix; "
            "available: local, slurm, ssh"
        )
    key = (
        config.cluster_type,
        config.cluster_host,
        config.cluster_port,
        config.username,
        config.remote_work_dir,
    )
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            backend = RemoteBackend(make_transport(config), scheduler, config.remote_work_dir)
            _backends[key] = backend
        return backend
