"""From what a status check found to what each call's future gets: values, errors, retries.

Given what one check found (the scheduler's states, the result files, the tasks whose calls
another task's runner took), ``Outcomes.decide`` returns a ``Decision``: the futures to settle
(and with what), the tasks to run again and the queued array elements no longer needed.
It changes no future and submits nothing itself; the backend applies the decision, after
recording in the job store how the job ended.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

from .. import layout
from ..errors import (
    ClustrixError,
    DependencyFailedError,
    JobCancelledError,
    JobFailedError,
    JobOutOfMemoryError,
    JobTimeoutError,
    NodeFailureError,
    ResultsCollectedElsewhereError,
    tail_lines,
)
from ..futures import ClusterFuture, add_note
from ..payload import batch_outcomes
from ..schedulers import JobState, JobStatus, Scheduler
from ..store import FINAL_STATES
from . import requeues
from .job import ClusterJob, Findings, Submission, Task

#: A future and what to settle it with: (future, True, value) or (future, False, exception).
Settlement = tuple[ClusterFuture, bool, Any]
#: ``fetch(job, names)``: those files of the job folder that exist, by name.
Fetch = Callable[[ClusterJob, list[str]], dict[str, bytes]]

# A task that ended without a result is looked at this many more times before it fails: a
# result written at the very end may take a moment to appear on a shared file system.
MISSING_RESULT_CHECKS = 3
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
_CANCELLATIONS = (CancelledError, JobCancelledError)


@dataclass
class Decision:
    """What one status check means for a job: futures to settle, tasks to run again, and
    queued array elements to cancel (by ``Submission.element_id``) because another task's
    runner took or ran their calls."""

    settle: list[Settlement] = field(default_factory=list)
    retry: list[Task] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    #: Elements that requeued themselves and wait to start again (``RequeueSupport.release``).
    release: list[str] = field(default_factory=list)


class Outcomes:
    """Reads the outcomes of one cluster's tasks (its scheduler, reached at ``where``)."""

    def __init__(self, scheduler: Scheduler, where: str, fetch: Fetch) -> None:
        self.scheduler = scheduler
        self.where = where
        self.fetch = fetch

    def decide(self, job: ClusterJob, found: Findings) -> Decision:
        """The decision for every pending task of ``job``; marks settled tasks done."""
        decision = Decision()
        for task in job.pending_tasks():
            if all(future.done() for future in task.futures):
                task.done = True  # cancelled by the user meanwhile
                continue
            key = (job.job_id, task.index)
            own = self._status(task, found.statuses)
            if key in found.results:
                files = found.results[key]
                if files is None:  # too large to inline: fetch it on its own
                    names = [
                        layout.result_file(task.index),
                        *layout.logs(task.index),
                        layout.attempts_file(task.index),
                    ]
                    files = self.fetch(job, names)
                # Still queued, so another task's runner ran these calls: the element would
                # only start to find them gone. (Cancelled before a retry, too.)
                self._cancel_if_queued(task, own, decision)
                outcome = self.collect(job, task, files)
                if outcome is None:
                    decision.retry.append(task)
                else:
                    decision.settle += outcome
                continue
            taker = found.taken.get(key)
            if taker is not None and taker != task.index:
                self._taken(job, task, taker, own, found.statuses, decision)
                continue
            self._without_result(job, task, own, decision)
        return decision

    def _status(self, task: Task, statuses: Mapping[str, JobStatus]) -> JobStatus:
        assert task.submission is not None
        return _status_of(task.submission, task.index, statuses, self.scheduler.array_base)

    def _cancel_if_queued(self, task: Task, own: JobStatus, decision: Decision) -> None:
        if own.state is not JobState.PENDING or task.submission is None:
            return
        element = task.submission.element_id(task.index, self.scheduler.array_base)
        if task.cancelled_element != element:  # once: a scheduler may ignore it (PBS wrappers)
            task.cancelled_element = element
            decision.cancel.append(element)

    def _taken(
        self,
        job: ClusterJob,
        task: Task,
        taker: int,
        own: JobStatus,
        statuses: Mapping[str, JobStatus],
        decision: Decision,
    ) -> None:
        """A task whose calls the runner of task ``taker`` took and has not written the
        result of yet: pending while that runner lives; lost once it ended (retried with
        ``retries``, else failed naming both tasks)."""
        if task.taken_by != taker:
            task.taken_by, task.missing_result_checks = taker, 0
        self._cancel_if_queued(task, own, decision)
        runner = job.tasks[taker] if 0 <= taker < len(job.tasks) else None
        states = [
            _status_of(submission, taker, statuses, self.scheduler.array_base)
            for submission in (runner.submissions() if runner is not None else [])
        ]
        if any(not (s.state.finished or s.state is JobState.UNKNOWN) for s in states):
            task.state = JobState.RUNNING
            task.missing_result_checks = 0
            return
        # Its runner ended: its result may take a moment to appear on a shared file system.
        task.missing_result_checks += 1
        if task.missing_result_checks <= MISSING_RESULT_CHECKS:
            return
        if task.attempts <= job.retries:
            decision.retry.append(task)
        else:
            status = states[0] if states else JobStatus(JobState.UNKNOWN)
            decision.settle += self.fail(job, task, status, taker=runner)

    def _without_result(
        self, job: ClusterJob, task: Task, status: JobStatus, decision: Decision
    ) -> None:
        if job.requeue and status.state is JobState.PENDING:
            self._release_if_requeued(job, task, status, decision)
        else:
            task.release_sent = False
        task.state = status.state
        if not (status.state.finished or status.state is JobState.UNKNOWN):
            # Alive: a moment without a result or state (a requeue) is forgotten.
            task.missing_result_checks = 0
            return
        # Ended (or forgotten by the queue) without a result: look a few more times (the
        # status checks ask the scheduler for details meanwhile) before giving up on it.
        task.missing_result_checks += 1
        if task.missing_result_checks <= MISSING_RESULT_CHECKS:
            return
        if status.state in _RETRIED_STATES and task.attempts <= job.retries:
            decision.retry.append(task)
        else:
            decision.settle += self.fail(job, task, status)

    def _release_if_requeued(
        self, job: ClusterJob, task: Task, status: JobStatus, decision: Decision
    ) -> None:
        """A job that requeued itself may be held back a while (SLURM: reason BeginTime,
        about 120 s): ask for it to start at once, once per requeue. A start time the user
        asked for (the ``begin`` option) is left alone."""
        asked = job.context is not None and (job.context.options or {}).get("begin")
        if task.release_sent or asked or status.reason != "BeginTime" or task.submission is None:
            return
        task.release_sent = True
        decision.release.append(task.submission.element_id(task.index, self.scheduler.array_base))

    def collect(
        self, job: ClusterJob, task: Task, files: Mapping[str, bytes]
    ) -> list[Settlement] | None:
        """The outcomes of a task whose result arrived; None to run it again (retry_on)."""
        remember_logs(job, task, files)
        where = f"{self.scheduler.name} job {_scheduler_id(task)}"
        try:
            outcomes = batch_outcomes(
                files[layout.result_file(task.index)], where=where, func=job.func
            )
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
            return None  # asked for: run the task again (all its calls; they are one process)
        task.done = True
        for future, (ok, value) in zip(task.futures, outcomes, strict=True):
            future.attempts = task.attempts
            job.any_failed |= not ok
            if not ok and isinstance(value, DependencyFailedError) and value.job_id is None:
                value.job_id = job.job_id  # the runner knows its upstream, not its own job
            if not ok and isinstance(value, MemoryError):
                add_note(value, memory_hint(job, where))
        if job.requeue:  # after: its runs count as attempts too
            requeues.remember_attempts(job, task, files)
        return [(f, ok, value) for f, (ok, value) in zip(task.futures, outcomes, strict=True)]

    def fail(
        self, job: ClusterJob, task: Task, status: JobStatus, taker: Task | None = None
    ) -> list[Settlement]:
        """The failures of a task that ended without a result; ``status`` is that of the
        runner that took its calls when ``taker`` (that runner's task) is given."""
        task.done = True
        job.any_failed = True
        for future in task.futures:
            future.attempts = task.attempts
        # A taker's status is its own: its end says nothing of this task's upstream.
        elsewhere = delivered_elsewhere(job) or (
            upstream_lost(job, status) if taker is None else None
        )
        if elsewhere is not None:
            return [(future, False, elsewhere) for future in task.futures]
        extra = requeues.files_to_fetch(task) if job.requeue else []
        files = self.fetch(job, [*layout.logs(task.index), layout.SCHEDULER_LOG, *extra])
        remember_logs(job, task, files)
        scheduler_log = files.get(layout.SCHEDULER_LOG, b"").decode(errors="replace")
        state = status.state
        reason = f" ({status.reason})" if status.reason and status.reason != state.value else ""
        where = f"task {task.index} of " if len(job.tasks) > 1 else ""
        stderr = "\n".join(filter(None, [task.stderr or "", scheduler_log]))
        what = f"{_EXPLANATIONS.get(state, 'failed')}{reason}"
        if taker is not None:
            what = (
                f"had its calls taken by task {taker.index} ({self._element(taker)}), which "
                f"ended without writing their result: that task {what}"
            )
        what += requeues.exhausted_words(job, task, files)
        error = _FAILURES.get(state, JobFailedError)(
            f"{where}{self.scheduler.name} job {_scheduler_id(task)} running {job.name!r} "
            f"{what}; its files are kept in {job.folder} on {self.where}",
            job_id=job.job_id,
            state=state.value,
            exit_code=status.exit_code,
            host=self.where,
            stdout_tail=tail_lines(task.stdout or "", 20),
            stderr_tail=tail_lines(stderr, 20),
        )
        return [(future, False, error) for future in task.futures]

    def _element(self, task: Task) -> str:
        """How the scheduler names ``task``'s current job or array element."""
        if task.submission is None:
            return f"{self.scheduler.name} job ?"
        element = task.submission.element_id(task.index, self.scheduler.array_base)
        return f"{self.scheduler.name} job {element}"


