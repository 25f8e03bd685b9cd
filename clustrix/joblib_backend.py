"""The ``"clustrix"`` joblib backend: ``joblib.Parallel`` work through Clustrix.

::

    import joblib
    import clustrix  # registers the backend once joblib is imported

    with joblib.parallel_backend("clustrix", cores=1, memory="2GB", time="00:30:00"):
        search = GridSearchCV(model, grid, n_jobs=-1).fit(X, y)

joblib cuts the calls of a ``Parallel`` run into batches; each batch becomes one Clustrix call,
run wherever the configuration says: local worker processes by default, or a job on SLURM,
SGE, PBS or an SSH host. Keyword arguments of ``parallel_backend`` other than ``n_jobs`` are
those of ``@cluster`` (``cores``, ``memory``, ``time``, ``partition``, ``environment``,
``retries``, scheduler options...) plus ``batch_size``, and apply to every batch.

This module imports joblib; ``import clustrix`` does not (see ``clustrix._joblib_hook``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any

from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.parallel import BatchedCalls, register_parallel_backend

from .config import ClusterConfig
from .decorator import ClusterFunction
from .errors import ConfigError
from .futures import mark_cancelled
from .jobs import RemoteJob, Task
from .local import available_cores, in_worker
from .remote import backend_for

__all__ = ["NAME", "ClustrixBackend", "register"]

NAME = "clustrix"

logger = logging.getLogger("clustrix.joblib")


def register(make_default: bool = False) -> None:
    """Make ``joblib.parallel_backend("clustrix", ...)`` (and ``backend="clustrix"``) work."""
    register_parallel_backend(NAME, ClustrixBackend, make_default=make_default)


class _Batch:
    """One joblib batch: the future joblib holds, and the Clustrix call behind it."""

    __slots__ = ("call", "future", "inner", "job", "task")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.future: Future = Future()
        self.inner: Future | None = None
        self.job: RemoteJob | None = None
        self.task: Task | None = None


class ClustrixBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs each joblib batch as one Clustrix call, many of them at once.

    ``n_jobs`` is how many batches may be running: ``-1`` means the local cores (local
    backend) or ``max_parallel_jobs`` (cluster backends). ``batch_size`` is ``"auto"``
    (joblib's adaptive batching, aiming at batches of 0.2-2 s locally and 10-100 s on a
    cluster, where a job costs seconds before it starts) or a fixed number of calls per
    batch, used when ``Parallel`` itself asks for ``batch_size="auto"``.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_sharedmem = False
    uses_threads = False

    LOCAL_BATCH_SECONDS = (AutoBatchingMixin.MIN_IDEAL_BATCH_DURATION, 2.0)
    CLUSTER_BATCH_SECONDS = (10.0, 100.0)

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        batch_size: int | str = "auto",
        **cluster_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if batch_size != "auto" and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ConfigError(
                f"batch_size={batch_size!r} is not valid: expected 'auto' or an integer >= 1",
                field="batch_size",
                value=batch_size,
            )
        self.batch_size = batch_size
        self.cluster_options = dict(cluster_options)
        # Loop parallelisation of joblib's own batch runner would only add analysis time.
        options = {"parallel": False, "job_name": "clustrix-joblib", **cluster_options}
        # One function for every batch: the remote side needs joblib, never Clustrix.
        self._function = ClusterFunction(BatchedCalls.__call__, **options)
        self._config: ClusterConfig | None = None
        self._lock = threading.RLock()
        self._outstanding: dict[Future, _Batch] = {}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.cluster_options.items())
        return f"ClustrixBackend({options})"

    # ------------------------------------------------------------------ sizing

    def _current_config(self) -> ClusterConfig:
        return self._config or self._function.effective_config()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if in_worker():
            return 1  # inside a Clustrix call, nested calls run inline
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            config = self._current_config()
            capacity = config.max_parallel_jobs
            if config.cluster_type == "local":
                capacity = min(available_cores(), capacity)
            return max(capacity + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **_ignored: Any,  # memmapping options of the process backends
    ) -> int:
        if in_worker():
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._config = self._function.effective_config()
        remote = self._config.cluster_type != "local"
        seconds = self.CLUSTER_BATCH_SECONDS if remote else self.LOCAL_BATCH_SECONDS
        self.MIN_IDEAL_BATCH_DURATION, self.MAX_IDEAL_BATCH_DURATION = seconds
        return self.effective_n_jobs(n_jobs)

    def compute_batch_size(self) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        return super().compute_batch_size()

    def terminate(self) -> None:
        self.reset_batch_stats()
        self._config = None

    # ------------------------------------------------------------------ running batches

    def submit(self, func: Any, callback: Any = None) -> Future:
        """Queue one batch; the returned future completes when its Clustrix call does."""
        batch = _Batch(func)
        with self._lock:
            self._outstanding[batch.future] = batch
        batch.future.add_done_callback(self._forget)
        if callback is not None:
            batch.future.add_done_callback(callback)
        _submitter.put(self, batch)
        return batch.future

    # joblib before 1.5 calls apply_async.
    apply_async = submit

    def retrieve_result_callback(self, out: Future) -> Any:
        return out.result()

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._outstanding.pop(future, None)

    def _start(self, batches: list[_Batch]) -> None:
        """Submit queued batches (in the submitting thread): on a cluster as one job array."""
        live = [batch for batch in batches if not batch.future.done()]
        if not live:
            return
        try:
            config = self._current_config()
            if config.cluster_type == "local":
                for batch in live:
                    self._attach(batch, self._function.submit(batch.call))
                return
            calls = [((batch.call,), {}) for batch in live]
            job = self._function._submit_remote(config, calls, chunksize=1)
            for batch, task in zip(live, job.tasks, strict=True):
                self._attach(batch, task.futures[0], job, task)
        except BaseException as exc:
            for batch in live:
                if batch.inner is None:
                    _settle(batch.future, exc)

    def _attach(
        self, batch: _Batch, inner: Future, job: RemoteJob | None = None, task: Task | None = None
    ) -> None:
        with self._lock:
            batch.inner, batch.job, batch.task = inner, job, task
            aborted = batch.future.cancelled()
        if aborted:
            inner.cancel()
            return
        inner.add_done_callback(lambda done: _transfer(done, batch.future))

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch not finished: queued ones never start, jobs are cancelled.

        Local batches already running in a worker process finish in the background (the
        shared workers are kept); a running cluster job is cancelled by the scheduler.
        """
        with self._lock:
            batches = list(self._outstanding.values())
        # Cancelling runs joblib's callbacks, which take joblib's lock: never under ours. A
        # batch submitted meanwhile sees its future cancelled in _attach and cancels itself.
        for batch in batches:
            mark_cancelled(batch.future)
        with self._lock:
            started = [(batch.inner, batch.job, batch.task) for batch in batches]
        by_job: dict[str, tuple[RemoteJob, list[Task]]] = {}
        for inner, job, task in started:
            if job is not None and task is not None:
                by_job.setdefault(job.job_id, (job, []))[1].append(task)
            elif inner is not None:
                inner.cancel()
        if by_job:
            remote = backend_for(self._current_config())
            for job, tasks in by_job.values():
                try:
                    remote.cancel_tasks(job, tasks)
                except Exception as exc:
                    logger.warning("could not cancel job %s: %s", job.job_id, exc)


