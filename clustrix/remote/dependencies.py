"""Pipelines: calls that take, as arguments, the futures of other jobs' calls.

A ``ClusterFuture`` of a job on the same cluster (or a ``clustrix.Job`` handle of one), given
as an argument (top level, or inside a list, tuple or dict), is replaced in the pickled call
by a reference: a ``types.SimpleNamespace`` under ``runner.UPSTREAM_KEY`` naming the upstream
job's folder, the result file of the task that runs the call and the call's place in it. The
runner on the node reads the value from there: it never travels through the client. The new
job waits for its upstream on the scheduler (``ScriptContext.after`` / ``after_each``), or in
its script where there is no scheduler (``wait_for``); the client returns at once.

An upstream call that fails fails the calls taking its value with ``DependencyFailedError``:
the client cancels them as soon as it learns of the failure (``Pipeline.watch``), and the
runner fails them itself when they run anyway (Grid Engine's holds end however the upstream
ended; nobody may be watching). Upstream folders are kept while dependents exist: the job
store records each job's ``depends_on``, and ``cleanup_on_success`` spares jobs with
dependents (``ClusterJob.keep_folder``, ``JobStore.dependents``).

A stage asking for what its upstream asked (resources, environment, settings) is offered to
the upstream's runners (``Pipeline.followed``; the upstream folder's ``followers``), which go
on with its ready calls once done with their own (``runner.follow``).
"""

from __future__ import annotations

import shlex
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from .. import layout
from ..calls import CallArgs
from ..errors import ClustrixError, DependencyFailedError
from ..futures import ClusterFuture
from ..runner import UPSTREAM_KEY
from ..schedulers import Scheduler, ScriptContext
from ..store import FINAL_STATES, JobRecord
from .job import ClusterJob, Submission, Task

# How long to wait for the value of an upstream whose folder was just removed: its future is
# settled right after (the backend records the job's end before settling its futures).
_SETTLING_WAIT = 60.0


@dataclass(frozen=True)
class UpstreamCall:
    """One call of an upstream job that a downstream call takes the value of."""

    job_id: str
    folder: str
    task: int
    position: int
    item: int
    #: The scheduler id to wait for (an array element where the scheduler has them); None
    #: once the upstream has ended, when there is nothing left to wait for.
    target: str | None
    #: The scheduler id of the submission running the task (a session on a plain SSH host).
    submission: str | None
    future: ClusterFuture | None = None

    def reference(self) -> types.SimpleNamespace:
        """What the runner reads the value through (see ``runner.resolve_upstream``)."""
        return types.SimpleNamespace(
            **{
                UPSTREAM_KEY: {
                    "job_id": self.job_id,
                    "folder": self.folder,
                    "result": layout.result_file(self.task),
                    "position": self.position,
                    "item": self.item,
                }
            }
        )


