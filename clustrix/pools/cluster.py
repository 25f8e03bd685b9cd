"""A pool's workers on a cluster: worker jobs, the relay, and the calls in between.

The workers are one job array (``serve`` as the call of each task), submitted like any other
Clustrix job: same environment, staging, job store and status checks. Calls go to them as
tasks through the relay (``clustrix.pools.link``); their results come back the same way. A
thread tends the pool once a second: it gives the tasks of a worker whose job ended back to
the queue, and submits new workers when some are near the end of their walltime (or gone)
while work remains, so the pool keeps its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..calls import NO_KEYWORDS, CallArgs, CallSpec, Submitted
from ..config import ClusterConfig
from ..environment import modules_named_in_pickle, plan_environment, prepare_local_modules
from ..errors import BackendUnavailableError, ClustrixError, ConnectionFailedError
from ..futures import ClusterFuture, mark_cancelled, settle
from ..job_runtime import runtime_archive
from ..payload import function_name, pickle_calls, pickle_function, pickling_for_remote_job
from ..remote.backend import CONNECTION_SETTINGS, ClusterBackend
from ..remote.environments import python_command
from ..remote.job import ClusterJob, new_job_id
from ..store import PoolRecord, this_process
from . import files
from .link import RelayLink, relay_command
from .tasks import PoolTask, Settlement, lost_error, new_task_id, read_result
from .worker import margin, serve

logger = logging.getLogger("clustrix.pools")

_TEND_INTERVAL = 1.0
# Failed worker starts in a row (no heartbeat ever) after which the pool gives up.
_FAILED_STARTS = 3
# Calls per task at most, and tasks per worker a map is cut into.
_MOST_PER_TASK = 1000
_TASKS_PER_WORKER = 4


@dataclass
class WorkerJob:
    """One worker: its name in the pool folder, the job running it, its last heartbeat."""

    name: str
    job: ClusterJob
    future: ClusterFuture
    status: dict[str, Any] = field(default_factory=dict)
    released: bool = False

    @property
    def scheduler_id(self) -> str:
        return self.status.get("job") or self.future.scheduler_id or "?"


@dataclass
class _Prepared:
    func: Callable[..., Any]
    fid: str
    function_bytes: bytes
    modules: set[str]
    pythons: dict[frozenset[str], str] = field(default_factory=dict)


class ClusterWorkers:
    """An open pool on a cluster (see ``clustrix.pool``)."""

    is_local = False

    def __init__(
        self,
        backend: ClusterBackend,
        config: ClusterConfig,
        spec: CallSpec,
        size: int,
        idle_timeout: float,
    ) -> None:
        self.backend = backend
        self.config = config
        self.spec = spec
        self.size = size
        self.idle_timeout = idle_timeout
        self.walltime = spec.resources.time_seconds
        self.pool_id = f"pool-{new_job_id()}"
        self.folder = f"{backend.work_dir}/{self.pool_id}"
        self.connection = {name: getattr(config, name) for name in CONNECTION_SETTINGS}
        self.store = backend.store(config)
        self.tasks: dict[str, PoolTask] = {}
        self.workers: dict[str, WorkerJob] = {}
        self._lock = threading.RLock()
        self._prepared: dict[tuple[int, str], _Prepared] = {}
        self._sent_functions: set[str] = set()
        self._cancels: dict[str, tuple[threading.Event, list[str]]] = {}
        self._wake = threading.Event()
        self._closing = False
        self._failed_starts = 0
        self._counter = 0
        self.calls_done = 0
        self.link: RelayLink | None = None
        self._start()

    # ------------------------------------------------------------------ starting

    def _start(self) -> None:
        self.store.add_pool(
            PoolRecord(
                pool_id=self.pool_id,
                cluster_type=self.config.cluster_type,
                host=self.backend.transport.where,
                remote_folder=self.folder,
                state="STARTING",
                workers=self.size,
                settings={
                    "cores": self.spec.resources.cores,
                    "memory_mb": self.spec.resources.memory_mb,
                    "time_seconds": self.walltime,
                    "idle_timeout": self.idle_timeout,
                },
                connection=self.connection,
                owner=this_process(),
            )
        )
        try:
            quoted = shlex.quote(self.folder)
            work = shlex.quote(self.backend.work_dir)
            folders = " ".join(files.FOLDERS)
            self.backend.transport.run(
                f"mkdir -p {work} && chmod 700 {work} && mkdir -m 700 {quoted} && cd {quoted} "
                f"&& mkdir -m 700 {folders} && cat > clustrix-runtime.zip",
                stdin=runtime_archive(),
            )
            first = self._submit_workers(self.size)
            assert first.context is not None
            command = relay_command(
                self.folder, first.context.python_command, f"{self.folder}/clustrix-runtime.zip"
            )
            self.python = first.context.python_command
            self.link = RelayLink(self.backend.transport, command, self._on_message)
        except BaseException as exc:
            self.store.update_pool(
                self.pool_id, state="STOPPED", finished=time.time(), message=str(exc)[:2000]
            )
            self._closing = True
            self._stop_workers()
            raise
        self.store.update_pool(self.pool_id, state="RUNNING")
        self._tender = threading.Thread(target=self._tend, name="clustrix-pool", daemon=True)
        self._tender.start()
        logger.info(
            "pool %s: %d worker(s) in %s on %s",
            self.pool_id,
            self.size,
            self.folder,
            self.backend.transport.where,
        )

    def _submit_workers(self, count: int) -> ClusterJob:
        """Submit ``count`` workers as one job (an array when several)."""
        names = []
        with self._lock:
            for _ in range(count):
                names.append(f"w{self._counter}")
                self._counter += 1
        calls = [((self.folder, n, self.walltime, self.idle_timeout), NO_KEYWORDS) for n in names]
        job = self.backend.submit_job(serve, calls, self.spec, self.config)
        with self._lock:
            for name, task in zip(names, job.tasks, strict=True):
                worker = WorkerJob(name, job, task.futures[0])
                self.workers[name] = worker
                worker.future.add_done_callback(lambda _: self._wake.set())
        self.store.update_pool(
            self.pool_id, worker_jobs=[*self._job_ids(), job.job_id] if count else []
        )
        return job

    def _job_ids(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(w.job.job_id for w in self.workers.values()))

    # ------------------------------------------------------------------ routing

    def matches(self, config: ClusterConfig) -> bool:
        return all(getattr(config, name) == value for name, value in self.connection.items())

    def misfit(self, spec: CallSpec) -> str | None:
        mine, asked = self.spec.resources, spec.resources
        requested = spec.requested
        if "cores" in requested and asked.cores > mine.cores:
            return f"asks for {asked.cores} cores, a pool worker has {mine.cores}"
        if "gpus" in requested and asked.gpus > mine.gpus:
            return f"asks for {asked.gpus} GPUs, a pool worker has {mine.gpus}"
        if (
            "memory" in requested
            and asked.memory_mb is not None
            and mine.memory_mb is not None
            and asked.memory_mb > mine.memory_mb
        ):
            return f"asks for {asked.memory_mb} MB of memory, a pool worker has {mine.memory_mb}"
        if (
            "time" in requested
            and asked.time_seconds is not None
            and self.walltime is not None
            and asked.time_seconds > self.walltime - margin(self.walltime)
        ):
            return f"asks for {asked.time_seconds} s, more than a pool worker's walltime gives"
        for name in ("partition", "queue"):
            if name in requested and getattr(asked, name) != getattr(mine, name):
                return f"asks for {name} {getattr(asked, name)!r}, the pool's workers are elsewhere"
        return None

    def describe(self) -> dict[str, str]:
        return {"pool": f"{self.pool_id} ({self.size} workers, {self.folder})"}

    # ------------------------------------------------------------------ calls

    def run_calls(
        self, func: Callable[..., Any], calls: Sequence[CallArgs], spec: CallSpec
    ) -> Submitted:
        """Queue ``calls`` as tasks for the workers; a future per call, in order."""
        if self._closing:
            raise RuntimeError(f"pool {self.pool_id} is shut down")
        per_task = self._calls_per_task(len(calls), spec)
        chunks = [list(calls[i : i + per_task]) for i in range(0, len(calls), per_task)]
        with pickling_for_remote_job():
            prepared = self._prepare(func, calls)
            payloads = [pickle_calls(func, chunk) for chunk in chunks]
        python = self._python(prepared, spec, payloads)
        seconds = spec.resources.time_seconds if "time" in spec.requested else None
        name = function_name(func)
        tasks = []
        for chunk, payload in zip(chunks, payloads, strict=True):
            futures = [self._future(name) for _ in chunk]
            record = {
                "function": prepared.fid,
                "python": python,
                "calls": payload,
                "count": len(chunk),
                "seconds": None if seconds is None else seconds * len(chunk),
                "timeout": spec.timeout,
            }
            task = PoolTask(new_task_id(), name, func, futures, record, spec.retries, spec.retry_on)
            for future in futures:
                future.bind_cancel(lambda task=task: self.cancel([task]))
            tasks.append(task)
        self._send(prepared, tasks)
        return Submitted(
            [f for task in tasks for f in task.futures],
            job_id=self.pool_id,
            cancel_all=lambda: self.cancel(tasks),
        )

    def _future(self, name: str) -> ClusterFuture:
        future = ClusterFuture(name, f"pool {self.pool_id}")
        future.job_id, future.remote_folder = self.pool_id, self.folder
        return future

    def _calls_per_task(self, count: int, spec: CallSpec) -> int:
        """A map is cut into a few tasks per worker, so that they share it evenly; a call
        with a timeout travels alone (its process is stopped when time is up)."""
        if spec.timeout is not None:
            return 1
        if spec.chunksize:
            return spec.chunksize
        per_task = max(1, min(_MOST_PER_TASK, math.ceil(count / (self.size * _TASKS_PER_WORKER))))
        seconds = spec.resources.time_seconds if "time" in spec.requested else None
        if seconds and self.walltime:
            # A task must fit in a worker's walltime: it needs its calls' time together.
            fits = int((self.walltime - margin(self.walltime)) // seconds)
            per_task = max(1, min(per_task, fits))
        return per_task

    def _prepare(self, func: Callable[..., Any], calls: Sequence[CallArgs]) -> _Prepared:
        """The pickled function, once per function (must run inside pickling_for_remote_job)."""
        key = (id(func), getattr(func, "__qualname__", ""))
        prepared = self._prepared.get(key)
        if prepared is None or prepared.func is not func:
            values = [v for args, kwargs in calls[:100] for v in (*args, *kwargs.values())]
            modules = prepare_local_modules(func, values)
            function_bytes = pickle_function(func)
            fid = hashlib.sha256(function_bytes).hexdigest()[:20]
            prepared = _Prepared(func, fid, function_bytes, modules)
            self._prepared[key] = prepared
        return prepared

    def _python(self, prepared: _Prepared, spec: CallSpec, payloads: list[bytes]) -> str:
        """The interpreter of the environment the calls need, built once per module set."""
        named = modules_named_in_pickle(prepared.function_bytes).union(
            *(modules_named_in_pickle(p) for p in payloads[:3])
        )
        key = frozenset(named)
        python = prepared.pythons.get(key)
        if python is None:
            plan = plan_environment(
                prepared.func,
                spec.environment,
                python_executable=self.config.python_executable,
                conda_env_name=self.config.conda_env_name,
                payload_modules=named,
                modules=prepared.modules,
            )
            report = self.backend.staging.environments.ensure(
                plan, self.backend.work_dir, self.config
            )
            python = prepared.pythons[key] = python_command(plan, report)
        return python

    def _send(self, prepared: _Prepared, tasks: list[PoolTask]) -> None:
        with self._lock:
            for task in tasks:
                self.tasks[task.id] = task
            link = self.link
            assert link is not None
            if prepared.fid not in self._sent_functions:
                link.send(("functions", {prepared.fid: prepared.function_bytes}))
                self._sent_functions.add(prepared.fid)
            link.send(("tasks", [task.message() for task in tasks]))

    def cancel(self, tasks: Sequence[PoolTask]) -> bool:
        """Take tasks out of the queue; False if every one had started (or ended)."""
        with self._lock:
            ids = [task.id for task in tasks if task.id in self.tasks]
        if not ids or self.link is None or not self.link.alive:
            return False
        request = new_task_id()
        event, removed = threading.Event(), []
        self._cancels[request] = (event, removed)
        try:
            self.link.send(("cancel", request, ids))
            event.wait(30)
        except ConnectionFailedError:
            return False
        finally:
            self._cancels.pop(request, None)
        with self._lock:
            gone = [self.tasks.pop(i) for i in removed if i in self.tasks]
        for task in gone:
            for future in task.futures:
                mark_cancelled(future)
        return bool(gone)

    def counts(self) -> dict[str, int]:
        with self._lock:
            busy = sum(1 for w in self.workers.values() if w.status.get("state") == "busy")
            return {"waiting": len(self.tasks), "busy workers": busy}

    # ------------------------------------------------------------------ from the relay

    def _on_message(self, message: tuple[Any, ...] | None) -> None:
        if message is None:
            self._relay_ended()
            return
        kind = message[0]
        if kind == "results":
            self._results(message[1])
        elif kind == "lost":
            self._lost(message[1])
        elif kind == "workers":
            with self._lock:
                for name, status in message[1].items():
                    if name in self.workers:
                        self.workers[name].status = status
        elif kind == "queued":
            with self._lock:
                for task_id in message[1]:
                    if task_id in self.tasks:
                        self.tasks[task_id].queued = True
        elif kind == "cancelled":
            waiting = self._cancels.get(message[1])
            if waiting is not None:
                waiting[1].extend(message[2])
                waiting[0].set()
        elif kind == "stopped":
            threading.Thread(target=self._stopped_elsewhere, args=(message[1],)).start()

    def _where(self, worker: str, job: str) -> str:
        return f"pool {self.pool_id} worker {worker}, {self.backend.scheduler.name} job {job}"

    def _results(self, records: list[bytes]) -> None:
        settlements: list[Settlement] = []
        again: list[PoolTask] = []
        for data in records:
            task_id = _record_id(data)
            with self._lock:
                task = self.tasks.pop(task_id, None)
            if task is None:
                continue  # cancelled, or run twice after a worker was given up on
            outcome = read_result(task, data, self._where)
            if outcome is None:
                again.append(task.again())
            else:
                settlements += outcome
                self.calls_done += len(task.futures)
        if again:
            self._resend(again)
        for future, ok, value in settlements:
            settle(future, ok, value)

    def _lost(self, records: list[bytes]) -> None:
        again: list[PoolTask] = []
        for data in records:
            record = _load(data)
            with self._lock:
                task = self.tasks.pop(record["id"], None)
                worker = self.workers.get(record.get("worker", ""))
            if task is None:
                continue
            job = record.get("job") or (worker.scheduler_id if worker else "?")
            reason = record.get("reason", "its worker stopped")
            if task.attempts <= task.retries:
                logger.warning(
                    "pool %s: %s was lost with worker %s (job %s): %s; running it again",
                    self.pool_id,
                    task.name,
                    record.get("worker"),
                    job,
                    reason,
                )
                again.append(task.again())
                continue
            error = lost_error(task, record.get("worker", "?"), job, reason, self.where)
            for future in task.futures:
                settle(future, False, error)
        if again:
            self._resend(again)

    def _resend(self, tasks: list[PoolTask]) -> None:
        with self._lock:
            for task in tasks:
                self.tasks[task.id] = task
        try:
            assert self.link is not None
            self.link.send(("tasks", [task.message() for task in tasks]))
        except ConnectionFailedError:
            pass  # sent again once the relay is back (see _relay_ended)

    @property
    def where(self) -> str:
        return self.backend.transport.where

    def _relay_ended(self) -> None:
        """The relay's connection dropped: start another and send what it never queued."""
        if self._closing:
            return
        for attempt in range(5):
            time.sleep(min(2.0**attempt, 10.0))
            if self._closing:
                return
            try:
                command = relay_command(
                    self.folder, self.python, f"{self.folder}/clustrix-runtime.zip"
                )
                link = RelayLink(self.backend.transport, command, self._on_message)
            except (ClustrixError, OSError, ConnectionError, TimeoutError) as exc:
                logger.warning("pool %s: the relay could not be restarted: %s", self.pool_id, exc)
                continue
            with self._lock:
                self.link = link
                self._sent_functions.clear()
                unqueued = [task for task in self.tasks.values() if not task.queued]
            logger.warning("pool %s: the relay was restarted", self.pool_id)
            for task in unqueued:
                self._send(self._prepared_for(task), [task])
            return
        self._fail_all(
            ConnectionFailedError(
                f"the connection to pool {self.pool_id}'s relay on {self.where} was lost and "
                "could not be opened again"
            )
        )

    def _prepared_for(self, task: PoolTask) -> _Prepared:
        for prepared in self._prepared.values():
            if prepared.fid == task.record["function"]:
                return prepared
        raise ClustrixError(f"the function of task {task.id} is no longer known")

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            tasks = list(self.tasks.values())
            self.tasks.clear()
        for task in tasks:
            for future in task.futures:
                settle(future, False, error)

    def _stopped_elsewhere(self, by: str) -> None:
        self._fail_all(BackendUnavailableError(f"pool {self.pool_id} was stopped by {by}"))
        self.close()

    # ------------------------------------------------------------------ tending

    def _tend(self) -> None:
        while not self._closing:
            self._wake.wait(_TEND_INTERVAL)
            self._wake.clear()
            if self._closing:
                return
            try:
                self._release_ended()
                self._replace()
            except Exception:  # keep tending; the next round tries again
                logger.exception("pool %s: tending the workers failed", self.pool_id)

    def _release_ended(self) -> None:
        """Give the tasks of workers whose job ended back (as lost, for a retry)."""
        with self._lock:
            ended = [w for w in self.workers.values() if w.future.done() and not w.released]
        for worker in ended:
            worker.released = True
            error = None if worker.future.cancelled() else worker.future.exception()
            if error is None:
                reason = "its job ended"
            else:
                reason = str(error).splitlines()[0][:300]
                if not worker.status:
                    self._failed_starts += 1
                logger.warning(
                    "pool %s: worker %s (job %s) ended: %s",
                    self.pool_id,
                    worker.name,
                    worker.scheduler_id,
                    reason,
                )
            if worker.status:
                self._failed_starts = 0
            if self.link is not None and self.link.alive:
                with contextlib.suppress(ConnectionFailedError):
                    self.link.send(("release", worker.name, reason))
            if self._failed_starts >= _FAILED_STARTS:
                self._fail_all(
                    BackendUnavailableError(
                        f"pool {self.pool_id}: {self._failed_starts} worker jobs in a row ended "
                        f"before they started serving; the last said: {reason}"
                    )
                )

    def _replace(self) -> None:
        """Keep ``size`` workers with walltime to spare while calls wait."""
        with self._lock:
            if not self.tasks or self._failed_starts >= _FAILED_STARTS:
                return
            now = time.time()
            lead = None if self.walltime is None else min(120.0, self.walltime * 0.25)
            serving = [
                w
                for w in self.workers.values()
                if not w.future.done()
                and not (
                    lead is not None
                    and w.status.get("deadline") is not None
                    and w.status["deadline"] - now < lead
                )
                and w.status.get("state") != "exited"
            ]
            missing = self.size - len(serving)
        if missing > 0:
            logger.info("pool %s: starting %d worker(s) to keep its size", self.pool_id, missing)
            self._submit_workers(missing)

    # ------------------------------------------------------------------ closing

    def wait(self) -> None:
        with self._lock:
            futures = [f for task in self.tasks.values() for f in task.futures]
        for future in futures:
            with contextlib.suppress(BaseException):
                future.exception()

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (their jobs are cancelled) and remove the pool's folders."""
        with self._lock:
            if self._closing and self.link is None:
                return
            self._closing = True
            tasks = list(self.tasks.values())
            self.tasks.clear()
        self._wake.set()
        for task in tasks:
            for future in task.futures:
                mark_cancelled(future)
        link, self.link = self.link, None
        if link is not None:
            with contextlib.suppress(ClustrixError, OSError):
                if link.alive:
                    link.send(("stop",))
            link.close()
        self._stop_workers()
        self.store.update_pool(self.pool_id, state="STOPPED", finished=time.time())
        logger.info("pool %s stopped after %d call(s)", self.pool_id, self.calls_done)

    def _stop_workers(self) -> None:
        with self._lock:
            jobs = list({id(w.job): w.job for w in self.workers.values()}.values())
        for job in jobs:
            with contextlib.suppress(ClustrixError, OSError):
                self.backend.cancel_job(job)
        folders = " ".join(shlex.quote(f) for f in [self.folder, *(j.folder for j in jobs)])
        with contextlib.suppress(ClustrixError, OSError):
            self.backend.transport.run(f"rm -rf {folders}", check=False)

    def status(self) -> dict[str, Any]:
        """Workers, busy, idle, calls done and walltime left (seconds, the most of any)."""
        with self._lock:
            statuses = [w.status for w in self.workers.values() if not w.future.done()]
            waiting = len(self.tasks)
        return summarise(statuses, calls_done=self.calls_done, waiting=waiting)


def summarise(statuses: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A pool's figures from its workers' heartbeats."""
    now = time.time()
    live = [s for s in statuses if s and s.get("state") != "exited"]
    deadlines = [s["deadline"] for s in live if s.get("deadline")]
    return {
        "workers": len(live),
        "busy": sum(1 for s in live if s.get("state") == "busy"),
        "idle": sum(1 for s in live if s.get("state") == "idle"),
        "time_left": max(deadlines) - now if deadlines else None,
        **extra,
    }


def _record_id(data: bytes) -> str:
    return _load(data)["id"]


def _load(data: bytes) -> dict[str, Any]:
    import pickle

    return pickle.loads(data)


__all__ = ["ClusterWorkers", "WorkerJob", "replace", "summarise"]
