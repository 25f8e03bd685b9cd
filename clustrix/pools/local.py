"""A pool on this machine: a process pool of its own, of the pool's size.

Calls routed to it run as local calls do (``clustrix.local``), but on the pool's own worker
processes, started at once and kept warm until the pool is shut down. Their checkpoints live
in the pool's own folder, ``~/.clustrix/checkpoints/<pool id>/``: a call retried after its
worker process died resumes from its checkpoint; the checkpoint of a call that succeeded is
removed at once, and the folder, with what failed calls left, when the pool is closed (as a
cluster pool's folder is).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from ..calls import CallArgs, CallSpec, Submitted
from ..config import ClusterConfig
from ..local import checkpoints
from ..local.backend import LocalBackend
from ..local.executor import LocalExecutor
from ..remote.job import new_job_id


class _OwnPool(LocalBackend):
    """The local backend, running calls on one pool's processes instead of the shared ones."""

    def __init__(self, executor: LocalExecutor, checkpoints_folder: str) -> None:
        self._executor = executor
        self._checkpoints = checkpoints_folder

    def executor(self, config: ClusterConfig) -> LocalExecutor:
        return self._executor

    def checkpoint_folder(self) -> str:
        return checkpoints.new_folder(self._checkpoints)


class LocalWorkers:
    """An open pool of local worker processes (``clustrix.pool`` without a cluster)."""

    is_local = True

    def __init__(self, config: ClusterConfig, size: int) -> None:
        self.config = config
        self.size = size
        self.pool_id = f"pool-{new_job_id()}"
        kind = "processes" if config.local_executor == "auto" else config.local_executor
        self.executor = LocalExecutor(max_workers=size, kind=kind)
        self.checkpoints = os.path.join(checkpoints.root_folder(), self.pool_id)
        self.backend = _OwnPool(self.executor, self.checkpoints)
        self.calls_done = 0
        if kind == "processes":
            self.executor.worker_pool()  # warm: the processes start now, not at the first call

    def matches(self, config: ClusterConfig) -> bool:
        return config.cluster_type == "local"

    def misfit(self, spec: CallSpec) -> str | None:
        return None  # every call runs on this machine anyway

    def describe(self) -> dict[str, str]:
        return {"pool": f"{self.pool_id} ({self.size} local worker processes)"}

    def run_calls(
        self, func: Callable[..., Any], calls: Sequence[CallArgs], spec: CallSpec
    ) -> Submitted:
        submitted = self.backend.submit(func, calls, spec, self.config)
        for future in submitted.futures:
            future.add_done_callback(self._count)
        return submitted

    def _count(self, future: Any) -> None:
        if not future.cancelled():
            self.calls_done += 1

    def wait(self) -> None:
        """Nothing to wait for beyond the futures themselves (see ``WorkerPool.shutdown``)."""

    def close(self, *, cancel: bool = False) -> None:
        """Stop the worker processes, then remove the pool's checkpoints."""
        self.executor.shutdown(wait=not cancel, cancel_futures=cancel)
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        return {
            "workers": self.size,
            "busy": None,
            "idle": None,
            "time_left": None,
            "calls_done": self.calls_done,
            "pending": None,
            "host": os.uname().nodename,
        }
