"""Calls whose loops run in parallel: the rewritten versions of a function, and how they run.

With ``parallel=True`` a call's body runs in this process (in a loop thread) and its safe
loops spread their iterations over worker processes; inside a cluster job, over the job's
cores. With ``parallel="array"`` each loop the body reaches becomes a job array of its own.
The rewriting itself is ``clustrix.loops``; this module picks the version a call needs and
remembers it, so a function is analysed once per setting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Any

from .config import ClusterConfig
from .local import available_cores
from .resources import Resources

#: ``make_executor(arguments)``: an executor with these decorator arguments.
ExecutorFactory = Callable[[dict[str, Any]], Any]

_CACHE_LIMIT = 64


class LoopVersions:
    """The loop-parallel versions of the functions one executor runs, made once each."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], Callable[..., Any] | None] = {}
        self._lock = threading.Lock()

    def _remember(self, key: tuple[Any, ...], make: Callable[[], Callable[..., Any]]) -> Any:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        version = make()
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = None if version is key[0] else version
            return self._cache[key]

    def parallel(
        self,
        func: Callable[..., Any],
        wanted: Any,
        config: ClusterConfig,
        pure: tuple[Callable[..., Any], ...] = (),
        *,
        in_job: bool = False,
    ) -> Callable[..., Any] | None:
        """``func`` with its safe loops parallelised, if asked for and if it has any.

        ``wanted`` is the ``parallel`` argument (``auto_parallel`` when it is None). Locally
        the workers are the requested cores, or all local cores when only one was requested;
        in a cluster job (``in_job``) they are the cores the job requests, so one core means
        the loops stay sequential there. ``pure`` are functions declared pure by the user.
        """
        wanted = wanted if wanted is not None else config.auto_parallel
        if not wanted or wanted == "array":
            return None
        cores = Resources.parse(cores=config.default_cores).cores
        if in_job:
            if cores < 2:
                return None
            workers = cores
        else:
            workers = min(cores, available_cores()) if cores > 1 else available_cores()
        threshold = config.local_parallel_threshold

        def make() -> Callable[..., Any]:
            from .loops import parallelize

            return parallelize(func, workers=workers, threshold=threshold, pure=pure)

        return self._remember((func, in_job, workers, threshold, pure), make)

    def array(
        self,
        func: Callable[..., Any],
        arguments: dict[str, Any],
        pure: tuple[Callable[..., Any], ...],
        make_executor: ExecutorFactory,
    ) -> Callable[..., Any] | None:
        """With ``parallel="array"``: ``func`` whose safe loops become job arrays.

        The body runs in the caller; each loop's iterations are calls of an executor with
        the decorator's ``arguments`` (resources, environment, retries), mapped as one array.
        """

        def make() -> Callable[..., Any]:
            from .loops import parallelize
            from .loops.distribute import ArrayLoopRunner

            def submit_map(iteration: Callable[[Any], Any], items: Any) -> list[Any]:
                return ArrayCall.current().map(iteration, items, arguments, make_executor)

            return parallelize(
                func,
                runner_factory=lambda chunk, info: ArrayLoopRunner(chunk, submit_map),
                pure=pure,
            )

        return self._remember((func, "array", pure), make)


class ArrayCall:
    """One call of a ``parallel="array"`` function, so that cancelling it cancels its arrays.

    The body runs in a loop thread; each loop it reaches maps its iterations through an
    executor registered here, which ``cancel`` (from the caller's future, on Ctrl-C say)
    shuts down with its jobs.
    """

    _local = threading.local()

    def __init__(self) -> None:
        self._executors: list[Any] = []
        self._cancelled = False
        self._lock = threading.Lock()

    @classmethod
    def current(cls) -> ArrayCall:
        return getattr(cls._local, "call", None) or cls()

    def run(self, func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        ArrayCall._local.call = self
        try:
            return func(*args, **kwargs)
        finally:
            ArrayCall._local.call = None

    def map(
        self,
        iteration: Callable[[Any], Any],
        items: list[Any],
        arguments: dict[str, Any],
        make_executor: ExecutorFactory,
    ) -> list[Any]:
        """Each item's result, or the exception of the first failing item (and nothing after)."""
        executor = make_executor(arguments)
        config = executor.effective_config()
        if executor.backend(config).is_local:  # nothing outlives the process: no job to cancel
            return executor.map_calls(
                iteration, [((item,), {}) for item in items], return_exceptions=True
            )
        with self._lock:
            if self._cancelled:
                raise CancelledError()
            self._executors.append(executor)
        per_task = max(1, -(-len(items) // config.max_parallel_jobs))
        outcomes: list[Any] = []
        try:
            for value in executor.map(iteration, items, chunksize=per_task):
                outcomes.append(value)
        except Exception as exc:  # the first failing iteration, in order
            outcomes.append(exc)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        return outcomes

    def cancel(self) -> bool:
        with self._lock:
            self._cancelled = True
            executors = list(self._executors)
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)
        return True


_loop_thread_pool: ThreadPoolExecutor | None = None
_loop_thread_lock = threading.Lock()


def loop_threads() -> ThreadPoolExecutor:
    """Threads that run bodies whose loops are parallelised (the work is in processes)."""
    global _loop_thread_pool
    with _loop_thread_lock:
        if _loop_thread_pool is None:
            _loop_thread_pool = ThreadPoolExecutor(
                available_cores(), thread_name_prefix="clustrix-loops"
            )
        return _loop_thread_pool
