"""The local backend: calls run in this machine's shared worker processes (or threads).

Without a cluster configured, this is where calls go. Maps of many small calls travel to the
workers in batches; a call with a ``timeout``, ``retries`` or a progress bar gets a future of
its own instead.

Every call gets a checkpoint place (``clustrix.checkpoint``; see ``checkpoints`` for where),
the same for each of its retries, so that a retry of a call that crashed its worker resumes
from the checkpoint the crashed attempt saved. A call's checkpoint is removed once it has
succeeded; a call that failed for good keeps it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..calls import NO_KEYWORDS, CallArgs, CallSpec, Submitted, columns
from ..errors import NodeFailureError, WorkerCrashedError
from ..futures import ClusterFuture
from ..progress import gather
from . import available_cores, checkpoints, shared_executor
from .executor import LocalExecutor

if TYPE_CHECKING:  # the pools import no settings: a job's shipped runtime has no PyYAML
    from ..config import ClusterConfig

logger = logging.getLogger("clustrix")

# Failures of the machine rather than of the call: with retries=N the call runs again.
_RETRIED_FAILURES = (WorkerCrashedError, NodeFailureError)


class LocalBackend:
    """Runs calls in the local worker pool shared by every call of the process."""

    name = "local"
    is_local = True

    def executor(self, config: ClusterConfig) -> LocalExecutor:
        """The shared pool for ``config``: as many workers as cores, or max_parallel_jobs."""
        return shared_executor(self.capacity(config), config.local_executor)

    def checkpoint_folder(self) -> str:
        """A new folder for one submission's checkpoints (made when a call checkpoints)."""
        return checkpoints.new_folder()

    def capacity(self, config: ClusterConfig) -> int:
        return min(available_cores(), config.max_parallel_jobs)

    def describe(self, config: ClusterConfig) -> dict[str, str]:
        return {
            "target": f"local machine ({os.uname().nodename})",
            "workers": f"{self.capacity(config)} ({config.local_executor} executor)",
        }

    def submit(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
    ) -> Submitted:
        executor = self.executor(config)
        folder = self.checkpoint_folder()

        def start(item: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ClusterFuture:
            place = checkpoints.call_file(folder, item)

            def once() -> ClusterFuture:
                return executor.submit_call(
                    func, args, kwargs, timeout=spec.timeout, checkpoint=place
                )

            if spec.retries == 0:
                return once()
            return with_retries(once, spec.retries, _RETRIED_FAILURES + spec.retry_on)

        futures: list[ClusterFuture] = []
        try:
            for item, (args, kwargs) in enumerate(calls):
                futures.append(start(item, args, kwargs))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            checkpoints.remove_when_done(folder, futures)
        return Submitted(futures)

    def map(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
        *,
        return_exceptions: bool,
        progress: bool,
    ) -> list[Any]:
        if not calls:
            return []
        positional = all(kwargs is NO_KEYWORDS or not kwargs for _, kwargs in calls)
        if not (spec.timeout or spec.retries or progress) and positional:
            folder = self.checkpoint_folder()
            try:
                return self.executor(config).map(
                    func,
                    *columns(calls),
                    chunksize=spec.chunksize,
                    return_exceptions=return_exceptions,
                    checkpoints=folder,
                )
            finally:
                checkpoints.remove_if_empty(folder)
        # Per-call deadlines, re-runs and a bar need one future per call, not batches.
        submitted = self.submit(func, calls, spec, config)
        try:
            return gather(
                submitted.futures,
                return_exceptions=return_exceptions,
                progress=progress,
                description=getattr(func, "__name__", "call"),
            )
        except BaseException:
            # Ctrl-C while waiting: no call that has not started starts afterwards.
            submitted.cancel()
            raise


def with_retries(
    start: Callable[[], ClusterFuture], retries: int, retried: tuple[type[BaseException], ...]
) -> ClusterFuture:
    """Re-run a call that failed with one of ``retried``, up to ``retries`` more times."""
    first = start()
    outer = ClusterFuture(first.name, first.backend)
    current = {"future": first}
    outer.bind_cancel(lambda: current["future"].cancel())

    def on_done(done: ClusterFuture) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
            return
        error = done.exception()
        if isinstance(error, retried) and outer.attempts <= retries:
            outer.attempts += 1
            logger.warning(
                "retrying %s (attempt %d of %d): %s",
                outer.name,
                outer.attempts,
                retries + 1,
                str(error).splitlines()[0],
            )
            current["future"] = start()
            current["future"].add_done_callback(on_done)
        elif error is not None:
            outer.set_exception(error)
        else:
            outer.set_result(done.result())

    first.add_done_callback(on_done)
    return outer
