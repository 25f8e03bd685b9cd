"""A pool's workers on a cluster: worker jobs, the relay, and the calls in between.

The workers are one job array (``serve`` as the call of each task), submitted like any other
Clustrix job: same environment, staging, job store and status checks (``workers``). Calls go
to them as tasks through the relay (``link``); results come back the same way, pushed by the
relay as workers write them. A thread tends the pool once a second: the tasks of a worker
whose job ended run again, and new workers start when some near the end of their walltime
(or are gone) while calls wait, so the pool keeps its size.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..calls import CallArgs, CallSpec, Submitted
from ..config import ClusterConfig
from ..errors import BackendUnavailableError, ClustrixError, ConnectionFailedError
from ..futures import ClusterFuture, mark_cancelled, settle
from ..job_runtime import runtime_archive
from ..payload import function_name, pickle_calls, pickling_for_remote_job
from ..remote.backend import CONNECTION_SETTINGS, ClusterBackend
from ..remote.job import new_job_id
from ..store import PoolRecord, this_process
from . import files
from .link import RelayLink, relay_command
from .payloads import Payloads, Prepared, calls_per_task, needed_seconds
from .tasks import PoolTask, Settlement, lost_error, new_task_id, read_result
from .worker import margin
from .workers import WorkerJob, WorkerJobs

logger = logging.getLogger("clustrix.pools")

_TEND_INTERVAL = 1.0
_RELAY_RESTARTS = 5


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
        self.walltime = spec.resources.time_seconds
        self.pool_id = f"pool-{new_job_id()}"
        self.folder = f"{backend.work_dir}/{self.pool_id}"
        self.runtime = f"{self.folder}/clustrix-runtime.zip"
        self.connection = {name: getattr(config, name) for name in CONNECTION_SETTINGS}
        self.store = backend.store(config)
        self.tasks: dict[str, PoolTask] = {}
        self.calls_done = 0
        self.payloads = Payloads(backend.staging.environments, backend.work_dir, config)
        self.workers = WorkerJobs(
            backend, config, spec, self.folder, idle_timeout, self._worker_ended, self._failing
        )
        self.link: RelayLink | None = None
        self.python = ""
        self._lock = threading.RLock()
        self._sent_functions: set[str] = set()
        self._cancels: dict[str, tuple[threading.Event, list[str]]] = {}
        self._closing = False
        self._record(idle_timeout)
        self._start()

    @property
    def where(self) -> str:
        return self.backend.transport.where

    # ------------------------------------------------------------------ starting

    def _record(self, idle_timeout: float) -> None:
        resources = self.spec.resources
        self.store.add_pool(
            PoolRecord(
                pool_id=self.pool_id,
                cluster_type=self.config.cluster_type,
                host=self.where,
                remote_folder=self.folder,
                state="STARTING",
                workers=self.size,
                settings={
                    "cores": resources.cores,
                    "memory_mb": resources.memory_mb,
                    "time_seconds": self.walltime,
                    "idle_timeout": idle_timeout,
                },
                connection=self.connection,
                owner=this_process(),
            )
        )

    def _start(self) -> None:
        """Make the folder, submit the workers, start the relay; on failure leave nothing."""
        try:
            quoted, work = shlex.quote(self.folder), shlex.quote(self.backend.work_dir)
            self.backend.transport.run(
                f"mkdir -p {work} && chmod 700 {work} && mkdir -m 700 {quoted} && cd {quoted} "
                f"&& mkdir -m 700 {' '.join(files.FOLDERS)} && cat > clustrix-runtime.zip",
                stdin=runtime_archive(),
            )
            first = self.workers.submit(self.size)
            self.store.update_pool(self.pool_id, worker_jobs=self.workers.job_ids())
            assert first.context is not None
            # The relay runs on the login node with the workers' own interpreter.
            self.python = first.context.python_command
            self.link = self._open_link()
        except BaseException as exc:
            self._closing = True
            self.workers.stop([self.folder])
            self.store.update_pool(
                self.pool_id, state="STOPPED", finished=time.time(), message=str(exc)[:2000]
            )
            raise
        self.store.update_pool(self.pool_id, state="RUNNING")
        threading.Thread(target=self._tend, name="clustrix-pool", daemon=True).start()
        logger.info(
            "pool %s: %d worker(s) in %s on %s", self.pool_id, self.size, self.folder, self.where
        )

    def _open_link(self) -> RelayLink:
        command = relay_command(self.folder, self.python, self.runtime)
        return RelayLink(self.backend.transport, command, self._on_message)

    # ------------------------------------------------------------------ routing

    def matches(self, config: ClusterConfig) -> bool:
        return all(getattr(config, name) == value for name, value in self.connection.items())

    def misfit(self, spec: CallSpec) -> str | None:
        """Why a worker cannot run calls asking for ``spec``; only what a call asked for
        itself counts (a default from the settings is not a request)."""
        mine, asked, requested = self.spec.resources, spec.resources, spec.requested
        if "cores" in requested and asked.cores > mine.cores:
            return f"asks for {asked.cores} cores, a pool worker has {mine.cores}"
        if "gpus" in requested and asked.gpus > mine.gpus:
            return f"asks for {asked.gpus} GPUs, a pool worker has {mine.gpus}"
        if "memory" in requested and (asked.memory_mb or 0) > (mine.memory_mb or float("inf")):
            return f"asks for {asked.memory_mb} MB of memory, a pool worker has {mine.memory_mb}"
        seconds = needed_seconds(spec)
        if seconds and self.walltime and seconds > self.walltime - margin(self.walltime):
            return f"asks for {seconds} s, more than a pool worker's walltime leaves"
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
        per_task = calls_per_task(len(calls), spec, self.size)
        chunks = [list(calls[i : i + per_task]) for i in range(0, len(calls), per_task)]
        with pickling_for_remote_job():
            prepared = self.payloads.prepare(func, calls)
            payloads = [pickle_calls(func, chunk) for chunk in chunks]
        python = self.payloads.python(prepared, spec, payloads)
        seconds = needed_seconds(spec)
        name = function_name(func)
        tasks = []
        for chunk, payload in zip(chunks, payloads, strict=True):
            record = {
                "function": prepared.fid,
                "python": python,
                "calls": payload,
                "count": len(chunk),
                "seconds": seconds,
                "timeout": spec.timeout,
            }
            futures = [self._future(name) for _ in chunk]
            task = PoolTask(
                new_task_id(), name, func, futures, record, chunk, spec.retries, spec.retry_on
            )
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

    def _send(self, prepared: Prepared, tasks: list[PoolTask]) -> None:
        with self._lock:
            for task in tasks:
                self.tasks[task.id] = task
            if self.link is None:
                raise RuntimeError(f"pool {self.pool_id} is shut down")
            if prepared.fid not in self._sent_functions:
                self.link.send(("functions", {prepared.fid: prepared.function_bytes}))
                self._sent_functions.add(prepared.fid)
            self.link.send(("tasks", [task.message() for task in tasks]))

    def cancel(self, tasks: Sequence[PoolTask]) -> bool:
        """Take tasks out of the queue (their futures are cancelled); False if every one
        had been claimed by a worker already (or had ended)."""
        with self._lock:
            ids = [task.id for task in tasks if task.id in self.tasks]
            link = self.link
        if not ids or link is None or not link.alive:
            return False
        request = new_task_id()
        event, removed = threading.Event(), []
        self._cancels[request] = (event, removed)
        try:
            link.send(("cancel", request, ids))
            if link.in_reader():
                # Called back from a future settled by the relay's messages: the answer
                # would come on this very thread. The tasks leave the queue all the same.
                return False
            event.wait(30)
        except ConnectionFailedError:
            return False
        finally:
            self._cancels.pop(request, None)
        return bool(removed)

    def _cancelled(self, request: str, removed: list[str]) -> None:
        """The relay's answer to a cancel: these tasks left the queue."""
        with self._lock:
            gone = [self.tasks.pop(i) for i in removed if i in self.tasks]
        for task in gone:
            for future in task.futures:
                mark_cancelled(future)
        waiting = self._cancels.get(request)
        if waiting is not None:
            waiting[1].extend(removed)
            waiting[0].set()

    # ------------------------------------------------------------------ from the relay

    def _on_message(self, message: tuple[Any, ...] | None) -> None:
        if message is None:
            self._relay_ended()
            return
        kind = message[0]
        if kind == "results":
            self._results([pickle.loads(data) for data in message[1]])
        elif kind == "lost":
            self._lost([pickle.loads(data) for data in message[1]])
        elif kind == "workers":
            self.workers.heard(message[1])
        elif kind == "queued":
            with self._lock:
                for task_id in message[1]:
                    if task_id in self.tasks:
                        self.tasks[task_id].queued = True
        elif kind == "cancelled":
            self._cancelled(message[1], message[2])
        elif kind == "stopped":
            threading.Thread(target=self._stopped_elsewhere, args=(message[1],)).start()

    def _where(self, worker: str, job: str) -> str:
        return f"pool {self.pool_id} worker {worker}, {self.backend.scheduler.name} job {job}"

    def _results(self, records: list[dict[str, Any]]) -> None:
        settlements: list[Settlement] = []
        again: list[PoolTask] = []
        for record in records:
            with self._lock:
                task = self.tasks.pop(record["id"], None)
            if task is None:
                continue  # cancelled, or run twice after its worker was given up on
            outcome = read_result(task, record, self._where)
            if outcome is None:
                again.append(task.again())
                continue
            settlements += outcome
            self.calls_done += len(outcome)
            if len(outcome) < len(task.futures):
                again.append(self._remainder(task, len(outcome)))
        self._resend(again)
        for future, ok, value in settlements:
            settle(future, ok, value)

    def _remainder(self, task: PoolTask, ran: int) -> PoolTask:
        """The calls of ``task`` after its first ``ran``, as a task of their own (a worker
        had no walltime left for them: they did not start, so no attempt is counted, and
        their checkpoints, if any, are named by the new task's own key)."""
        calls = task.calls[ran:]
        with pickling_for_remote_job():
            payload = pickle_calls(task.func, calls)
        record = {**task.record, "calls": payload, "count": len(calls)}
        rest = PoolTask(
            new_task_id(),
            task.name,
            task.func,
            task.futures[ran:],
            record,
            calls,
            task.retries,
            task.retry_on,
            attempts=task.attempts,
        )
        for future in rest.futures:
            future.bind_cancel(lambda: self.cancel([rest]))
        return rest

    def _lost(self, records: list[dict[str, Any]]) -> None:
        again: list[PoolTask] = []
        for record in records:
            with self._lock:
                task = self.tasks.pop(record["id"], None)
            if task is None:
                continue
            worker_name = record.get("worker", "?")
            worker = self.workers.get(worker_name)
            job = record.get("job") or (worker.scheduler_id if worker else "?")
            reason = record.get("reason", "its worker stopped")
            if record.get("stopped"):
                error = BackendUnavailableError(f"pool {self.pool_id} was stopped: {reason}")
                for future in task.futures:
                    settle(future, False, error)
                continue
            if task.attempts <= task.retries:
                logger.warning(
                    "pool %s: %s was lost with worker %s (job %s): %s; running it again",
                    self.pool_id,
                    task.name,
                    worker_name,
                    job,
                    reason,
                )
                again.append(task.again())
                continue
            error = lost_error(task, worker_name, job, reason, self.where)
            for future in task.futures:
                settle(future, False, error)
        self._resend(again)

    def _resend(self, tasks: list[PoolTask]) -> None:
        if not tasks:
            return
        with self._lock:
            for task in tasks:
                self.tasks[task.id] = task
            link = self.link
        with contextlib.suppress(ConnectionFailedError):  # resent by _relay_ended
            if link is not None:
                link.send(("tasks", [task.message() for task in tasks]))

    def _relay_ended(self) -> None:
        """The relay's connection dropped: start another, and send what it never queued
        (results workers wrote meanwhile wait in the folder for the new relay)."""
        for attempt in range(_RELAY_RESTARTS):
            if self._closing:
                return
            time.sleep(min(2.0**attempt, 10.0))
            try:
                link = self._open_link()
            except (ClustrixError, OSError, ConnectionError, TimeoutError) as exc:
                logger.warning("pool %s: the relay could not be restarted: %s", self.pool_id, exc)
                continue
            with self._lock:
                self.link = link
                self._sent_functions.clear()
                unqueued = [task for task in self.tasks.values() if not task.queued]
            logger.warning("pool %s: its relay was restarted", self.pool_id)
            for task in unqueued:
                prepared = self.payloads.known(task.record["function"])
                if prepared is not None:
                    self._send(prepared, [task])
            return
        self._fail_all(
            ConnectionFailedError(
                f"the connection to pool {self.pool_id}'s relay on {self.where} was lost and "
                "could not be opened again"
            )
        )

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
            self.workers.wake.wait(_TEND_INTERVAL)
            self.workers.wake.clear()
            if self._closing:
                return
            try:
                self.workers.release_ended()
                with self._lock:
                    waiting = bool(self.tasks)
                if self.workers.keep_size(self.size, waiting):
                    self.store.update_pool(self.pool_id, worker_jobs=self.workers.job_ids())
            except Exception:  # keep tending; the next round tries again
                logger.exception("pool %s: tending the workers failed", self.pool_id)

    def _worker_ended(self, worker: WorkerJob, reason: str) -> None:
        """A worker's job ended: the tasks it had claimed come back as lost."""
        link = self.link
        if link is not None and link.alive:
            with contextlib.suppress(ConnectionFailedError):
                link.send(("release", worker.name, reason))

    def _failing(self, message: str) -> None:
        self._fail_all(BackendUnavailableError(f"pool {self.pool_id}: {message}"))

    # ------------------------------------------------------------------ closing

    def wait(self) -> None:
        """Wait until every call given to the pool has finished."""
        with self._lock:
            futures = [f for task in self.tasks.values() for f in task.futures]
        for future in futures:
            with contextlib.suppress(BaseException):
                future.exception()

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (their jobs are cancelled) and remove the pool's folders.

        Calls not finished by then are cancelled."""
        with self._lock:
            if self._closing and self.link is None:
                return
            self._closing = True
            tasks = list(self.tasks.values())
            self.tasks.clear()
            link, self.link = self.link, None
        self.workers.wake.set()
        for task in tasks:
            for future in task.futures:
                mark_cancelled(future)
        if link is not None:
            with contextlib.suppress(ClustrixError, OSError):
                if link.alive:
                    link.send(("stop",))
            link.close()
        self.workers.stop([self.folder])
        self.store.update_pool(self.pool_id, state="STOPPED", finished=time.time())
        logger.info("pool %s stopped after %d call(s)", self.pool_id, self.calls_done)

    def status(self) -> dict[str, Any]:
        """Workers, busy, idle, walltime left (seconds, the most of any), calls done and
        calls pending (given to the pool and not finished: queued or running)."""
        with self._lock:
            pending = sum(len(task.futures) for task in self.tasks.values())
        return summarise(self.workers.live_statuses(), calls_done=self.calls_done, pending=pending)


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
