"""``clustrix.pool(...)``: warm workers for many short calls, on any backend.

    with clustrix.pool(workers=4, cores=1, memory="2GB", time="01:00:00") as pool:
        values = simulate.map(range(10_000))     # @cluster functions go to the workers
        future = pool.submit(other, 3)           # so does anything submitted to the pool

A ``WorkerPool`` is a ``concurrent.futures.Executor``. On a cluster its workers are one job
array running Clustrix's worker loop (``clustrix.pools.worker``); calls reach them through a
folder on the cluster and the client's own SSH connection, so nothing connects back to the
client. On ``cluster_type="local"`` it is a process pool of its own.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..calls import NO_KEYWORDS, CallSpec
from ..config import ARGUMENT_SETTINGS, check_argument, resolve_config
from ..errors import ConfigError
from ..futures import ClusterFuture
from ..resources import RESOURCE_ARGUMENTS, Resources, parse_time
from . import routing
from .cluster import ClusterWorkers
from .local import LocalWorkers

__all__ = ["WorkerPool", "pool"]

_open: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def pool(
    workers: int = 4,
    cores: int = 1,
    memory: str | int | None = "2GB",
    time: str | int | None = "01:00:00",
    idle_timeout: str | int = "00:05:00",
    **options: Any,
) -> WorkerPool:
    """Start a pool of ``workers`` warm workers, each with ``cores``, ``memory`` and ``time``
    (its walltime, in any form ``@cluster``'s ``time`` takes); see ``WorkerPool``."""
    return WorkerPool(
        workers=workers,
        cores=cores,
        memory=memory,
        time=time,
        idle_timeout=idle_timeout,
        **options,
    )


class WorkerPool(cf.Executor):
    """Long-lived workers that run calls in milliseconds instead of a queue wait each.

    ``workers`` workers start at once, each a job (one job array) asking for ``cores``,
    ``memory`` and ``time``; ``idle_timeout`` is how long a worker waits for work before it
    leaves. Other keyword arguments are those of ``@cluster``: scheduler options
    (``partition=``, ``account=``...), ``profile``, ``environment``, ``retries`` and
    ``timeout`` (for calls submitted to the pool itself).

    Inside ``with pool:``, every call of a ``@cluster`` function on the pool's cluster runs
    on its workers, unless it asks for more cores, memory, GPUs or time than a worker has:
    that call is submitted as a job, as without a pool, and a log line says why. Leaving the
    block waits for the pool's calls, then stops it: its worker jobs are cancelled and its
    folder removed. Ctrl-C in the block cancels the calls not started yet.

    A worker never starts a call whose ``time`` would not fit in its remaining walltime;
    workers near their end are replaced while calls wait; a worker lost mid-call (scancel,
    node failure, out of memory) gives its call to another worker (counting against the
    call's ``retries``) or fails it with ``WorkerCrashedError``.

    Raises ``ConfigError`` for an argument that is not allowed, and the backend's errors
    (``ConnectionFailedError``, ``EnvironmentSetupError``...) if the workers cannot start.
    """

    def __init__(
        self,
        workers: int = 4,
        cores: int = 1,
        memory: str | int | None = "2GB",
        time: str | int | None = "01:00:00",
        idle_timeout: str | int = "00:05:00",
        **options: Any,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(
                f"workers={workers!r} is not valid: expected a whole number of at least 1",
                field="workers",
                value=workers,
            )
        self.idle_timeout = parse_time(idle_timeout, field="idle_timeout")
        profile, self.timeout, environment = (
            _checked(name, options.pop(name, None))
            for name in ("profile", "timeout", "environment")
        )
        self.retries = _checked("retries", options.pop("retries", None)) or 0
        given = {"cores": cores, "memory": memory, "time": time}
        for name in ("gpus", "partition", "queue"):
            given[name] = options.pop(name, None)
        checked = {n: check_argument(n, v) for n, v in given.items() if v is not None}
        self.resources = Resources.parse(**checked)
        overrides = {ARGUMENT_SETTINGS[n]: v for n, v in checked.items() if n in ARGUMENT_SETTINGS}
        config = resolve_config(profile, overrides).config
        job_name = options.pop("job_name", None) or f"clustrix-pool-w{workers}"
        self._spec = CallSpec(
            resources=self.resources,
            environment=environment,
            job_name=job_name,
            options=options,
            chunksize=1,
            requested=frozenset(n for n in RESOURCE_ARGUMENTS if n in checked),
        )
        self.size = workers
        self._shutdown = False
        self._closed = False
        self._lock = threading.Lock()
        if config.cluster_type == "local":
            self._workers: Any = LocalWorkers(config, workers)
        else:
            from ..remote.backend import cluster_backend

            self._workers = ClusterWorkers(
                cluster_backend(config), config, self._spec, workers, self.idle_timeout
            )
        self.pool_id: str = self._workers.pool_id
        _open.add(self)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "open"
        return f"<WorkerPool {self.pool_id}: {self.size} workers, {state}>"

    # ------------------------------------------------------------------ as an executor

    def _call_spec(self) -> CallSpec:
        return CallSpec(
            resources=self.resources, retries=self.retries, timeout=self.timeout, chunksize=None
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ClusterFuture:
        """Run ``fn(*args, **kwargs)`` on a worker; its future at once."""
        self._check_open()
        calls = [(args, kwargs or NO_KEYWORDS)]
        return self._workers.run_calls(fn, calls, self._call_spec()).futures[0]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: results in order, the first exception raised when reached.

        The calls travel in tasks of ``chunksize`` calls (default: a few tasks per worker).
        """
        self._check_open()
        calls = [(tuple(items), NO_KEYWORDS) for items in zip(*iterables, strict=False)]
        if not calls:
            return iter(())
        spec = self._call_spec()
        if chunksize is not None:
            spec = CallSpec(**{**spec.__dict__, "chunksize": chunksize})
        futures = self._workers.run_calls(fn, calls, spec).futures
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            try:
                for future in futures:
                    left = None if deadline is None else deadline - time.monotonic()
                    yield future.result(timeout=left)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the pool: its worker jobs are cancelled and its folder removed.

        As with ``concurrent.futures``: ``wait`` returns once the calls given to the pool have
        finished and the pool is stopped; without it, the call returns at once and the pool
        stops once they have finished. ``cancel_futures`` cancels the calls not finished
        instead, and stops the pool at once.
        """
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        routing.deactivate(self._workers)
        if cancel_futures:
            self._close(cancel=True)
        elif wait:
            self._workers.wait()
            self._close(cancel=False)
        else:
            threading.Thread(target=self._finish, name="clustrix-pool-closing", daemon=True).start()

    def _finish(self) -> None:
        self._workers.wait()
        self._close(cancel=False)

    def _close(self, *, cancel: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._workers.close(cancel=cancel)
        _open.discard(self)

    def __enter__(self) -> WorkerPool:
        self._check_open()
        routing.activate(self._workers)
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self.shutdown(wait=not interrupted, cancel_futures=interrupted)

    # ------------------------------------------------------------------ looking at it

    def status(self) -> dict[str, Any]:
        """``{"workers", "busy", "idle", "time_left" (s), "calls_done", "pending"}`` now:
        ``pending`` counts the calls given to the pool and not finished (queued or running);
        the worker figures come from heartbeats written every second."""
        return self._workers.status()

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")


def _checked(name: str, value: Any) -> Any:
    """``check_argument``'s value; None stands for an argument not given."""
    return None if value is None else check_argument(name, value)


@atexit.register
def _stop_open_pools() -> None:
    """A pool left open when the program ends is stopped, so its workers do not idle on."""
    for open_pool in list(_open):
        open_pool.shutdown(wait=False, cancel_futures=True)
        open_pool._close(cancel=True)  # one shut down without waiting, still finishing
