"""A submitted job as the client tracks it: its tasks, their submissions and futures."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..futures import ClusterFuture
from ..schedulers import JobState, JobStatus


def new_job_id() -> str:
    """Unique across clients and parallel submissions; sorts by time for humans."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:12]


def index_ranges(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as inclusive ``(first, last)`` runs: [1,2,3,7] -> [(1,3),(7,7)]."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


@dataclass(frozen=True)
class Submission:
    """One accepted submission: a plain job for one task, or an array over a task range."""

    scheduler_id: str
    offset: int
    count: int
    is_array: bool

    def status_key(self, task: int, array_base: int) -> str:
        if not self.is_array:
            return self.scheduler_id
        return f"{self.scheduler_id}_{task - self.offset + array_base}"

    def element_id(self, task: int, array_base: int) -> str:
        """What to name to cancel just this task."""
        return self.status_key(task, array_base)


@dataclass
class Task:
    """One array task (or the only task of a single call) and the futures it settles."""

    index: int
    futures: list[ClusterFuture]
    submission: Submission | None = None
    state: JobState = JobState.PENDING
    done: bool = False
    attempts: int = 1
    missing_result_checks: int = 0
    stdout: str | None = None
    stderr: str | None = None
    #: The task whose runner took this task's calls (see runner.take_others), else None.
    taken_by: int | None = None
    #: Submissions of earlier attempts: a runner of one may still be running taken calls.
    earlier: list[Submission] = field(default_factory=list)
    #: The element of ``submission`` a cancel was sent for, so it is sent once.
    cancelled_element: str | None = None
    #: A requeued task was asked to start at once (``Outcomes._release_if_requeued``).
    release_sent: bool = False

    def submissions(self) -> list[Submission]:
        """Every submission that ran or runs this task, the current one first."""
        current = [self.submission] if self.submission is not None else []
        return current + self.earlier[::-1]


@dataclass(frozen=True)
class Findings:
    """What one status check found, for every job it covered.

    ``statuses`` are the scheduler's, by scheduler id and array element
    (``Scheduler.parse_status``); ``results`` maps ``(job id, task)`` to the task's result and
    log files by name (None: too large to bring inline, fetch them); ``taken`` maps ``(job id,
    task)`` to the task whose runner took its calls, for tasks without a result yet.
    """

    statuses: Mapping[str, JobStatus]
    results: Mapping[tuple[str, int], dict[str, bytes] | None]
    taken: Mapping[tuple[str, int], int] = field(default_factory=dict)


@dataclass
class ClusterJob:
    """A submitted job as the client tracks it until every task is settled."""

    job_id: str
    folder: str
    name: str
    func: Any
    tasks: list[Task]
    poll_interval: float
    #: Seconds status checks may fail in a row before the job's waiting calls fail.
    status_patience: float
    cleanup_on_success: bool
    echo_output: bool
    store: Any  # the JobStore recording this job
    retries: int = 0
    #: Exception types of the user's function that also trigger a resubmission.
    retry_on: tuple[type[BaseException], ...] = ()
    #: How the first submission was made, to resubmit tasks the same way (None if attached).
    context: Any = None
    resources: Any = None
    submitted: float = field(default_factory=time.monotonic)
    next_check: float = 0.0
    any_failed: bool = False
    recorded_final: bool = False  # the store holds the job's final state
    recorded_running: bool = False  # the store says RUNNING
    #: When status checks of this job started failing in a row (monotonic), else None.
    failing_since: float | None = None
    #: Clustrix ids of the jobs whose results this job's calls take (a pipeline).
    depends_on: list[str] = field(default_factory=list)
    #: A job that requeues itself (``@cluster(requeue=N)``): job.json's ``requeue``
    #: (``requeues.requeue_settings``), else None.
    requeue: dict[str, Any] | None = None
    #: Its tasks' runs as the runner recorded them, by task index as a string (the store's).
    attempts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Dependent jobs read this job's folder: it is kept (``keep_folder``).
    folder_kept: bool = False
    #: Dependents being prepared whose calls wait on this job's elements (``hold_elements``).
    dependents_preparing: int = 0
    folder_removed: bool = False
    _folder_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hold_elements(self, change: int) -> None:
        """Count dependents being submitted that will wait on this job's elements on the
        scheduler (+1 each, -1 once recorded in the store): until they are recorded, queued
        elements must not be cancelled (``ClusterBackend._free``)."""
        with self._folder_lock:
            self.dependents_preparing += change

    def keep_folder(self) -> bool:
        """Keep the folder for a job about to read it; False if it was removed already."""
        with self._folder_lock:
            if not self.folder_removed:
                self.folder_kept = True
            return not self.folder_removed

    def release_folder(self) -> bool:
        """Whether the folder may be removed now (nothing keeps it); if so, it counts as
        removed from here on, so that no dependent is handed a reference into it."""
        with self._folder_lock:
            if not self.folder_kept:
                self.folder_removed = True
            return self.folder_removed

    def set_environment(self, report: Any) -> None:
        """Tell every call's future which environment runs it (``future.environment``)."""
        for future in self.futures():
            future.environment = report

    def futures(self) -> list[ClusterFuture]:
        """Every call's future, in call order."""
        return [future for task in self.tasks for future in task.futures]

    def pending_tasks(self) -> list[Task]:
        return [task for task in self.tasks if not task.done]

    def counts(self) -> dict[str, int]:
        """Items done, failed, running and waiting, for progress displays."""
        counts = {"done": 0, "failed": 0, "running": 0, "pending": 0}
        for task in self.tasks:
            for future in task.futures:
                if future.done():
                    failed = future.cancelled() or future.exception() is not None
                    counts["failed" if failed else "done"] += 1
                elif task.state is JobState.RUNNING:
                    counts["running"] += 1
                else:
                    counts["pending"] += 1
        return counts
