"""Finding jobs again: ``clustrix.get_job(job_id)`` and ``clustrix.jobs()``.

A ``Job`` is a handle built from the job store's record. Any process can use it: it reconnects
to the job's cluster with the recorded settings (and the current configuration's secrets),
asks the scheduler how the job is doing, and fetches its results from the job folder.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cloudpickle

from . import layout
from .backend import JobBackend, job_backend_for
from .config import ClusterConfig, get_config
from .errors import ClustrixError, JobNotFoundError
from .futures import Attempt
from .progress import gather
from .store import FINAL_STATES, JobRecord, JobStore, submitter_gone

#: ``Job.attempts`` reads a running job's attempts from its folder up to this many tasks.
LIVE_ATTEMPT_TASKS = 20


class Job:
    """A job from the store; usable from any process, including after the submitter died."""

    def __init__(self, record: JobRecord, store: JobStore) -> None:
        self._record = record
        self._store = store
        self._live: Any = None  # the job as its backend tracks it, once attached

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.function} on {self.host}: {self.state}>"

    # ------------------------------------------------------------------ what is recorded

    @property
    def record(self) -> JobRecord:
        """The store's current row for this job."""
        self._record = self._store.get(self.job_id) or self._record
        return self._record

    job_id = property(lambda self: self._record.job_id, doc="Clustrix's id of the job.")
    function = property(lambda self: self._record.function, doc="The function's name.")
    host = property(lambda self: self._record.host, doc="Where the job runs (user@host:port).")
    remote_folder = property(
        lambda self: self._record.remote_folder, doc="The job folder on the cluster."
    )
    items = property(lambda self: self._record.items, doc="How many calls the job holds.")
    store = property(lambda self: self._store, doc="The job store holding the job's record.")
    state = property(
        lambda self: self.record.state,
        doc="The recorded state, as of the last check; ``status()`` asks the cluster.",
    )

    # ------------------------------------------------------------------ talking to the cluster

    def _config(self) -> ClusterConfig:
        return get_config().replace(**self._record.connection, job_store=str(self._store.path))

    def _backend(self) -> JobBackend:
        return job_backend_for(self._config())

    def _job(self) -> Any:
        if self._live is None:
            self._check_fetchable()
            self._live = self._backend().attach(self._record, self._config())
        return self._live

    def _adopt_if_abandoned(self) -> None:
        """A job left SUBMITTING by a process that died meanwhile: learn from its folder
        what the scheduler accepted (see ``ClusterBackend.adopt``)."""
        record = self.record
        if record.state == "SUBMITTING" and submitter_gone(record):
            self._backend().adopt(record, self._store)

    def _check_fetchable(self) -> None:
        self._adopt_if_abandoned()
        record = self.record
        if not record.submissions:
            raise ClustrixError(
                f"job {self.job_id} was never accepted by the scheduler (state {record.state}); "
                f"{record.message or 'the submitting process stopped while submitting it'}"
            )
        if record.state == "COMPLETED" and record.message.startswith("result delivered"):
            raise ClustrixError(
                f"job {self.job_id} completed and its results were delivered to the process "
                "that submitted it; its remote folder was then removed (cleanup_on_success)"
            )

    def futures(self) -> list[Future]:
        """One future per call, in call order."""
        return [future for task in self._job().tasks for future in task.futures]

    def status(self) -> str:
        """SUBMITTING, PENDING, RUNNING, COMPLETED, FAILED or CANCELLED, asked of the cluster."""
        self._adopt_if_abandoned()
        record = self.record
        if record.state in FINAL_STATES or not record.submissions:
            return record.state
        job = self._job()
        if job.pending_tasks():
            self._backend().refresh(job)
        return self.record.state

    def result(self, timeout: float | None = None) -> Any:
        """The value of a single call (or the list of values of a map), waiting if needed."""
        if self._record.items == 1:
            return self.futures()[0].result(timeout=timeout)
        return self.results(timeout=timeout)

    def results(
        self, *, return_exceptions: bool = False, timeout: float | None = None
    ) -> list[Any]:
        """Every call's value in call order (exceptions in place with ``return_exceptions``)."""
        futures = self.futures()
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in futures:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future.exception(timeout=remaining)
            except Exception:
                if future.cancelled():
                    continue
                raise
        return gather(
            futures, return_exceptions=return_exceptions, progress=False, description=self.function
        )

    def cancel(self) -> bool:
        """Cancel every unfinished task of the job; False if nothing was left to cancel."""
        if self.record.state in FINAL_STATES:
            return False
        job = self._job()
        return self._backend().cancel_job(job)

    def stdout(self, task: int = 0) -> str:
        """What array task ``task`` printed to stdout so far, read from the job folder."""
        return self._log(task, "stdout")

    def stderr(self, task: int = 0) -> str:
        """What array task ``task`` printed to stderr so far, read from the job folder."""
        return self._log(task, "stderr")

    def _log(self, task: int, stream: str) -> str:
        tasks = self._record.task_sizes
        if not 0 <= task < len(tasks):
            raise ClustrixError(f"job {self.job_id} has tasks 0 to {len(tasks) - 1}, not {task}")
        backend = self._backend()
        if self._live is not None:
            # Attached here: the logs were kept when the results came, which may have removed
            # the folder (cleanup_on_success).
            return backend.read_log(self._live, self._live.tasks[task], stream)
        name = layout.stdout_file(task) if stream == "stdout" else layout.stderr_file(task)
        return backend.read_file(self.remote_folder, name)

    def attempts(self) -> dict[int, list[Attempt]]:
        """Each task's runs, for a job that requeues itself (``@cluster(requeue=N)``):
        ``{task index: [Attempt, ...]}``, oldest first; empty for other jobs.

        Read from the job folder while the job is queued or running (one round trip per
        task, for jobs of at most ``LIVE_ATTEMPT_TASKS`` tasks), from the store once it
        ended.
        """
        record = self.record
        found = {int(task): runs for task, runs in record.attempts.items()}
        live = record.requeue and record.state not in FINAL_STATES
        if live and len(record.task_sizes) <= LIVE_ATTEMPT_TASKS:
            backend = self._backend()
            for task in range(len(record.task_sizes)):
                text = backend.read_file(self.remote_folder, layout.attempts_file(task))
                with contextlib.suppress(ValueError):
                    found[task] = json.loads(text) if text.strip() else found.get(task, [])
        return {
            task: [Attempt.from_record(run) for run in runs]
            for task, runs in sorted(found.items())
            if runs
        }

    def restore(self, item: int = 0, default: Any = None) -> Any:
        """The last state call ``item`` saved with ``clustrix.checkpoint``, read from the job
        folder, or ``default`` if it saved none (or the folder is gone).

        For a job whose requeues ran out, say, to look at how far it got or to start a new
        job from there. Raises ClustrixError for an item the job does not have, and what
        unpickling the state raises (a module missing in this environment).
        """
        sizes = self._record.task_sizes
        if not 0 <= item < sum(sizes):
            raise ClustrixError(
                f"restore: item={item} is not valid: job {self.job_id} has "
                + (f"items 0 to {sum(sizes) - 1}" if sum(sizes) else "no items")
            )
        task, position = 0, item
        while position >= sizes[task]:  # the task holding the item, and its place there
            position -= sizes[task]
            task += 1
        data = self._backend().read_bytes(
            self.remote_folder, layout.checkpoint_file(task, position)
        )
        return default if data is None else cloudpickle.loads(data)

    def remove(self) -> None:
        """Delete the job's remote folder and its store record."""
        self._backend().remove_folder(self.remote_folder)
        self._store.delete([self.job_id])


def _store(job_store: str | Path | None) -> JobStore:
    return JobStore(job_store or Path(get_config().job_store).expanduser())


def get_job(job_id: str, *, job_store: str | Path | None = None) -> Job:
    """The job with this id, or the only one whose id starts with it."""
    store = _store(job_store)
    record = store.get(job_id)
    if record is None:
        matches = store.find(job_id)
        if len(matches) > 1:
            raise JobNotFoundError(
                f"{job_id!r} matches {len(matches)} jobs; give more of the id "
                f"({', '.join(m.job_id for m in matches[:5])})"
            )
        if not matches:
            raise JobNotFoundError(f"no job {job_id!r} in the job store {store.path}")
        record = matches[0]
    return Job(record, store)


def jobs(
    *,
    states: Iterable[str] | None = None,
    older_than: float | None = None,
    limit: int | None = None,
    job_store: str | Path | None = None,
) -> list[Job]:
    """Jobs in the store, newest first, filtered by state and age (seconds) if given."""
    store = _store(job_store)
    return [
        Job(record, store)
        for record in store.list(states=states, older_than=older_than, limit=limit)
    ]
