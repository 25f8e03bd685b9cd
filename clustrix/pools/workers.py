"""A pool's worker jobs: submitted as Clustrix jobs, watched through their heartbeats and
their jobs' states, replaced ahead of the end of their walltime while calls wait."""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..calls import NO_KEYWORDS, CallSpec
from ..config import ClusterConfig
from ..errors import ClustrixError
from ..futures import ClusterFuture
from ..remote.backend import ClusterBackend
from ..remote.job import ClusterJob
from .worker import serve

logger = logging.getLogger("clustrix.pools")

# Worker jobs in a row that ended before serving (no heartbeat ever) after which the pool
# stops starting more: a partition that does not exist, an account refused...
FAILED_STARTS = 3
# Replacements are started this long before a worker's deadline, at most.
_LEAD_LIMIT = 120.0
_LEAD_FRACTION = 0.25


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


class WorkerJobs:
    """Starts, watches and stops the worker jobs of one pool.

    ``on_ended(worker, reason)`` is called once for each worker whose job ended, so that the
    tasks it had claimed run again; ``on_failing(message)`` once worker jobs keep failing
    before they serve.
    """

    def __init__(
        self,
        backend: ClusterBackend,
        config: ClusterConfig,
        spec: CallSpec,
        folder: str,
        idle_timeout: float,
        on_ended: Callable[[WorkerJob, str], None],
        on_failing: Callable[[str], None],
    ) -> None:
        self.backend = backend
        self.config = config
        self.spec = spec
        self.folder = folder
        self.walltime = spec.resources.time_seconds
        self.idle_timeout = idle_timeout
        self.on_ended = on_ended
        self.on_failing = on_failing
        self.workers: dict[str, WorkerJob] = {}
        self.wake = threading.Event()
        self.failed_starts = 0
        self._counter = 0
        self._lock = threading.Lock()

    def submit(self, count: int) -> ClusterJob:
        """Submit ``count`` workers as one job (an array when several)."""
        with self._lock:
            names = [f"w{self._counter + n}" for n in range(count)]
            self._counter += count
        calls = [((self.folder, n, self.walltime, self.idle_timeout), NO_KEYWORDS) for n in names]
        job = self.backend.submit_job(serve, calls, self.spec, self.config)
        with self._lock:
            for name, task in zip(names, job.tasks, strict=True):
                worker = WorkerJob(name, job, task.futures[0])
                self.workers[name] = worker
                worker.future.add_done_callback(lambda _: self.wake.set())
        return job

    def job_ids(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(w.job.job_id for w in self.workers.values()))

    def get(self, name: str) -> WorkerJob | None:
        return self.workers.get(name)

    def heard(self, statuses: dict[str, dict[str, Any]]) -> None:
        """The heartbeats the relay read from the pool's folder."""
        with self._lock:
            for name, status in statuses.items():
                if name in self.workers:
                    self.workers[name].status = status

    def live_statuses(self) -> list[dict[str, Any]]:
        with self._lock:
            return [w.status for w in self.workers.values() if not w.future.done()]

    def busy(self) -> int:
        return sum(1 for s in self.live_statuses() if s.get("state") == "busy")

    # ------------------------------------------------------------------ tending

    def release_ended(self) -> None:
        """Report each worker whose job ended, once."""
        with self._lock:
            ended = [w for w in self.workers.values() if w.future.done() and not w.released]
            for worker in ended:
                worker.released = True
        for worker in ended:
            error = None if worker.future.cancelled() else worker.future.exception()
            reason = "its job ended" if error is None else str(error).splitlines()[0][:300]
            if error is not None:
                logger.warning(
                    "worker %s (job %s) ended: %s", worker.name, worker.scheduler_id, reason
                )
                if not worker.status:
                    self.failed_starts += 1
            if worker.status:
                self.failed_starts = 0
            self.on_ended(worker, reason)
            if self.failed_starts == FAILED_STARTS:
                self.on_failing(
                    f"{self.failed_starts} worker jobs in a row ended before they started "
                    f"serving; the last said: {reason}"
                )

    def keep_size(self, size: int, work_waiting: bool) -> bool:
        """While calls wait, keep ``size`` workers that are not near their deadline; whether
        new ones were submitted."""
        if not work_waiting or self.failed_starts >= FAILED_STARTS:
            return False
        now = time.time()
        lead = None
        if self.walltime is not None:
            lead = min(_LEAD_LIMIT, self.walltime * _LEAD_FRACTION)
        with self._lock:
            serving = [
                w
                for w in self.workers.values()
                if not w.future.done()
                and w.status.get("state") != "exited"
                and not (
                    lead is not None
                    and w.status.get("deadline") is not None
                    and w.status["deadline"] - now < lead
                )
            ]
        missing = size - len(serving)
        if missing <= 0:
            return False
        logger.info("starting %d worker(s) to keep the pool's size", missing)
        self.submit(missing)
        return True

    def stop(self, also_remove: list[str]) -> None:
        """Cancel every worker job; remove their folders and ``also_remove``."""
        with self._lock:
            jobs = list({id(w.job): w.job for w in self.workers.values()}.values())
        for job in jobs:
            with contextlib.suppress(ClustrixError, OSError):
                self.backend.cancel_job(job)
        folders = " ".join(shlex.quote(f) for f in [*also_remove, *(j.folder for j in jobs)])
        with contextlib.suppress(ClustrixError, OSError):
            self.backend.transport.run(f"rm -rf {folders}", check=False)