@dataclass
class Pipeline:
    """The upstream calls of a submission's calls, and what its job must wait for."""

    #: The calls with references in place of futures.
    calls: list[CallArgs]
    #: Per call, the upstream calls it takes values from.
    upstream: list[list[UpstreamCall]]
    #: Per upstream job: its task sizes and its submissions (scheduler id, offset, count,
    #: is an array), for element-wise waiting.
    shapes: dict[str, tuple[list[int], list[tuple[str, int, int, bool]]]] = field(
        default_factory=dict
    )
    #: The upstream jobs held until this submission is recorded (``Held.recorded``).
    held: Held = field(default_factory=lambda: Held())
    #: The upstream jobs this process tracks, by id (not those known by their record only).
    jobs: dict[str, ClusterJob] = field(default_factory=dict)

    @property
    def job_ids(self) -> list[str]:
        return sorted({call.job_id for calls in self.upstream for call in calls})

    def _single_upstream(self) -> str | None:
        """The upstream job whose call i is the only upstream value of call i, if any."""
        ids = self.job_ids
        if len(ids) != 1 or ids[0] not in self.shapes:
            return None
        sizes, _ = self.shapes[ids[0]]
        if len(self.calls) != sum(sizes):
            return None
        for index, calls in enumerate(self.upstream):
            if len(calls) != 1 or calls[0].item != index or calls[0].target is None:
                return None
        return ids[0]

    def needs(self, per_task: int) -> dict[str, list[str]]:
        """Per task (its index as a string, for job.json), the upstream result files its
        calls read: another task's runner may take its calls once they all exist."""
        needed: dict[str, list[str]] = {}
        for start in range(0, len(self.upstream), per_task):
            files = {
                f"{call.folder}/{layout.result_file(call.task)}"
                for calls in self.upstream[start : start + per_task]
                for call in calls
            }
            needed[str(start // per_task)] = sorted(files)
        return needed

    def per_task(self, chunksize: int | None) -> int | None:
        """Calls per task keeping task i on upstream task i (None: no such alignment, or
        ``chunksize`` asks otherwise)."""
        upstream = self._single_upstream()
        if upstream is None:
            return None
        sizes, _ = self.shapes[upstream]
        per_task = sizes[0]
        if any(size != per_task for size in sizes[:-1]) or chunksize not in (None, per_task):
            return None
        return per_task

    def wire(
        self, parts: list[ScriptContext], per_task: int, scheduler: Scheduler
    ) -> list[ScriptContext]:
        """``parts`` made to wait for the upstream calls of the tasks each one runs."""
        aligned = self._aligned_parts(parts, per_task)
        wired = []
        for n, part in enumerate(parts):
            first, count = (part.array.offset, part.array.count) if part.array else (part.task, 1)
            calls = [
                call
                for index in range(
                    first * per_task, min((first + count) * per_task, len(self.calls))
                )
                for call in self.upstream[index]
                if call.target is not None
            ]
            if aligned is not None:
                wired.append(replace(part, after_each=aligned[n]))
                continue
            after = tuple(sorted({call.target for call in calls if call.target}))
            waits: tuple[tuple[str, str], ...] = ()
            if scheduler.waits_in_script:
                sessions = {(call.folder, call.submission) for call in calls if call.submission}
                waits = tuple(
                    sorted(
                        (f"{folder}/{layout.exit_code_file(session)}", session)
                        for folder, session in sessions
                    )
                )
            wired.append(replace(part, after=after, wait_for=waits))
        return wired

    def _aligned_parts(self, parts: list[ScriptContext], per_task: int) -> list[str] | None:
        """The upstream array of each part, where every part is an array running the same
        tasks as one upstream array (element i waits for element i); else None."""
        upstream = self._single_upstream()
        if upstream is None:
            return None
        sizes, submissions = self.shapes[upstream]
        if per_task != sizes[0] or len(submissions) != len(parts):
            return None
        ids = []
        for part, (scheduler_id, offset, count, is_array) in zip(parts, submissions, strict=True):
            if part.array is None or not is_array:
                return None
            if (part.array.offset, part.array.count) != (offset, count):
                return None
            ids.append(scheduler_id)
        return ids

    def followed(self, job: ClusterJob) -> list[str]:
        """The folders of the upstream jobs whose runners may go on with ``job``'s calls
        (``runner.follow``): those still running, with the same resources per task, the
        same environment and settings (their scripts differ only in name, folder and what
        they wait for), neither requeueing itself."""
        return [
            upstream.folder
            for upstream in self.jobs.values()
            if not upstream.recorded_final and _same_place(upstream, job)
        ]

    def watch(
        self,
        job: ClusterJob,
        per_task: int,
        fail: Callable[[ClusterJob, list[Task], Exception], None],
    ) -> None:
        """Fail (and cancel) the tasks of ``job`` whose upstream call fails, once it does."""
        users: dict[int, tuple[UpstreamCall, set[int]]] = {}
        for index, calls in enumerate(self.upstream):
            for call in calls:
                if call.future is not None and call.target is not None:
                    entry = users.setdefault(id(call.future), (call, set()))
                    entry[1].add(index // per_task)
        for call, task_indices in users.values():
            tasks = [job.tasks[i] for i in sorted(task_indices)]

            def failed(
                future: Future, call: UpstreamCall = call, tasks: list[Task] = tasks
            ) -> None:
                error = upstream_error(future, call, job.job_id)
                if error is not None:
                    fail(job, tasks, error)

            assert call.future is not None
            call.future.add_done_callback(failed)


def _same_place(upstream: ClusterJob, job: ClusterJob) -> bool:
    """Whether ``job``'s calls would run alike in ``upstream``'s processes."""
    if upstream.requeue or job.requeue or upstream.resources != job.resources:
        return False
    if upstream.context is None or job.context is None:
        return False
    own = {"job_name": "", "job_dir": "", "array": None, "task": 0}
    waits = {"after": (), "after_each": None, "wait_for": ()}
    return replace(upstream.context, **own, **waits) == replace(job.context, **own, **waits)


def upstream_error(
    future: Future, call: UpstreamCall, job_id: str | None = None
) -> DependencyFailedError | None:
    """The error of the calls taking ``call``'s value, if its (finished) future failed;
    ``job_id``: the job of those calls, once it exists."""
    if future.cancelled():
        cause = "was cancelled"
    elif future.exception() is not None:
        exc = future.exception()
        cause = f"failed: {type(exc).__name__}: {exc}"
    else:
        return None
    return DependencyFailedError(
        f"upstream job {call.job_id} (item {call.item}) {cause}",
        upstream_job_id=call.job_id,
        item=call.item,
        upstream_error=cause,
        job_id=job_id,
        state="FAILED",
    )


def find_upstream(calls: Sequence[CallArgs], backend: str, scheduler: Scheduler) -> Pipeline | None:
    """The calls' upstream calls, with references in their place (and finished futures
    that no job of this cluster stands behind, a cache hit say, replaced by their values);
    None if there are none of either.

    ``backend`` names this cluster as its futures do (``slurm:user@host:22``). Raises
    ClustrixError for a future of another backend, and DependencyFailedError for an
    upstream call that has failed already.
    """
    finder = _Finder(backend, scheduler)
    new_calls: list[CallArgs] = []
    upstream: list[list[UpstreamCall]] = []
    valued = False
    try:
        for args, kwargs in calls:
            finder.found, finder.valued = [], False
            new_args = tuple(finder.replace(value) for value in args)
            new_kwargs = {name: finder.replace(value) for name, value in kwargs.items()}
            changed = finder.found or finder.valued
            new_calls.append((new_args, new_kwargs) if changed else (args, kwargs))
            upstream.append(finder.found)
            valued |= finder.valued
    except BaseException:
        finder.pipeline_held.recorded()
        raise
    if not any(upstream) and not valued:
        return None
    return Pipeline(new_calls, upstream, finder.shapes, finder.pipeline_held, finder.jobs)


@dataclass
class Held:
    """Upstream jobs whose elements a submission being prepared will wait on (each once per
    call waiting), released with ``recorded`` once it is in the job store (or failed)."""

    jobs: list[ClusterJob] = field(default_factory=list)

    def add(self, job: ClusterJob) -> None:
        job.hold_elements(+1)
        self.jobs.append(job)

    def recorded(self) -> None:
        """The submission is in the store, or will never be: release every hold, once."""
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job.hold_elements(-1)


class _Finder:
    """Replaces futures and job handles by references, collecting what they stand for."""

    def __init__(self, backend: str, scheduler: Scheduler) -> None:
        self.backend = backend
        self.scheduler = scheduler
        self.found: list[UpstreamCall] = []
        self.shapes: dict[str, tuple[list[int], list[tuple[str, int, int, bool]]]] = {}
        self.pipeline_held = Held()
        self.jobs: dict[str, ClusterJob] = {}
        #: Whether a finished future was replaced by its value (``_elsewhere``).
        self.valued = False

    def replace(self, value: Any) -> Any:
        if isinstance(value, Future):
            return self._future(value)
        if isinstance(getattr(value, "record", None), JobRecord) and hasattr(value, "futures"):
            return self._handle(value.record)
        kind = type(value)
        if kind is list or kind is tuple:
            items = [self.replace(item) for item in value]
            changed = any(new is not old for new, old in zip(items, value, strict=True))
            return (items if kind is list else tuple(items)) if changed else value
        if kind is dict:
            entries = {key: self.replace(item) for key, item in value.items()}
            changed = any(entries[key] is not item for key, item in value.items())
            return entries if changed else value
        return value

    def _future(self, future: Future) -> Any:
        job = getattr(future, "job", None)
        if not isinstance(future, ClusterFuture) or not isinstance(job, ClusterJob):
            return self._elsewhere(
                future,
                f"{future!r} is not the future of a cluster job, so a job cannot wait for it: "
                "pass future.result() instead",
            )
        if future.backend != self.backend:
            return self._elsewhere(
                future,
                f"{future!r} runs on {future.backend}, not on {self.backend}: a job can only "
                "wait for jobs of its own cluster; pass future.result() instead",
            )
        assert future.task_index is not None
        if not job.keep_folder():
            # Delivered, and its folder removed: the value is here, and travels as a value.
            return future.result(timeout=_SETTLING_WAIT)
        task = job.tasks[future.task_index]
        item = sum(len(t.futures) for t in job.tasks[: task.index]) + future.position
        call = UpstreamCall(
            job.job_id,
            job.folder,
            task.index,
            future.position,
            item,
            None if future.done() else self._target(task.submission, task.index),
            task.submission.scheduler_id if task.submission else None,
            future,
        )
        if future.done():
            error = upstream_error(future, call)
            if error is not None:
                raise error
        else:
            self.pipeline_held.add(job)
            self.jobs[job.job_id] = job
        self._shape(job.job_id, [len(t.futures) for t in job.tasks], _job_submissions(job))
        self.found.append(call)
        return call.reference()

    def _elsewhere(self, future: Future, refusal: str) -> Any:
        """The value of a future this cluster cannot wait for (a cache hit, a call of
        another backend), once it has one. Raises DependencyFailedError if it failed or was
        cancelled, and ClustrixError (``refusal``) while it runs."""
        if not future.done():
            raise ClustrixError(refusal)
        if future.cancelled():
            raise DependencyFailedError(f"upstream call {future!r} was cancelled")
        error = future.exception()
        if error is not None:
            cause = f"failed: {type(error).__name__}: {error}"
            raise DependencyFailedError(f"upstream call {future!r} {cause}", upstream_error=cause)
        self.valued = True
        return future.result()

    def _handle(self, record: JobRecord) -> Any:
        """A ``clustrix.Job`` stands for what its ``result()`` gives: one value, or a list."""
        if f"{record.cluster_type}:{record.host}" != self.backend:
            raise ClustrixError(
                f"job {record.job_id} ran on {record.cluster_type}:{record.host}, not on "
                f"{self.backend}: a job can only wait for jobs of its own cluster"
            )
        if record.state == "COMPLETED" and record.message.startswith("result delivered"):
            raise ClustrixError(
                f"job {record.job_id}'s folder was removed when its results were delivered "
                "(cleanup_on_success): pass its results instead"
            )
        if record.state == "CANCELLED":
            raise DependencyFailedError(
                f"upstream job {record.job_id} was cancelled", upstream_job_id=record.job_id
            )
        by_task = {}
        for submission in record.submissions:
            first, count = submission["offset"], submission["count"]
            for task in range(first, first + count):
                by_task[task] = submission
        references, item = [], 0
        for task, size in enumerate(record.task_sizes):
            submission = by_task.get(task)
            for position in range(size):
                target = None
                if submission is not None and record.state not in FINAL_STATES:
                    target = self._target(Submission(**submission), task)
                call = UpstreamCall(
                    record.job_id,
                    record.remote_folder,
                    task,
                    position,
                    item,
                    target,
                    submission["scheduler_id"] if submission else None,
                )
                self.found.append(call)
                references.append(call.reference())
                item += 1
        return references[0] if record.items == 1 else references

    def _target(self, submission: Any, task: int) -> str | None:
        if submission is None:
            return None
        if self.scheduler.element_dependencies and submission.is_array:
            return submission.element_id(task, self.scheduler.array_base)
        return submission.scheduler_id

    def _shape(self, job_id: str, sizes: list[int], submissions: list[Any]) -> None:
        self.shapes.setdefault(job_id, (sizes, submissions))


def _job_submissions(job: ClusterJob) -> list[tuple[str, int, int, bool]]:
    """A tracked job's submissions in task order (a retried task's makes it irregular)."""
    seen: dict[str, tuple[str, int, int, bool]] = {}
    for task in job.tasks:
        sub = task.submission
        if sub is not None and sub.scheduler_id not in seen:
            seen[sub.scheduler_id] = (sub.scheduler_id, sub.offset, sub.count, sub.is_array)
    return list(seen.values())


def freeing_command(job: ClusterJob, dependents: list[str], scheduler: Scheduler) -> str | None:
    """The command that stops ``dependents`` (job ids) from waiting on ``job`` on the
    scheduler ("" when none has a scheduler id to clear), or None while they must wait.

    Once every call of ``job`` succeeded and every job a dependent waits on completed, the
    dependent's dependency is no longer needed (its calls read the results from the
    folders), so it may be cleared (``Scheduler.dependency_clear``): ``job``'s queued
    elements, whose calls another element ran, can then be cancelled instead of being
    started and ended one by one before the next stage may start. Not while a dependent is
    still being submitted (``ClusterJob.dependents_preparing``).
    """
    template = scheduler.dependency_clear
    if not template or job.any_failed or not job.recorded_final or job.dependents_preparing:
        return None
    ids: list[str] = []
    for dependent in dependents:
        record = job.store.get(dependent)
        if record is None or not record.submissions:
            return None  # still being submitted: its dependency is not there to clear
        upstream = [job.store.get(job_id) for job_id in record.depends_on]
        if any(u is None or u.state != "COMPLETED" for u in upstream):
            return None
        ids += record.scheduler_ids
    quoted = " ".join(shlex.quote(scheduler_id) for scheduler_id in ids)
    return template.format(ids=quoted) if ids else ""