def _settle(future: Future, exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        future.set_exception(exc)


def _transfer(done: Future, future: Future) -> None:
    if future.done():
        return
    try:
        if done.cancelled():
            mark_cancelled(future)
        elif done.exception() is not None:
            future.set_exception(done.exception())
        else:
            future.set_result(done.result())
    except InvalidStateError:  # cancelled by an abort at the same moment
        pass


class _Submitter:
    """One thread that hands queued batches to Clustrix.

    joblib queues the next batch from the thread that completed the previous one: a local
    pool's result thread or a cluster's status poller. Submitting there would hold those up
    (a cluster submission is an SSH round trip), so batches are queued, and whatever has
    queued meanwhile goes out together, on a cluster as one job array.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[ClustrixBackend, _Batch]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def put(self, backend: ClustrixBackend, batch: _Batch) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()  # a forked child: start afresh
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="clustrix-joblib", daemon=True
                )
                self._thread.start()
            self._queue.put((backend, batch))

    @staticmethod
    def _run(pending: queue.SimpleQueue[tuple[ClustrixBackend, _Batch]]) -> None:
        while True:
            items = [pending.get()]
            while True:
                try:
                    items.append(pending.get_nowait())
                except queue.Empty:
                    break
            by_backend: dict[int, tuple[ClustrixBackend, list[_Batch]]] = {}
            for backend, batch in items:
                by_backend.setdefault(id(backend), (backend, []))[1].append(batch)
            for backend, batches in by_backend.values():
                backend._start(batches)


_submitter = _Submitter()
