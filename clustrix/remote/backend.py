"""The cluster backend: calls as jobs on a scheduler (or a plain SSH host) over a transport.

One ``ClusterBackend`` exists per cluster (type, host, port, user, work folder), shared by
every call of the process. It composes the parts of the journey: ``staging`` (until the
scheduler accepts a job), ``poller`` (one status command per interval for every job),
``outcomes`` (what a check means for each call), and the job store, which records every job
before it is submitted so that another process can take it up again.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import layout
from ..calls import CallArgs, CallSpec, Submitted
from ..config import ClusterConfig
from ..errors import (
    BackendUnavailableError,
    JobFailedError,
    SchedulerUnavailableError,
)
from ..futures import ClusterFuture, mark_cancelled, settle
from ..progress import gather
from ..schedulers import JobState, Scheduler, scheduler_for
from ..store import JobRecord, JobStore
from ..transport.base import Transport
from .archive import untar
from .connect import make_transport
from .dependencies import freeing_command
from .environments import Environments
from .interrupts import interrupts_held
from .job import ClusterJob, Findings, Submission, Task
from .outcomes import Decision, Outcomes, Settlement, final_state
from .poller import Poller
from .requeues import release_command
from .staging import Stager

logger = logging.getLogger("clustrix.remote")

_DEFAULT_MAX_ARRAY = 1000
# Settings a later process needs to reach a job's cluster again (never the password).
CONNECTION_SETTINGS = (
    "cluster_type",
    "cluster_host",
    "cluster_port",
    "username",
    "key_file",
    "known_hosts_file",
    "host_key_policy",
    "ssh_client",
    "remote_work_dir",
)


class ClusterBackend:
    """Submits, tracks and collects the jobs of one cluster."""

    is_local = False

    def __init__(self, transport: Transport, scheduler: Scheduler, config: ClusterConfig) -> None:
        self.name = scheduler.name
        self.transport = transport
        self.scheduler = scheduler
        self.connection = {name: getattr(config, name) for name in CONNECTION_SETTINGS}
        self._configured_work_dir = config.remote_work_dir
        self._work_dir: str | None = None
        self._max_array: int | None = None
        self._stores: dict[str, JobStore] = {}
        self._lock = threading.Lock()
        self.staging = Stager(
            transport, scheduler, Environments(transport, scheduler), self.connection
        )
        self.outcomes = Outcomes(scheduler, transport.where, self.fetch)
        self.poller = Poller(transport, scheduler, self._apply_check, self._give_up)

    def __repr__(self) -> str:
        return f"<ClusterBackend {self.scheduler.name} at {self.transport.where}>"

    # ------------------------------------------------------------------ where things are

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
        with self._lock:
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

    def capacity(self, config: ClusterConfig) -> int:
        return config.max_parallel_jobs

    def describe(self, config: ClusterConfig) -> dict[str, str]:
        """The target, the work folder, the scheduler's version and the login node's Python."""
        answer = self.transport.run(self.scheduler.version_command(), check=False)
        python = self.transport.run("command -v python3 && python3 --version", check=False)
        return {
            "target": f"{config.cluster_type} via {self.transport.where}",
            "work folder": self.work_dir,
            self.scheduler.name: answer.stdout.strip() or "no answer",
            "python3": " ".join(python.stdout.split()) or "not found on PATH",
        }

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
    ) -> Submitted:
        """Stage and submit ``calls`` as one job (an array when there are several tasks).

        Returns once the scheduler has accepted every part, with a future per call.
        """
        job = self.submit_job(func, calls, spec, config)
        return Submitted(
            job.futures(),
            job_id=job.job_id,
            counts=job.counts,
            cancel_all=lambda: self.cancel_job(job),
        )

    def submit_job(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
    ) -> ClusterJob:
        """``submit``, returning the tracked job itself."""
        largest = self.max_array_size(config) if self.scheduler.supports_arrays else 1
        prepared = self.staging.prepare(
            func,
            calls,
            spec,
            config,
            work_dir=self.work_dir,
            max_array=largest,
            new_job=self._new_job,
        )
        job = prepared.job
        # Ctrl-C between the scheduler accepting the job and its ids being recorded would
        # leave a job running that nothing tracks: it is held back until the ids are known.
        try:
            with interrupts_held() as interrupted:
                ids = self.staging.submit(prepared, self.work_dir)
        finally:
            if prepared.pipeline is not None:
                prepared.pipeline.held.recorded()
        logger.info(
            "submitted %s (%d call(s), %d task(s)) as %s job(s) %s in %s",
            job.name,
            len(calls),
            len(job.tasks),
            self.scheduler.name,
            ", ".join(ids),
            job.folder,
        )
        self.poller.track(job)
        if prepared.pipeline is not None:
            prepared.pipeline.watch(job, prepared.per_task, self.fail_tasks)
        if interrupted:
            if config.cancel_on_interrupt:
                self.cancel_job(job)
            raise KeyboardInterrupt
        return job

    def map(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
        *,
        return_exceptions: bool,
        progress: bool,
    ) -> list[Any]:
        """The calls as one job array; their values in call order. Ctrl-C cancels the job
        (with ``cancel_on_interrupt``, the default)."""
        if not calls:
            return []
        job = self.submit_job(func, calls, spec, config)
        try:
            return gather(
                job.futures(),
                return_exceptions=return_exceptions,
                progress=progress,
                description=getattr(func, "__name__", job.name),
                counts=job.counts,
                on_error=f" {job.job_id}; all results: clustrix.get_job({job.job_id!r})"
                ".results(return_exceptions=True)",
            )
        except KeyboardInterrupt:
            if config.cancel_on_interrupt:
                self.cancel_job(job)
            raise

    def _new_job(
        self,
        job_id: str,
        folder: str,
        name: str,
        func: Any,
        task_sizes: list[int],
        config: ClusterConfig,
        retries: int,
    ) -> ClusterJob:
        backend_name = f"{self.scheduler.name}:{self.transport.where}"
        tasks = []
        for index, size in enumerate(task_sizes):
            futures = []
            for position in range(size):
                future = ClusterFuture(name, backend_name)
                future.job_id, future.remote_folder = job_id, folder
                future.task_index, future.position = index, position
                futures.append(future)
            tasks.append(Task(index=index, futures=futures))
        job = ClusterJob(
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
                future.job = job
                future.bind_cancel(lambda task=task: self.cancel_tasks(job, [task]))
                future.bind_logs(lambda stream, task=task: self.read_log(job, task, stream))
        return job

    # ------------------------------------------------------------------ re-attaching

    def adopt(self, record: JobRecord, store: JobStore) -> bool:
        """Take over a job left SUBMITTING by a process that died (see ``Stager.adopt``)."""
        return self.staging.adopt(record, store)

    def attach(self, record: JobRecord, config: ClusterConfig) -> ClusterJob:
        """Track a job submitted by another (perhaps dead) process, from its store record."""
        live = self.poller.watched(record.job_id)
        if live is not None:
            return live
        job = self._new_job(
            record.job_id, record.remote_folder, record.function, None, record.task_sizes, config, 0
        )
        job.depends_on = list(record.depends_on)
        job.requeue, job.attempts = record.requeue, dict(record.attempts)
        for values in record.submissions:
            submission = Submission(**values)
            for task in job.tasks[submission.offset : submission.offset + submission.count]:
                if task.submission is not None:  # a retry: the earlier one may still run
                    task.earlier.append(task.submission)
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
                settle(future, False, error)
        if len(unsubmitted) < len(job.tasks):
            self.poller.track(job)
        return job

    def refresh(self, job: ClusterJob) -> None:
        """Ask the scheduler about ``job`` now (``Job.status``); see ``Poller.refresh``."""
        self.poller.refresh(job)

    # ------------------------------------------------------------------ what checks find

    def _apply_check(self, job: ClusterJob, found: Findings) -> None:
        decision: Decision = self.outcomes.decide(job, found)
        # Queued elements whose calls another task's runner took or ran: one command for
        # all. Before a retry, so that an old element cannot start and claim the calls
        # again; else with the next status check or after this one, so that no caller
        # waits for a round trip of its own.
        cancel = self.scheduler.cancel_command(sorted(decision.cancel)) if decision.cancel else ""
        if cancel and decision.retry:
            self.transport.run(cancel, check=False)
            cancel = ""
        for task in decision.retry:
            self.staging.resubmit(job, task)
        self._release(decision.release)
        # The store learns how the job ended before anyone waiting on these results does: a
        # caller may read it, or exit, as soon as its last future is settled. What the
        # scheduler and the folder still need (freeing, cancelling, removing) waits until
        # every job of this check has been settled: those round trips are not the callers'.
        later: list[str] = []
        was_final = job.recorded_final
        cancel = self._finish_if_done(job, decision.settle, cancel=cancel, after_check=True)
        for future, ok, value in decision.settle:
            settle(future, ok, value)
        # Checked after settling: a dependent that looked earlier saw the futures done, and
        # reads their values without waiting for the elements.
        ended = job.recorded_final and not was_final
        dependents = job.store.dependents(job.job_id) if cancel or ended else []
        # Once this job's calls all succeeded, its dependents need not wait for its elements
        # to end on the scheduler: their dependency is cleared, where the scheduler can.
        freed = bool(dependents or job.folder_kept) and self._free(job, dependents, later)
        if cancel and (job.folder_kept or dependents) and not freed:
            # A pipeline waits for these elements to succeed (afterok, aftercorr): cancelling
            # them would fail its jobs. They start, find their calls run, and end at once.
            cancel = ""
        if cancel and not job.recorded_final:
            self.poller.run_with_next_check(cancel)
        elif cancel:  # no next check for this job
            later.append(cancel)
        if later:
            self.poller.run_after_check(later)

    def _free(self, job: ClusterJob, dependents: list[str], later: list[str]) -> bool:
        """Whether ``job``'s queued elements may be cancelled although jobs depend on it:
        their dependency cleared first (``dependencies.freeing_command``, added to
        ``later``, the commands run after this check)."""
        command = freeing_command(job, dependents, self.scheduler)
        if command:
            later.append(command)
        return command is not None

    def _release(self, elements: list[str]) -> None:
        """Let requeued elements start again soon (``requeues.release_command``)."""
        command = release_command(self.scheduler, elements)
        if command:
            logger.info("starting requeued job element(s) %s again", " ".join(elements))
            self.transport.run(command, check=False)

    def _give_up(self, job: ClusterJob, error: Exception, seconds: float) -> None:
        """Fail the waiting calls of a job whose status checks kept failing; the job is
        left alone, and can be re-attached once the cluster answers."""
        message = (
            f"the status of job {job.job_id} on {self.transport.where} could not be checked "
            f"for {seconds:.0f} s (status_check_patience); last error: {error}. The job itself "
            f"was left alone: once the cluster answers again, clustrix.get_job({job.job_id!r}) "
            "re-attaches to it"
        )
        job.store.update(job.job_id, message=message[:2000])
        for task in job.pending_tasks():
            task.done = True
            for future in task.futures:
                settle(future, False, SchedulerUnavailableError(message))

    def _finish_if_done(
        self,
        job: ClusterJob,
        settling: Sequence[Settlement] = (),
        cancel: str = "",
        after_check: bool = False,
    ) -> str:
        """Record the job's final state once no task is pending; ``settling`` are the
        outcomes about to be handed to their futures. ``cancel`` (a scheduler command) is
        run with the folder's removal, if it is removed; the command still to run ("" once
        run). ``after_check``: the folder's removal is handed to the poller, to run once
        the check under way has settled every job (and at the latest when the process
        exits: ``Poller.run_after_check``), instead of before these futures are settled."""
        if job.pending_tasks():
            if not job.recorded_running and any(t.state is JobState.RUNNING for t in job.tasks):
                # Once: a write to the store at every check costs more than the check.
                job.recorded_running = True
                job.store.update(job.job_id, state="RUNNING")
            return cancel
        if job.recorded_final:
            return cancel
        job.recorded_final = True
        self.poller.forget(job)
        state, failed = final_state(job, settling)
        recorded = job.store.update(
            job.job_id, state=state, finished=time.time(), failed_items=failed
        )
        if (
            recorded
            and state == "COMPLETED"
            and job.cleanup_on_success
            # Jobs of a pipeline read this folder: it stays while they exist.
            and not job.store.dependents(job.job_id)
            and job.release_folder()
        ):
            # Queued elements are cancelled in the same round trip. In the background: should
            # one start meanwhile, it fails in the removed folder, long after its calls ran.
            removal = removal_command(job.folder, also=cancel)
            if after_check:
                self.poller.run_after_check([removal])
            else:
                self.transport.run(removal, check=False)
            job.store.update(job.job_id, message="result delivered; remote folder removed")
            return ""
        return cancel

    # ------------------------------------------------------------------ files and control

    def fetch(self, job: ClusterJob, names: list[str]) -> dict[str, bytes]:
        """Those of ``names`` that exist in the job folder, by name (one round trip)."""
        listed = " ".join(shlex.quote(name) for name in names)
        command = (
            f"cd {shlex.quote(job.folder)} && tar -c -f - --ignore-failed-read {listed} 2>/dev/null"
        )
        return untar(self.transport.run(command, check=False).stdout_bytes)

    def read_file(self, folder: str, name: str) -> str:
        """A file of a job folder as text, or "" if it does not exist (yet, or any more)."""
        path = shlex.quote(f"{folder}/{name}")
        return self.transport.run(f"cat {path} 2>/dev/null; true", check=False).stdout

    def read_bytes(self, folder: str, name: str) -> bytes | None:
        """A file of a job folder as it is (a checkpoint), None if it does not exist."""
        path = shlex.quote(f"{folder}/{name}")
        result = self.transport.run(f"test -f {path} && cat {path}", check=False)
        return result.stdout_bytes if result.exit_code == 0 else None

    def remove_folder(self, folder: str, also: str = "") -> None:
        """Delete a job folder and everything in it; ``also`` is a shell command started in
        the background first (its output and status ignored)."""
        self.transport.run(removal_command(folder, also), check=False)

    def read_log(self, job: ClusterJob, task: Task, stream: str) -> str:
        """A task's stdout or stderr: kept after it finished, read live while it runs."""
        kept = task.stdout if stream == "stdout" else task.stderr
        if kept is not None:
            return kept
        name = (
            layout.stdout_file(task.index) if stream == "stdout" else layout.stderr_file(task.index)
        )
        return self.read_file(job.folder, name)

    def cancel_tasks(self, job: ClusterJob, tasks: list[Task]) -> bool:
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
        # Their calls go too: a runner still at work (of this job, or of an earlier stage
        # of a pipeline) would otherwise take them on after the elements are gone.
        calls = (
            layout.calls_file("*")
            if all(t.done for t in job.tasks)
            else " ".join(layout.calls_file(t.index) for t in tasks)
        )
        forget = f"cd {shlex.quote(job.folder)} 2>/dev/null && rm -f {calls}"
        cancel = f"{self.scheduler.cancel_command(targets)}; " if targets else ""
        self.transport.run(f"{cancel}{forget}", check=False)
        logger.info("cancelled %s task(s) of job %s", len(tasks), job.job_id)
        self._finish_if_done(job)
        return True

    def fail_tasks(self, job: ClusterJob, tasks: list[Task], error: Exception) -> None:
        """Fail unfinished tasks with ``error`` and take them off the queue (their upstream
        failed: they could only fail)."""
        tasks = [task for task in tasks if not task.done]
        if not tasks:
            return
        elements = []
        for task in tasks:
            task.done = True
            if task.submission is not None:
                elements.append(task.submission.element_id(task.index, self.scheduler.array_base))
        job.any_failed = True
        if elements:
            self.transport.run(self.scheduler.cancel_command(sorted(set(elements))), check=False)
        settling = [(future, False, error) for task in tasks for future in task.futures]
        logger.info("job %s: %d task(s) failed with their upstream", job.job_id, len(tasks))
        self._finish_if_done(job, settling)
        for future, ok, value in settling:
            settle(future, ok, value)

    def cancel_job(self, job: ClusterJob) -> bool:
        return self.cancel_tasks(job, job.tasks)


def removal_command(folder: str, also: str = "") -> str:
    """The shell command deleting a job folder, after starting ``also`` in the background."""
    before = f"{{ {also}; }} </dev/null >/dev/null 2>&1 & " if also else ""
    return f"{before}rm -rf {shlex.quote(folder)}"


_backends: dict[tuple[Any, ...], ClusterBackend] = {}
_backends_lock = threading.Lock()


def cluster_backend(config: ClusterConfig) -> ClusterBackend:
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
            backend = ClusterBackend(make_transport(config), scheduler, config)
            _backends[key] = backend
        return backend
