"""Running calls as jobs on a cluster or an SSH host.

One ``RemoteBackend`` exists per cluster (scheduler, host, port, user, work folder). A job is
one folder holding one or many tasks; many calls become one job array (several calls per task
when they are many), split when the scheduler caps array sizes. Staging and submitting cost
one round trip; the job's Python environment is built once per requirement set. A single
polling thread asks about *all* pending jobs of the cluster with one command per interval,
which also brings back the results of finished tasks. Every job is written to the job store
before it is submitted, so another process can re-attach to it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .config import ClusterConfig
from .environment import (
    EnvironmentPlan,
    bootstrap_script,
    modules_named_in_pickle,
    plan_environment,
    prepare_local_modules,
)
from .errors import (
    BackendUnavailableError,
    ClustrixError,
    ConnectionFailedError,
    EnvironmentSetupError,
    JobCancelledError,
    JobFailedError,
    JobOutOfMemoryError,
    JobTimeoutError,
    NodeFailureError,
    ResultsCollectedElsewhereError,
    SchedulerUnavailableError,
)
from .futures import ClusterFuture, add_note, mark_cancelled
from .job_runtime import shipped_runtime
from .jobs import (
    RemoteJob,
    Submission,
    Task,
    index_ranges,
    job_files,
    new_job_id,
    result_file,
    tar_bytes,
    untar,
)
from .payload import (
    CallArgs,
    batch_outcomes,
    function_name,
    pickle_calls,
    pickle_function,
    pickling_for_remote_job,
)
from .resources import Resources
from .schedulers import JobState, JobStatus, Scheduler, ScriptContext, scheduler_for
from .schedulers.base import ArraySpec, setup_lines
from .store import FINAL_STATES, JobRecord, JobStore, this_process
from .transport.base import Transport
from .transport.local import LocalTransport

logger = logging.getLogger("clustrix.remote")

_SECTION = "--clustrix-results--"
_MARK = "--clustrix-task--"
_INLINE_LIMIT = 4 * 1024 * 1024
_DEFAULT_MAX_ARRAY = 1000
# A status check takes a second or two; one hanging far longer is on a connection that died
# without closing (a laptop that slept, a dropped VPN), and the retry reconnects.
_POLL_TIMEOUT = 120.0
# How long a submission whose connection dropped is given to report on the login node: a
# short grace once its shell has ended, a longer patience while the shell still runs (a
# scheduler slow to answer).
_SUBMISSION_GRACE = 15.0
_SUBMISSION_PATIENCE = 120.0
# collect FOLDER JOB_ID "FIRST-LAST ...": for each task with a result, a marker line and (if
# small) its result and logs as a base64 tar on the next line.
_COLLECT_FUNCTION = (
    "collect() { for range in $3; do for t in $(seq ${range%-*} ${range#*-}); do "
    '[ -e "$1/result-$t.pkl" ] || continue; '
    'if [ "$(stat -c %s "$1/result-$t.pkl")" -le ' + str(_INLINE_LIMIT) + " ]; then "
    'echo "' + _MARK + ' $2 $t inline"; '
    'tar -c -f - -C "$1" --ignore-failed-read "result-$t.pkl" "stdout-$t" "stderr-$t" '
    "2>/dev/null | base64 -w0; echo; "
    'else echo "' + _MARK + ' $2 $t large"; fi; done; done; }'
)
# Failures of the machine rather than of the call: with retries=N they are resubmitted.
_RETRIED_STATES = {JobState.NODE_FAIL, JobState.PREEMPTED}
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
    JobState.PREEMPTED: "was preempted and not requeued; retries=N resubmits such jobs",
    JobState.FAILED: "failed before producing a result",
    JobState.COMPLETED: "ended without writing a result",
    JobState.UNKNOWN: "is no longer known to the scheduler and left no result",
}
# A future and what to settle it with: (future, True, value) or (future, False, exception).
_Settlement = tuple[ClusterFuture, bool, Any]
_CANCELLATIONS = (CancelledError, JobCancelledError)
# Settings a later process needs to reach a job's cluster again (never the password).
CONNECTION_SETTINGS = (
    "cluster_type",
    "cluster_host",
    "cluster_port",
    "username",
    "key_file",
    "known_hosts_file",
    "host_key_policy",
    "remote_work_dir",
)


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
        known_hosts=None if known_hosts is None else Path(known_hosts).expanduser(),
    )


class RemoteBackend:
    """Submits, tracks and collects the jobs of one cluster."""

    def __init__(self, transport: Transport, scheduler: Scheduler, config: ClusterConfig) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.connection = {name: getattr(config, name) for name in CONNECTION_SETTINGS}
        self._configured_work_dir = config.remote_work_dir
        self._work_dir: str | None = None
        self._max_array: int | None = None
        self._lock = threading.Condition()
        self._pending: dict[str, RemoteJob] = {}
        self._poller: threading.Thread | None = None
        self._ready_environments: set[str] = set()
        self._environment_locks: dict[str, threading.Lock] = {}
        self._stores: dict[str, JobStore] = {}
        # One status check at a time: the polling thread's and a caller's (``refresh``).
        self._checking = threading.Lock()

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

    def store(self, config: ClusterConfig) -> JobStore:
        path = str(Path(config.job_store).expanduser())
        return self._stores.setdefault(path, JobStore(path))

    def max_array_size(self, config: ClusterConfig) -> int:
        """The configured cap, else the scheduler's (asked once), else a common default."""
        if config.max_array_size is not None:
            return config.max_array_size
        if self._max_array is None:
            command = self.scheduler.max_array_size_command()
            output = self.transport.run(command, check=False).stdout if command else ""
            self._max_array = self.scheduler.parse_max_array_size(output) or _DEFAULT_MAX_ARRAY
        return self._max_array

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        *,
        config: ClusterConfig,
        resources: Resources,
        environment: str | list[str] | None,
        options: Mapping[str, Any],
        chunksize: int | None = None,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> RemoteJob:
        """Stage and submit ``calls`` as one job (an array when there are several tasks).

        Returns once the scheduler has accepted every part; each call's future is in
        ``job.tasks[...].futures`` in call order.
        """
        if not calls:
            raise ValueError("nothing to submit")
        options = dict(options)
        job_name = str(options.pop("job_name", f"clustrix-{getattr(func, '__name__', 'call')}"))
        self.scheduler.check_options(options)
        name = function_name(func)
        values = [value for args, kwargs in calls[:100] for value in (*args, *kwargs.values())]
        modules = prepare_local_modules(func, values)
        per_task = calls_per_task(len(calls), chunksize, config)
        chunks = [list(calls[i : i + per_task]) for i in range(0, len(calls), per_task)]
        with pickling_for_remote_job():
            function_bytes = pickle_function(func)
            task_payloads = [pickle_calls(func, chunk) for chunk in chunks]
        # Read once from the pickles' opcodes, for the environment and the shipped runtime.
        payload_modules = set().union(
            *(modules_named_in_pickle(p) for p in [function_bytes, *task_payloads[:3]])
        )
        plan = plan_environment(
            func,
            environment,
            python_executable=config.python_executable,
            conda_env_name=config.conda_env_name,
            payload_modules=payload_modules,
            modules=modules,
        )
        report = self.ensure_environment(plan, config)
        job_id = new_job_id()
        folder = f"{self.work_dir}/{job_id}"
        job = self._new_job(job_id, folder, name, func, [len(c) for c in chunks], config, retries)
        job.retry_on = retry_on
        for task in job.tasks:
            for future in task.futures:
                future.environment = report
        context = script_context(
            config, job_name, folder, self._python_command(plan, report), options
        )
        task_resources = resources_per_task(resources, per_task)
        parts = self._plan_parts(list(range(len(chunks))), config, context)
        scripts = {
            f"job-{n}.sh": self.scheduler.render_script(task_resources, part)
            for n, part in enumerate(parts)
        }
        files = job_files(
            job_id=job_id,
            name=name,
            function_bytes=function_bytes,
            tasks=task_payloads,
            scripts=scripts,
            extra=shipped_runtime(payload_modules),
        )
        job.context, job.resources = context, task_resources
        # Written down before anything reaches the cluster, with the parts it will become:
        # if this process dies while submitting, another one can adopt what was accepted.
        store = self.store(config)
        store.add(
            JobRecord(
                job_id=job_id,
                function=name,
                cluster_type=self.scheduler.name,
                host=self.transport.where,
                remote_folder=folder,
                state="SUBMITTING",
                items=len(calls),
                task_sizes=[len(chunk) for chunk in chunks],
                connection=self.connection,
                parts=[part_fields(part) for part in parts],
                submitter=this_process(),
            )
        )
        quoted_work, quoted_folder = shlex.quote(self.work_dir), shlex.quote(folder)
        # Each part's scheduler id is also kept in the job folder, so that a submission whose
        # connection drops can still learn what the scheduler accepted.
        command = (
            f"mkdir -p {quoted_work} && chmod 700 {quoted_work} && mkdir -m 700 {quoted_folder} "
            f"&& cd {quoted_folder} && echo $$ > {_SUBMITTING_PID} && tar -x -f - && "
            + " && ".join(
                f"[ ! -e {_ABANDONED} ] && "
                f"{{ {self.scheduler.submit_command(script, part)}; }} > {_submitted_file(n)}"
                for n, (script, part) in enumerate(zip(scripts, parts, strict=True))
            )
            + " && cat "
            + " ".join(_submitted_file(n) for n in range(len(parts)))
        )
        # Ctrl-C between the scheduler accepting the job and its ids being recorded would
        # leave a job running that nothing tracks: it is held back until the ids are known.
        with _interrupts_held() as interrupted:
            try:
                try:
                    output = self.transport.run(command, stdin=tar_bytes(files)).stdout
                    lines = output.strip().splitlines()[-len(parts) :]
                except ConnectionFailedError:
                    lines = self._submitted_after_drop(folder, len(parts))
            except Exception as exc:
                store.update(job_id, state="FAILED", finished=time.time(), message=str(exc)[:2000])
                raise
            ids = [self.scheduler.parse_job_id(line) for line in lines]
            for part, scheduler_id in zip(parts, ids, strict=True):
                self._record_submission(job, scheduler_id, part)
            store.update(job_id, state="PENDING")
        logger.info(
            "submitted %s (%d call(s), %d task(s)) as %s job(s) %s in %s",
            name,
            len(calls),
            len(chunks),
            self.scheduler.name,
            ", ".join(ids),
            folder,
        )
        self._track(job)
        if interrupted:
            if config.cancel_on_interrupt:
                self.cancel_job(job)
            raise KeyboardInterrupt
        return job

    def _submitted_after_drop(self, folder: str, parts: int) -> list[str]:
        """The id lines of a submission whose connection dropped, read back from its folder.

        The submitting shell goes on without the connection, so its parts are given a moment
        to finish. If some never report, the submission is abandoned: parts not yet started
        will not start, and those the scheduler accepted are cancelled, so that nothing runs
        untracked. Raises ConnectionFailedError then, saying so.
        """
        quoted = shlex.quote(folder)
        started = time.monotonic()
        lines: list[str] = []
        answered = running = False
        while True:
            with contextlib.suppress(ClustrixError, OSError):
                running, lines = self._submission_report(folder, parts)
                answered = True
            if len(lines) == parts and "-" not in lines:
                logger.warning(
                    "the connection to %s dropped during a submission; the scheduler had "
                    "accepted it, and it is tracked as usual",
                    self.transport.where,
                )
                return lines
            waited = time.monotonic() - started
            if waited > _SUBMISSION_PATIENCE or (waited > _SUBMISSION_GRACE and not running):
                break
            time.sleep(1.0)
        lost = f"the connection to {self.transport.where} dropped during a submission"
        if not answered:
            raise ConnectionFailedError(
                f"{lost} and could not be reopened, so whether the scheduler accepted it is "
                f"unknown: look in the queue (its job folder is {folder})"
            )
        accepted = [self.scheduler.parse_job_id(line) for line in lines if line != "-"]
        cancel = self.scheduler.cancel_command(accepted) if accepted else "true"
        abandoned = False
        with contextlib.suppress(ClustrixError, OSError):
            # The folder existing also stops a submission that has not even started.
            self.transport.run(
                f"mkdir -p -m 700 {quoted} && touch {quoted}/{_ABANDONED}; {cancel}", check=False
            )
            abandoned = True
        if not accepted:
            outcome = "no part of it had been accepted"
        elif abandoned:
            outcome = f"the parts it had accepted ({', '.join(accepted)}) were cancelled"
        else:
            outcome = f"cancel the parts it had accepted yourself: {cancel}"
        late = (
            f" (a part still being submitted after {_SUBMISSION_PATIENCE:g} s may yet start: "
            "look in the queue)"
            if running
            else ""
        )
        raise ConnectionFailedError(
            f"{lost}, and not every part's answer could be read back from {folder}; {outcome}{late}"
        )

    def _submission_report(self, folder: str, parts: int) -> tuple[bool, list[str]]:
        """What a submission left in its job folder: whether its shell still runs, and a
        line per part it reached: the scheduler's answer, or "-" while there is none.

        No line at all when the folder does not exist (the submission never began).
        """
        files = " ".join(_submitted_file(n) for n in range(parts))
        report = (
            f"cd {shlex.quote(folder)} 2>/dev/null || {{ echo ended; exit 0; }}; "
            f'if kill -0 "$(cat {_SUBMITTING_PID} 2>/dev/null)" 2>/dev/null; '
            "then echo running; else echo ended; fi; "
            f'for f in {files}; do if [ -s "$f" ]; then tail -n 1 "$f"; else echo -; fi; done'
        )
        answer = self.transport.run(report, check=False).stdout.splitlines()
        return answer[:1] == ["running"], answer[1:]

    def adopt(self, record: JobRecord, store: JobStore) -> bool:
        """Take over a job whose submitting process died while submitting it.

        What the scheduler accepted is read back from the job folder (each part's id is
        written there as the scheduler answers) and recorded, so that the job can be
        watched, listed and cancelled like any other. Parts that were never submitted are
        abandoned, so they can never start untracked. Returns False, changing nothing, while
        the submitting shell still runs on the cluster, or for a record without its planned
        parts (written by an older version).
        """
        parts = record.parts
        if not parts:
            return False
        folder = record.remote_folder
        running, lines = self._submission_report(folder, len(parts))
        if running:
            return False
        lines += ["-"] * (len(parts) - len(lines))
        accepted: list[str] = []
        for part, line in zip(parts, lines, strict=True):
            if line != "-":
                submission = Submission(self.scheduler.parse_job_id(line), **part)
                store.add_submission(record.job_id, asdict(submission))
                accepted.append(submission.scheduler_id)
        never = [
            part["offset"] + n
            for part, line in zip(parts, lines, strict=True)
            if line == "-"
            for n in range(part["count"])
        ]
        if never:
            quoted = shlex.quote(folder)
            self.transport.run(f"mkdir -p -m 700 {quoted} && touch {quoted}/{_ABANDONED}")
        submitter = record.submitter
        message = (
            f"adopted: its submitting process ({submitter.get('host', '?')}, pid "
            f"{submitter.get('pid', '?')}) stopped while submitting; the scheduler had "
            f"accepted {len(accepted)} of {len(parts)} submission(s)"
            + (f" ({', '.join(accepted)})" if accepted else "")
            + (f"; task(s) {_ranges(never)} were never submitted" if never else "")
        )
        logger.warning("job %s %s", record.job_id, message)
        store.update(
            record.job_id,
            state="PENDING" if accepted else "FAILED",
            message=message,
            finished=None if accepted else time.time(),
        )
        return True

    def _new_job(
        self,
        job_id: str,
        folder: str,
        name: str,
        func: Any,
        task_sizes: list[int],
        config: ClusterConfig,
        retries: int,
    ) -> RemoteJob:
        backend_name = f"{self.scheduler.name}:{self.transport.where}"
        tasks = []
        for index, size in enumerate(task_sizes):
            futures = []
            for _ in range(size):
                future = ClusterFuture(name, backend_name)
                future.job_id, future.remote_folder = job_id, folder
                futures.append(future)
            tasks.append(Task(index=index, futures=futures))
        job = RemoteJob(
            job_id=job_id,
            folder=folder,
            name=name,
            func=func,
            tasks=tasks,
            poll_interval=config.job_poll_interval,
            status_patience=config.status_check_patience,
            cleanup_on_success=config.cleanup_on_success,
            echo_output=config.echo_job_output,
            store=self.store(config),
            retries=retries,
        )
        for task in tasks:
            for future in task.futures:
                future.bind_cancel(lambda task=task: self.cancel_tasks(job, [task]))
                future.bind_logs(lambda stream, task=task: self.read_log(job, task, stream))
        return job

    def _plan_parts(
        self, tasks: list[int], config: ClusterConfig, context: ScriptContext
    ) -> list[ScriptContext]:
        """Contexts of the submissions running ``tasks``: arrays no larger than allowed.

        When a map needs several arrays, they share ``max_parallel_jobs`` between them (at
        least one running task each), so splitting does not multiply the tasks running at once.
        """
        largest = self.max_array_size(config) if self.scheduler.supports_arrays else 1
        spans: list[tuple[int, int]] = []
        for first, last in index_ranges(tasks):
            for start in range(first, last + 1, largest):
                spans.append((start, min(largest, last - start + 1)))
        arrays = sum(1 for _, count in spans if count > 1)
        share = max(1, config.max_parallel_jobs // max(1, arrays))
        return [
            replace(context, array=ArraySpec(start, count, min(share, count)))
            if count > 1
            else replace(context, array=None, task=start)
            for start, count in spans
        ]

    def _record_submission(self, job: RemoteJob, scheduler_id: str, part: ScriptContext) -> None:
        submission = Submission(scheduler_id, **part_fields(part))
        for task in job.tasks[submission.offset : submission.offset + submission.count]:
            task.submission = submission
            task.state = JobState.PENDING
            task.missing_result_checks = 0
            for future in task.futures:
                future.scheduler_id = scheduler_id
        job.store.add_submission(job.job_id, asdict(submission))

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
            script = bootstrap_script(
                path,
                plan.requirements,
                setup_lines(
                    config.module_loads, config.environment_variables, config.pre_execution_commands
                ),
            )
            started = time.monotonic()
            result = self.transport.run(f"bash -c {shlex.quote(script)}", check=False)
            said = (result.stdout.strip().splitlines() or [""])[-1].strip()
            if result.exit_code != 0 or said not in ("BUILT", "REUSED"):
                # Ready only when the script's last word says so: an exit status of 0 alone
                # may come from a setup command that ended the script early.
                raise EnvironmentSetupError(
                    f"could not build the Python environment {path} on {self.transport.where} "
                    f"(exit code {result.exit_code}"
                    + ("" if said in ("BUILT", "REUSED") else ", and it never reported ready")
                    + f"); requirements: {', '.join(plan.requirements)}",
                    state="ENVIRONMENT",
                    exit_code=result.exit_code,
                    host=self.transport.where,
                    stderr_tail=_tail(result.stderr, 40),
                )
            built = said == "BUILT"
            if built:
                logger.info("built environment %s in %.1f s", path, time.monotonic() - started)
            self._ready_environments.add(plan.key)
            return EnvironmentReport(plan.key, path, built=built)

    # ------------------------------------------------------------------ re-attaching

    def attach(self, record: JobRecord, config: ClusterConfig) -> RemoteJob:
        """Track a job submitted by another (perhaps dead) process, from its store record."""
        with self._lock:
            live = self._pending.get(record.job_id)
        if live is not None:
            return live
        job = self._new_job(
            record.job_id,
            record.remote_folder,
            record.function,
            None,
            record.task_sizes,
            config,
            retries=0,
        )
        for values in record.submissions:
            submission = Submission(**values)
            for task in job.tasks[submission.offset : submission.offset + submission.count]:
                task.submission = submission
                for future in task.futures:
                    future.scheduler_id = submission.scheduler_id
        if record.state == "CANCELLED":
            for task in job.tasks:
                task.done = True
                for future in task.futures:
                    mark_cancelled(future)
            return job
        unsubmitted = [task for task in job.tasks if task.submission is None]
        for task in unsubmitted:
            # Its submitting process died first (see adopt): nothing will ever run it.
            task.done = True
            error = JobFailedError(
                f"task {task.index} of job {job.job_id} was never submitted: "
                f"{record.message or 'its submitting process stopped first'}",
                job_id=job.job_id,
                state="SUBMITTING",
                host=self.transport.where,
            )
            for future in task.futures:
                _settle(future, False, error)
        if len(unsubmitted) < len(job.tasks):
            self._track(job)
        return job

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
                for job in jobs:
                    job.failing_since = None
            except Exception as exc:  # the connection, mostly: keep every job, try again
                failures += 1
                logger.warning(
                    "status check of %d job(s) on %s failed (%s); retrying",
                    len(jobs),
                    self.transport.where,
                    exc,
                )
                self._after_failed_check(jobs, exc, failures)

    def _after_failed_check(self, jobs: list[RemoteJob], error: Exception, failures: int) -> None:
        """Retry soon, backing off; a job whose checks have failed for longer than its
        ``status_check_patience`` stops being watched and its waiting calls fail with the
        last error, so that nothing waits forever on a scheduler that never answers."""
        now = time.monotonic()
        for job in jobs:
            if job.failing_since is None:
                job.failing_since = now
            if now - job.failing_since < job.status_patience:
                with self._lock:
                    job.next_check = now + min(job.poll_interval, 0.5 * failures)
                continue
            self._forget(job)
            message = (
                f"the status of job {job.job_id} on {self.transport.where} could not be checked "
                f"for {now - job.failing_since:.0f} s (status_check_patience); last error: "
                f"{error}. The job itself was left alone: once the cluster answers again, "
                f"clustrix.get_job({job.job_id!r}) re-attaches to it"
            )
            job.store.update(job.job_id, message=message[:2000])
            for task in job.pending_tasks():
                task.done = True
                for future in task.futures:
                    _settle(future, False, SchedulerUnavailableError(message))

    def refresh(self, job: RemoteJob) -> None:
        """Bring ``job`` up to date with the scheduler now, for a caller asking its status.

        A task that ended without a result is looked at a few times before it is declared
        failed (a result may take a moment to appear on a shared file system); this waits
        for those looks, so that the answer is how the job stands, not a step behind.
        """
        deadline = time.monotonic() + 30
        self.poll([job])
        while (
            any(task.missing_result_checks for task in job.pending_tasks())
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
            self.poll([job])

    def poll(self, jobs: list[RemoteJob]) -> None:
        """One round trip: the scheduler's view of every job, and finished tasks' results.

        Results up to ``_INLINE_LIMIT`` bytes come back in the same output (base64 of a tar
        with the task's logs), so collecting a short call costs no extra round trip.
        """
        with self._checking:
            self._poll_locked(jobs)

    def _poll_locked(self, jobs: list[RemoteJob]) -> None:
        submissions = {
            task.submission.scheduler_id: job.folder
            for job in jobs
            for task in job.pending_tasks()
            if task.submission is not None
        }
        detailed = any(t.missing_result_checks for job in jobs for t in job.pending_tasks())
        status_command = self.scheduler.status_command(submissions, detailed=detailed)
        collect = "; ".join(
            f"collect {shlex.quote(job.folder)} {shlex.quote(job.job_id)} "
            + shlex.quote(
                " ".join(
                    f"{a}-{b}"
                    for a, b in index_ranges([task.index for task in job.pending_tasks()])
                )
            )
            for job in jobs
        )
        output = self.transport.run(
            f"{_COLLECT_FUNCTION}; {status_command}; echo {_SECTION}; {collect}; true",
            check=False,
            timeout=_POLL_TIMEOUT,
        ).stdout
        status_part, _, result_part = output.partition(_SECTION)
        statuses = self.scheduler.parse_status(status_part, list(submissions))
        collected = _parse_collected(result_part)
        now = time.monotonic()
        for job in jobs:
            self._update(job, statuses, collected, now)

    def _update(
        self,
        job: RemoteJob,
        statuses: Mapping[str, JobStatus],
        collected: Mapping[tuple[str, int], dict[str, bytes] | None],
        now: float,
    ) -> None:
        retry: list[Task] = []
        settlements: list[_Settlement] = []
        for task in job.pending_tasks():
            if all(future.done() for future in task.futures):
                task.done = True  # cancelled by the user meanwhile
                continue
            key = (job.job_id, task.index)
            if key in collected:
                files = collected[key]
                if files is None:  # too large to inline: fetch it on its own
                    files = self._fetch(job, [result_file(task.index), *_logs(task.index)])
                settlements += self._collect(job, task, files)
                continue
            assert task.submission is not None
            status = statuses.get(
                task.submission.status_key(task.index, self.scheduler.array_base),
                statuses.get(task.submission.scheduler_id, JobStatus(JobState.UNKNOWN)),
            )
            task.state = status.state
            if not (status.state.finished or status.state is JobState.UNKNOWN):
                continue
            # Ended (or forgotten by the queue) without a result. A result written at the very
            # end may not be visible yet on a shared file system: look a few more times,
            # asking the scheduler for details (exit code, accounting) meanwhile.
            task.missing_result_checks += 1
            if task.missing_result_checks <= 3:
                continue
            if status.state in _RETRIED_STATES and task.attempts <= job.retries:
                retry.append(task)
            else:
                settlements += self._fail_task(job, task, status)
        if retry:
            self._resubmit(job, retry)
        if any(t.missing_result_checks for t in job.pending_tasks()):
            job.next_check = now + 0.5
        else:
            job.schedule_next_check(now)
        # The store learns how the job ended before anyone waiting on these results does: a
        # caller may read it, or exit, as soon as its last future is settled.
        self._finish_if_done(job, settlements)
        for future, ok, value in settlements:
            _settle(future, ok, value)

    def _collect(self, job: RemoteJob, task: Task, files: Mapping[str, bytes]) -> list[_Settlement]:
        """The outcomes of a task whose result arrived (none if it is run again)."""
        self._remember_logs(job, task, files)
        where = (
            f"{self.scheduler.name} job {task.submission.scheduler_id if task.submission else '?'}"
        )
        try:
            outcomes = batch_outcomes(files[result_file(task.index)], where=where, func=job.func)
        except Exception as exc:
            error = ClustrixError(
                f"could not read the result of task {task.index} of job {job.job_id}: {exc}"
            )
            outcomes = [(False, error)] * len(task.futures)
        if (
            job.retry_on
            and task.attempts <= job.retries
            and any(not ok and isinstance(value, job.retry_on) for ok, value in outcomes)
        ):
            # Asked for: run the task again (all its calls; they are one process).
            self._resubmit(job, [task])
            return []
        task.done = True
        for future, (ok, value) in zip(task.futures, outcomes, strict=True):
            future.attempts = task.attempts
            job.any_failed |= not ok
            if not ok and isinstance(value, MemoryError):
                add_note(value, self._memory_hint(job, where))
        return [(f, ok, value) for f, (ok, value) in zip(task.futures, outcomes, strict=True)]

    @staticmethod
    def _memory_hint(job: RemoteJob, where: str) -> str:
        """What to do about a MemoryError raised in a job: on a cluster it is most often the
        job's own memory limit (SGE's h_vmem, a ulimit), not the node's memory."""
        memory = job.resources.memory_mb if job.resources is not None else None
        limit = f"its limit was {memory} MB; " if memory else ""
        return (
            f"(the call ran out of memory in {where}: {limit}the scheduler may enforce the "
            "job's memory request as a hard limit; ask for more with memory=, e.g. "
            '@cluster(memory="8GB"))'
        )

    def _fail_task(self, job: RemoteJob, task: Task, status: JobStatus) -> list[_Settlement]:
        """The failures of a task that ended without a result."""
        task.done = True
        job.any_failed = True
        for future in task.futures:
            future.attempts = task.attempts
        elsewhere = self._delivered_elsewhere(job)
        if elsewhere is not None:
            return [(future, False, elsewhere) for future in task.futures]
        files = self._fetch(job, [*_logs(task.index), "scheduler.log"])
        self._remember_logs(job, task, files)
        scheduler_log = files.get("scheduler.log", b"").decode(errors="replace")
        state = status.state
        error_class = _FAILURES.get(state, JobFailedError)
        reason = f" ({status.reason})" if status.reason and status.reason != state.value else ""
        scheduler_id = task.submission.scheduler_id if task.submission else "?"
        where = f"task {task.index} of " if len(job.tasks) > 1 else ""
        stderr = "\n".join(filter(None, [task.stderr or "", scheduler_log]))
        error = error_class(
            f"{where}{self.scheduler.name} job {scheduler_id} running {job.name!r} "
            f"{_EXPLANATIONS.get(state, 'failed')}{reason}; its files are kept in "
            f"{job.folder} on {self.transport.where}",
            job_id=job.job_id,
            state=state.value,
            exit_code=status.exit_code,
            host=self.transport.where,
            stdout_tail=_tail(task.stdout or "", 20),
            stderr_tail=_tail(stderr, 20),
        )
        return [(future, False, error) for future in task.futures]

    def _delivered_elsewhere(self, job: RemoteJob) -> ClustrixError | None:
        """The error for a missing result that another process collected, if one did.

        Two processes may wait for the same job (the submitter and a ``get_job`` handle);
        the first to collect every result removes the folder (cleanup_on_success), and the
        job store says so. The other must not report the job as having failed.
        """
        record = job.store.get(job.job_id)
        if record is None or record.state not in FINAL_STATES:
            return None
        return ResultsCollectedElsewhereError(
            f"job {job.job_id} ended {record.state} and its results were collected by "
            f"another process ({record.message or 'see clustrix job ' + job.job_id}); "
            "they are no longer in its folder. Keep cleanup_on_success=False to read a job's "
            "results from several processes"
        )

    def _resubmit(self, job: RemoteJob, tasks: list[Task]) -> None:
        """Submit failed tasks again (node failures, preemption), reusing the job folder."""
        assert job.context is not None and job.resources is not None
        for task in tasks:
            task.attempts += 1
            logger.warning(
                "resubmitting task %d of %s (attempt %d)", task.index, job.job_id, task.attempts
            )
            part = replace(job.context, array=None, task=task.index)
            name = f"retry-{task.index}-{task.attempts}.sh"
            script = self.scheduler.render_script(job.resources, part)
            # The previous attempt's result, if any, must not be collected as this one's.
            output = self.transport.run(
                f"cd {shlex.quote(job.folder)} && rm -f {result_file(task.index)} && "
                f"cat > {name} && chmod 700 {name} && "
                f"{{ {self.scheduler.submit_command(name, part)}; }}",
                stdin=script.encode(),
            ).stdout
            self._record_submission(job, self.scheduler.parse_job_id(output), part)
            for future in task.futures:
                future.attempts = task.attempts

    def _finish_if_done(self, job: RemoteJob, settling: Sequence[_Settlement] = ()) -> None:
        """Record the job's final state once no task is pending; ``settling`` are the
        outcomes about to be handed to their futures."""
        if job.pending_tasks():
            running = any(t.state is JobState.RUNNING for t in job.tasks)
            if running:
                job.store.update(job.job_id, state="RUNNING")
            return
        if job.recorded_final:
            return
        job.recorded_final = True
        self._forget(job)
        errors = [None if ok else value for _, ok, value in settling]
        errors += [
            CancelledError() if future.cancelled() else future.exception()
            for task in job.tasks
            for future in task.futures
            if future.done()
        ]
        failed = sum(error is not None for error in errors)
        cancelled = sum(isinstance(error, _CANCELLATIONS) for error in errors)
        # Cancelled (by the user, or by the scheduler's scancel/qdel) is cancelled, unless
        # some call failed for another reason.
        state = "FAILED" if failed > cancelled else "CANCELLED" if cancelled else "COMPLETED"
        recorded = job.store.update(
            job.job_id, state=state, finished=time.time(), failed_items=failed
        )
        if recorded and state == "COMPLETED" and job.cleanup_on_success:
            self.transport.run(f"rm -rf {shlex.quote(job.folder)}", check=False)
            job.store.update(job.job_id, message="result delivered; remote folder removed")

    def _fetch(self, job: RemoteJob, names: list[str]) -> dict[str, bytes]:
        listed = " ".join(shlex.quote(name) for name in names)
        command = (
            f"cd {shlex.quote(job.folder)} && tar -c -f - --ignore-failed-read {listed} 2>/dev/null"
        )
        return untar(self.transport.run(command, check=False).stdout_bytes)

    def _remember_logs(self, job: RemoteJob, task: Task, files: Mapping[str, bytes]) -> None:
        stdout_name, stderr_name = _logs(task.index)
        task.stdout = files.get(stdout_name, b"").decode(errors="replace")
        task.stderr = files.get(stderr_name, b"").decode(errors="replace")
        if job.echo_output:
            prefix = f"[{job.name} {job.job_id}:{task.index}]"
            for text, stream in ((task.stdout, sys.stdout), (task.stderr, sys.stderr)):
                for line in text.splitlines():
                    print(f"{prefix} {line}", file=stream)

    def _forget(self, job: RemoteJob) -> None:
        with self._lock:
            self._pending.pop(job.job_id, None)

    # ------------------------------------------------------------------ control

    def cancel_tasks(self, job: RemoteJob, tasks: list[Task]) -> bool:
        """Cancel unfinished tasks (and every call in them); False if none was left."""
        tasks = [task for task in tasks if not task.done]
        if not tasks:
            return False
        elements = []
        for task in tasks:
            task.done = True
            if task.submission is not None:
                elements.append(task.submission.element_id(task.index, self.scheduler.array_base))
            for future in task.futures:
                mark_cancelled(future)
        whole = {t.submission.scheduler_id for t in tasks if t.submission}
        covered = all(
            t.done for t in job.tasks if t.submission and t.submission.scheduler_id in whole
        )
        # When every task of a submission goes, cancel it by its id: one scheduler command.
        targets = sorted(whole) if covered else sorted(set(elements))
        if targets:
            self.transport.run(self.scheduler.cancel_command(targets), check=False)
        logger.info("cancelled %s task(s) of job %s", len(tasks), job.job_id)
        self._finish_if_done(job)
        return True

    def cancel_job(self, job: RemoteJob) -> bool:
        return self.cancel_tasks(job, job.tasks)

    def read_log(self, job: RemoteJob, task: Task, stream: str) -> str:
        """A task's stdout or stderr: kept after it finished, read live while it runs."""
        kept = task.stdout if stream == "stdout" else task.stderr
        if kept is not None:
            return kept
        path = shlex.quote(f"{job.folder}/{stream}-{task.index}")
        return self.transport.run(f"cat {path} 2>/dev/null; true", check=False).stdout


def part_fields(part: ScriptContext) -> dict[str, Any]:
    """The tasks one submission runs, as the job store records them."""
    if part.array is None:
        return {"offset": part.task, "count": 1, "is_array": False}
    return {"offset": part.array.offset, "count": part.array.count, "is_array": True}


def calls_per_task(calls: int, chunksize: int | None, config: ClusterConfig) -> int:
    """Calls each array task runs: ``chunksize``, or few enough tasks for max_parallel_jobs."""
    return chunksize or max(1, math.ceil(calls / config.max_parallel_jobs))


def resources_per_task(resources: Resources, per_task: int) -> Resources:
    """A task running ``per_task`` calls one after the other needs that many times the time."""
    if per_task > 1 and resources.time_seconds is not None:
        return replace(resources, time_seconds=resources.time_seconds * per_task)
    return resources


def script_context(
    config: ClusterConfig,
    job_name: str,
    job_dir: str,
    python_command: str,
    options: Mapping[str, Any],
    array: ArraySpec | None = None,
) -> ScriptContext:
    """What a job script needs from the configuration, besides the resources."""
    return ScriptContext(
        job_name=job_name,
        job_dir=job_dir,
        python_command=python_command,
        module_loads=config.module_loads,
        environment_variables=config.environment_variables,
        pre_execution_commands=config.pre_execution_commands,
        account=config.account,
        qos=config.qos,
        options=options,
        array=array,
    )


@contextlib.contextmanager
def _interrupts_held() -> Iterator[list[int]]:
    """Hold back SIGINT (Ctrl-C, a notebook's interrupt) for the block; the list tells if one
    came. Only where it would raise KeyboardInterrupt: the main thread, default handler."""
    received: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield received
        return
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_ABANDONED = "submission-abandoned"
_SUBMITTING_PID = "submitting.pid"


def _submitted_file(part: int) -> str:
    return f"submitted-{part}"


def _logs(task: int) -> tuple[str, str]:
    return f"stdout-{task}", f"stderr-{task}"


def _parse_collected(text: str) -> dict[tuple[str, int], dict[str, bytes] | None]:
    """``{(job id, task): files}``; None marks a result too large to inline."""
    collected: dict[tuple[str, int], dict[str, bytes] | None] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if not line.startswith(_MARK):
            continue
        _, job_id, task, how = line.split()
        files = untar(base64.b64decode(next(lines, ""))) if how == "inline" else None
        collected[(job_id, int(task))] = files
    return collected


def _ranges(indices: list[int]) -> str:
    """``0-3, 7`` for [0, 1, 2, 3, 7]."""
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in index_ranges(indices))


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
            f"cluster_type={config.cluster_type!r} has no backend in this version of Clustrix"
        )
    key = tuple(getattr(config, name) for name in CONNECTION_SETTINGS)
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            backend = RemoteBackend(make_transport(config), scheduler, config)
            _backends[key] = backend
        return backend
