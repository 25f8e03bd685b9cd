"""``clustrix.Executor``: the ``concurrent.futures`` interface over any Clustrix backend.

Code written for ``ProcessPoolExecutor`` works unchanged: ``submit`` returns futures that
``wait`` and ``as_completed`` understand, ``map`` yields results in order (on a cluster, the
whole map is one job array), and ``shutdown`` waits for or cancels what is left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures as cf
from typing import Any

from .decorator import ClusterFunction
from .futures import ClusterFuture
from .local import LocalExecutor


def _apply_chunk(func: Callable[..., Any], chunk: list[tuple]) -> list[Any]:
    return [func(*items) for items in chunk]


class Executor(cf.Executor):
    """Runs submitted functions where the configuration says: local cores or a cluster.

    Keyword arguments are those of ``@cluster`` (cores, memory, time, partition, queue,
    environment, retries, profile, scheduler options...), applied to every call.
    """

    def __init__(self, **options: Any) -> None:
        ClusterFunction(len, **options)  # validate the options now, not at the first submit
        self._options = options
        self._futures: set[cf.Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def _wrap(self, fn: Callable[..., Any]) -> ClusterFunction:
        return fn if isinstance(fn, ClusterFunction) else ClusterFunction(fn, **self._options)

    def _remember(self, future: cf.Future) -> None:
        with self._lock:
            if self._shutdown:
                future.cancel()
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: cf.Future) -> None:
        with self._lock:
            self._futures.discard(future)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ClusterFuture:
        """Start ``fn(*args, **kwargs)`` with this executor's options; its future at once.

        The future cancels the job behind it, so ``shutdown(cancel_futures=True)`` reaches the
        cluster too.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = self._wrap(fn).submit(*args, **kwargs)
        self._remember(future)
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: results in order, the first exception raised when reached."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        wrapped = self._wrap(fn)
        calls = [tuple(items) for items in zip(*iterables, strict=False)]
        config = wrapped.effective_config()
        if config.cluster_type != "local":
            job = wrapped._submit_remote(config, [(c, {}) for c in calls], chunksize)
            item_futures = [f for task in job.tasks for f in task.futures]
            for future in item_futures:
                self._remember(future)
            return self._results(item_futures, deadline, chunked=False)
        executor = LocalExecutor(kind="inline") if not calls else wrapped._local_executor(config)
        chunk_futures = [
            executor.submit_call(_apply_chunk, (wrapped.__wrapped__, calls[i : i + chunksize]))
            for i in range(0, len(calls), chunksize)
        ]
        for future in chunk_futures:
            self._remember(future)
        return self._results(chunk_futures, deadline, chunked=True)

    @staticmethod
    def _results(
        futures: list[cf.Future], deadline: float | None, *, chunked: bool
    ) -> Iterator[Any]:
        def generate() -> Iterator[Any]:
            try:
                for future in futures:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError("map did not finish within its timeout")
                    value = future.result(timeout=remaining)
                    if chunked:
                        yield from value
                    else:
                        yield value
            finally:
                for future in futures:
                    future.cancel()

        return generate()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; wait for what is running, or cancel it with ``cancel_futures``.

        Cancelling cancels the remote jobs themselves, not only the local bookkeeping.
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            cf.wait(pending)
