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

import collections
import logging
import os
import queue
import threading
from concurrent.futures import Future
from typing import Any

import cloudpickle
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.parallel import BatchedCalls, register_parallel_backend

from .backend import backend_for
from .calls import Submitted
from .config import ClusterConfig
from .environment import classify_modules, modules_named_in_pickle, ship_by_value
from .errors import ConfigError
from .executor import Executor
from .futures import mark_cancelled, settle
from .local import in_worker
from .payload import pickling_for_remote_job

__all__ = ["NAME", "ClustrixBackend", "register"]

NAME = "clustrix"

logger = logging.getLogger("clustrix.joblib")


def register(make_default: bool = False) -> None:
    """Make ``joblib.parallel_backend("clustrix", ...)`` (and ``backend="clustrix"``) work."""
    register_parallel_backend(NAME, ClustrixBackend, make_default=make_default)


class _Batch:
    """One joblib batch: the future joblib holds, and the Clustrix call behind it."""

    __slots__ = ("call", "future", "inner", "submitted")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.future: Future = Future()
        self.inner: Future | None = None
        #: The submission the batch went out with (several batches share one on a cluster).
        self.submitted: Submitted | None = None


class ClustrixBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs each joblib batch as one Clustrix call, many of them at once.

    At most ``n_jobs`` batches run at once (joblib queues up to ``pre_dispatch`` of them;
    the rest wait here): ``-1`` means the local cores (local backend) or
    ``max_parallel_jobs`` (cluster backends). ``batch_size`` is ``"auto"``
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
        self._executor = Executor(**options)
        self._config: ClusterConfig | None = None
        self._lock = threading.RLock()
        self._outstanding: dict[Future, _Batch] = {}  # every batch not finished
        self._waiting: collections.deque[_Batch] = collections.deque()  # not submitted yet
        self._running = 0  # submitted to Clustrix and not finished
        self._limit: int | None = None  # n_jobs of the current Parallel call

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.cluster_options.items())
        return f"ClustrixBackend({options})"

    # ------------------------------------------------------------------ sizing

    def _current_config(self) -> ClusterConfig:
        return self._config or self._executor.effective_config()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if in_worker():
            return 1  # inside a Clustrix call, nested calls run inline
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            config = self._current_config()
            capacity = backend_for(config).capacity(config)
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
        self._config = self._executor.effective_config()
        remote = not backend_for(self._config).is_local
        seconds = self.CLUSTER_BATCH_SECONDS if remote else self.LOCAL_BATCH_SECONDS
        self.MIN_IDEAL_BATCH_DURATION, self.MAX_IDEAL_BATCH_DURATION = seconds
        self._limit = self.effective_n_jobs(n_jobs)
        return self._limit

    # retrieval_context stays joblib's default, which does nothing: the thread waiting for
    # results holds no worker or job slot, so what it waits for can always run.

    def compute_batch_size(self) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        return super().compute_batch_size()

    def terminate(self) -> None:
        self.reset_batch_stats()
        self._config = None
        self._limit = None

    # ------------------------------------------------------------------ running batches

    def submit(self, func: Any, callback: Any = None) -> Future:
        """Queue one batch; the returned future completes when its Clustrix call does."""
        batch = _Batch(func)
        batch.future.add_done_callback(self._forget)
        if callback is not None:
            batch.future.add_done_callback(callback)
        with self._lock:
            self._outstanding[batch.future] = batch
            self._waiting.append(batch)
        _submitter.wake(self)
        return batch.future

    # joblib before 1.5 calls apply_async.
    apply_async = submit

    def retrieve_result_callback(self, out: Future) -> Any:
        return out.result()

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._outstanding.pop(future, None)

    def _pump(self) -> None:
        """Start waiting batches while fewer than ``n_jobs`` run (in the submitting thread)."""
        limit = self._limit or self.effective_n_jobs(self.default_n_jobs)
        chosen = []
        with self._lock:
            while self._waiting and self._running < limit:
                batch = self._waiting.popleft()
                if not batch.future.done():  # else cancelled by an abort
                    chosen.append(batch)
                    self._running += 1
        if chosen:
            self._start(chosen)

    def _start(self, batches: list[_Batch]) -> None:
        """Submit batches to Clustrix: on a cluster all of them as one job array."""
        try:
            if not backend_for(self._current_config()).is_local:
                _ship_local_modules([batch.call for batch in batches])
            calls = [((batch.call,), {}) for batch in batches]
            submitted = self._executor.submit_calls(BatchedCalls.__call__, calls, chunksize=1)
            for batch, inner in zip(batches, submitted.futures, strict=True):
                self._attach(batch, inner, submitted)
        except BaseException as exc:
            for batch in batches:
                if batch.inner is None:
                    self._release()
                    settle(batch.future, False, exc)

    def _attach(self, batch: _Batch, inner: Future, submitted: Submitted) -> None:
        with self._lock:
            batch.inner, batch.submitted = inner, submitted
            aborted = batch.future.cancelled()
        inner.add_done_callback(lambda done: self._finished(batch, done))
        if aborted:
            inner.cancel()

    def _finished(self, batch: _Batch, done: Future) -> None:
        self._release()
        _transfer(done, batch.future)

    def _release(self) -> None:
        with self._lock:
            self._running -= 1
            waiting = bool(self._waiting)
        if waiting:
            _submitter.wake(self)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch not finished: waiting ones never start, jobs are cancelled.

        Local batches already handed to a worker process finish in the background (the
        shared workers are kept); cluster jobs are cancelled with the scheduler.
        """
        with self._lock:
            self._waiting.clear()
            batches = list(self._outstanding.values())
        # Cancelling runs joblib's callbacks, which take joblib's lock: never under ours. A
        # batch being submitted meanwhile sees its future cancelled in _attach.
        for batch in batches:
            mark_cancelled(batch.future)
        with self._lock:
            submissions = {id(b.submitted): b.submitted for b in batches if b.submitted}
        # Every unfinished call of each submission at once: one scheduler command per job.
        for submitted in submissions.values():
            try:
                submitted.cancel()
            except Exception as exc:
                logger.warning("could not cancel job %s: %s", submitted.job_id, exc)


def _ship_local_modules(calls: list[Any]) -> None:
    """Make the user's own modules that the batches name travel with them, by value.

    A decorated function's modules are found from its code; here the user's functions sit
    inside joblib's batch, so the modules are read from the batch's pickle instead.
    """
    named: set[str] = set()
    try:
        with pickling_for_remote_job():
            for call in calls:
                named |= modules_named_in_pickle(cloudpickle.dumps(call))
    except Exception:
        return  # the submission names what cannot be pickled
    ship_by_value(classify_modules(named)[1])


def _transfer(done: Future, future: Future) -> None:
    if done.cancelled():
        mark_cancelled(future)
    elif done.exception() is not None:
        settle(future, False, done.exception())
    else:
        settle(future, True, done.result())


class _Submitter:
    """One thread that hands waiting batches to Clustrix.

    joblib queues the next batch from the thread that completed the previous one: a local
    pool's result thread or a cluster's status poller. Submitting there would hold those up
    (a cluster submission is an SSH round trip), so this thread does it, and whatever has
    queued meanwhile goes out together, on a cluster as one job array.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[ClustrixBackend] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def wake(self, backend: ClustrixBackend) -> None:
        """Have ``backend`` start what it can of its waiting batches."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()  # a forked child: start afresh
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="clustrix-joblib", daemon=True
                )
                self._thread.start()
            self._queue.put(backend)

    @staticmethod
    def _run(woken: queue.SimpleQueue[ClustrixBackend]) -> None:
        while True:
            backends = {id(b): b for b in _drain(woken)}
            for backend in backends.values():
                try:
                    backend._pump()
                except Exception:  # keep serving the other backends
                    logger.exception("could not submit joblib batches")


def _drain(woken: queue.SimpleQueue[ClustrixBackend]) -> list[ClustrixBackend]:
    items = [woken.get()]
    while True:
        try:
            items.append(woken.get_nowait())
        except queue.Empty:
            return items


_submitter = _Submitter()