def _scheduler_id(task: Task) -> str:
    return task.submission.scheduler_id if task.submission else "?"


def _status_of(
    submission: Submission, task: int, statuses: Mapping[str, JobStatus], array_base: int
) -> JobStatus:
    """The state of ``task`` in ``submission``: its array element's, else the job's."""
    return statuses.get(
        submission.status_key(task, array_base),
        statuses.get(submission.scheduler_id, JobStatus(JobState.UNKNOWN)),
    )


def delivered_elsewhere(job: ClusterJob) -> ClustrixError | None:
    """The error for a missing result that another process collected, if one did.

    Two processes may wait for the same job (the submitter and a ``get_job`` handle); the
    first to collect every result removes the folder (cleanup_on_success), and the job store
    says so. The other must not report the job as having failed.
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


def upstream_lost(job: ClusterJob, status: JobStatus) -> DependencyFailedError | None:
    """The error of a pipeline's task removed from the queue because its upstream can no
    longer end well (SLURM's --kill-on-invalid-dep), if that is what happened."""
    if not job.depends_on or status.state not in (JobState.CANCELLED, JobState.UNKNOWN):
        return None
    records = [job.store.get(job_id) for job_id in job.depends_on]
    failed = [r for r in records if r is not None and r.state in ("FAILED", "CANCELLED")]
    if not failed and "depend" not in status.reason.lower():
        return None  # cancelled for its own sake
    upstream = failed[0].job_id if failed else ", ".join(job.depends_on)
    cause = (
        f"ended {failed[0].state}: {failed[0].message or 'see clustrix job ' + upstream}"
        if failed
        else "can no longer end well"
    )
    return DependencyFailedError(
        f"job {job.job_id} left the queue without running because upstream job {upstream} {cause}",
        upstream_job_id=upstream,
        upstream_error=cause,
        job_id=job.job_id,
        state=status.state.value,
    )


def memory_hint(job: ClusterJob, where: str) -> str:
    """What to do about a MemoryError raised in a job: on a cluster it is most often the
    job's own memory limit (SGE's h_vmem, a ulimit), not the node's memory."""
    memory = job.resources.memory_mb if job.resources is not None else None
    limit = f"its limit was {memory} MB; " if memory else ""
    return (
        f"(the call ran out of memory in {where}: {limit}the scheduler may enforce the "
        "job's memory request as a hard limit; ask for more with memory=, e.g. "
        '@cluster(memory="8GB"))'
    )


def final_state(job: ClusterJob, settling: Sequence[Settlement]) -> tuple[str, int]:
    """How a job with no pending task ended, and how many of its calls failed.

    Cancelled (by the user, or by the scheduler's scancel/qdel) is cancelled, unless some
    call failed for another reason.
    """
    errors = [None if ok else value for _, ok, value in settling]
    errors += [
        CancelledError() if future.cancelled() else future.exception()
        for future in job.futures()
        if future.done()
    ]
    failed = sum(error is not None for error in errors)
    cancelled = sum(isinstance(error, _CANCELLATIONS) for error in errors)
    state = "FAILED" if failed > cancelled else "CANCELLED" if cancelled else "COMPLETED"
    return state, failed


def remember_logs(job: ClusterJob, task: Task, files: Mapping[str, bytes]) -> None:
    """Keep a task's logs (the folder may be removed), echoing them if asked."""
    stdout_name, stderr_name = layout.logs(task.index)
    task.stdout = files.get(stdout_name, b"").decode(errors="replace")
    task.stderr = files.get(stderr_name, b"").decode(errors="replace")
    if job.echo_output:
        prefix = f"[{job.name} {job.job_id}:{task.index}]"
        for text, stream in ((task.stdout, sys.stdout), (task.stderr, sys.stderr)):
            for line in text.splitlines():
                print(f"{prefix} {line}", file=stream)
