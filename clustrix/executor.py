"""``clustrix.Executor``: the core every call goes through, with the ``concurrent.futures`` API.

An executor holds the arguments of ``@cluster`` (resources, environment, retries, scheduler
options...). Each call resolves the configuration at that moment (files, ``CLUSTRIX_*``,
``configure()``, these arguments), picks the version of the function to run (its loops
parallelised, if asked), and hands the calls to ``backend_for(config)``. The decorator is a
thin layer over it; code written for ``ProcessPoolExecutor`` works unchanged: ``submit``
returns futures that ``wait`` and ``as_completed`` understand, ``map`` yields results in order
(on a cluster, the whole map is one job array), and ``shutdown`` waits for or cancels what
is left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures as cf
from typing import Any

from .backend import Backend, backend_for
from .cache import cached_batch, cached_call
from .calls import CallArgs, CallSpec, Submitted, columns
from .checkpointing import call_place, current_place, remove_saved
from .config import ARGUMENT_SETTINGS, ARGUMENT_SPECS, ClusterConfig, check_argument, resolve_config
from .futures import ClusterFuture, chain
from .local import LocalExecutor, in_worker
from .loopcalls import ArrayCall, LoopVersions, loop_threads
from .progress import gather, wanted
from .resources import RESOURCE_ARGUMENTS, Resources

# Arguments that are not settings, kept on the executor (``ARGUMENT_SETTINGS`` override one).
CALL_ARGUMENTS = tuple(ARGUMENT_SPECS)


def _apply_chunk(func: Callable[..., Any], chunk: list[tuple]) -> list[Any]:
    """The calls of one chunk of ``map``, run locally as one call.

    Each call gets a checkpoint place of its own, next to the chunk's (calls sharing one
    would restore each other's state), removed once the call has succeeded.
    """
    place = current_place()
    if place is None or len(chunk) == 1:
        return [func(*items) for items in chunk]
    stem = place.removesuffix(".pkl")
    results = []
    for index, items in enumerate(chunk):
        own = f"{stem}-{index}.pkl"
        with call_place(own):
            results.append(func(*items))
        remove_saved(own)
    return results


class Executor(cf.Executor):
    """Runs submitted functions where the configuration says: local cores or a cluster.

    Keyword arguments are those of ``@cluster`` (cores, memory, time, gpus, partition,
    queue, environment, retries, retry_on, timeout, profile, parallel, scheduler options
    such as ``account=`` or ``job_name=``), applied to every call. They are checked here,
    so a mistake raises ``ConfigError`` at once, not at the first submission.
    """

    def __init__(self, **options: Any) -> None:
        arguments = {name: options.pop(name, None) for name in CALL_ARGUMENTS}
        settings = {name: options.pop(name, None) for name in ARGUMENT_SETTINGS}
        # None means "not given" for every argument.
        checked = {
            name: None if value is None else check_argument(name, value)
            for name, value in arguments.items()
        }
        settings = {
            name: None if value is None else check_argument(name, value)
            for name, value in settings.items()
        }
        # Parse the resource spellings now, so a typo fails at once, not at submission.
        Resources.parse(
            **{k: v for k, v in settings.items() if k in RESOURCE_ARGUMENTS and v is not None}
        )
        self.parallel = checked["parallel"]
        self.pure: tuple[Callable[..., Any], ...] = checked["pure"] or ()
        self.environment = checked["environment"]
        self.retries = checked["retries"] or 0
        self.retry_on: tuple[type[BaseException], ...] = checked["retry_on"] or ()
        self.timeout = checked["timeout"]
        self.profile = checked["profile"]
        self.scheduler_options: Mapping[str, Any] = dict(options)
        self._overrides = {
            ARGUMENT_SETTINGS[name]: value for name, value in settings.items() if value is not None
        }
        self._settings = settings
        self._versions = LoopVersions()
        self._futures: set[cf.Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments this executor was made with (to make another like it)."""
        return {
            **{name: value for name, value in self._settings.items() if value is not None},
            "parallel": self.parallel,
            "pure": self.pure or None,
            "environment": self.environment,
            "retries": self.retries,
            "retry_on": self.retry_on,
            "timeout": self.timeout,
            "profile": self.profile,
            **self.scheduler_options,
        }

    def overrides(self) -> dict[str, Any]:
        """The settings these arguments override, by setting name (``cores`` ->
        ``default_cores``...): the top layer of a call's configuration."""
        return dict(self._overrides)

    # ------------------------------------------------------------------ what a call asks for

    def effective_config(self) -> ClusterConfig:
        """The settings a call made now would use (files, environment, configure(), arguments)."""
        return resolve_config(self.profile, self._overrides).config

    def resources(self, config: ClusterConfig | None = None) -> Resources:
        """The normalised resource request of a call made now."""
        config = config or self.effective_config()
        return Resources.from_settings(config)

    def spec(self, config: ClusterConfig, chunksize: int | None = None) -> CallSpec:
        """What a call made now asks of its backend."""
        options = dict(self.scheduler_options)
        return CallSpec(
            resources=self.resources(config),
            environment=self.environment,
            retries=self.retries,
            retry_on=self.retry_on,
            timeout=self.timeout,
            job_name=options.pop("job_name", None),
            options=options,
            chunksize=chunksize,
            requested=frozenset(
                name
                for name in RESOURCE_ARGUMENTS
                if name in self._settings and self._settings[name] is not None
            ),
        )

    def backend(self, config: ClusterConfig | None = None) -> Backend:
        return backend_for(config or self.effective_config())

    # ------------------------------------------------------------------ running calls

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ClusterFuture:
        """Start ``fn(*args, **kwargs)`` with this executor's options; its future at once
        (on a cluster: once the job is accepted). The future cancels the job behind it, so
        ``shutdown(cancel_futures=True)`` reaches the cluster too."""
        self._check_open()
        future = self.submit_call(fn, args, kwargs)
        self._remember(future)
        return future

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one call and return its value, as ``f(x)`` of a decorated function does.

        When its loops run in parallel on the local backend (``parallel=True``, or
        ``auto_parallel``), the body runs in the caller's thread, like the plain function:
        its per-thread state (decimal context, signal handlers) holds, and a loop that stays
        sequential is the original code running where it always would. Ctrl-C cancels the
        call (with ``cancel_on_interrupt``).
        """
        if in_worker():
            return self.submit_call(fn, args, kwargs).result()
        config = self.effective_config()
        cached = cached_call(fn, args, kwargs, config, self.environment)
        return cached.value if cached.hit else cached.save(self._call(fn, args, kwargs, config))

    def _call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: ClusterConfig,
    ) -> Any:
        if self.parallel not in (False, "array") and self.backend(config).is_local:
            version = self._versions.parallel(fn, self.parallel, config, self.pure)
            if version is not None:
                return version(*args, **kwargs)
        future = self._submit_call(fn, args, kwargs, config)
        try:
            return future.result()
        except KeyboardInterrupt:
            if config.cancel_on_interrupt:
                future.cancel()
            raise

    def submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ClusterFuture:
        """One call's future, without this executor keeping track of it."""
        if in_worker():
            # Already inside a call Clustrix runs: nesting another pool would oversubscribe.
            return LocalExecutor(kind="inline").submit_call(fn, args, kwargs)
        config = self.effective_config()
        cached = cached_call(fn, args, kwargs, config, self.environment)
        if cached.hit:
            return cached.future()
        return cached.save_when_done(self._submit_call(fn, args, kwargs, config))

    def _submit_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: ClusterConfig,
    ) -> ClusterFuture:
        array = self._array_version(fn, config)
        if array is not None:
            # The body runs here; each safe loop's iterations go out as one job array.
            future = ClusterFuture(_name(fn), f"{config.cluster_type}:loop-array")
            call = ArrayCall()
            chain(loop_threads().submit(call.run, array, args, kwargs), future)
            future.bind_cancel(call.cancel)
            return future
        backend = self.backend(config)
        if backend.is_local:
            parallel = self._versions.parallel(fn, self.parallel, config, self.pure)
            if parallel is not None:
                # The body runs in this process; its loops' iterations go to worker processes.
                future = ClusterFuture(_name(fn), "local:loops")
                chain(loop_threads().submit(parallel, *args, **kwargs), future)
                return future
        return self._submit(backend, fn, [(args, kwargs)], config).futures[0]

    def submit_calls(
        self, fn: Callable[..., Any], calls: Sequence[CallArgs], chunksize: int | None = None
    ) -> Submitted:
        """Start many calls at once: on a cluster one job array (``chunksize`` calls per
        task), locally a future per call."""
        config = self.effective_config()
        backend = self.backend(config)
        batch = cached_batch(fn, calls, config, self.environment)
        return batch.submit(lambda misses: self._submit(backend, fn, misses, config, chunksize))

    def _submit(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        calls: Sequence[CallArgs],
        config: ClusterConfig,
        chunksize: int | None = None,
    ) -> Submitted:
        if not backend.is_local:
            # Safe loops spread over the job's cores; the job gets Clustrix's loop runner.
            fn = self._versions.parallel(fn, self.parallel, config, self.pure, in_job=True) or fn
        return backend.submit(fn, calls, self.spec(config, chunksize), config)

    def map_calls(
        self,
        fn: Callable[..., Any],
        calls: Sequence[CallArgs],
        *,
        return_exceptions: bool = False,
        chunksize: int | None = None,
        progress: bool | str | None = None,
    ) -> list[Any]:
        """Run the calls and return their values in call order (``@cluster``'s ``map``).

        On a cluster the calls are one job array. With ``return_exceptions`` a failing
        call's exception takes its place; otherwise the first failure in call order is
        raised. ``progress`` shows a bar (default: the ``progress`` setting).
        """
        if in_worker():
            if not calls:
                return []
            inline = LocalExecutor(kind="inline")
            return inline.map(fn, *columns(calls), return_exceptions=return_exceptions)
        config = self.effective_config()
        backend = self.backend(config)
        shown = _progress_wanted(config, progress, local=backend.is_local)
        if self._array_version(fn, config) is not None:
            # Each call's body runs here and sends its loop out as an array of its own.
            futures: list[ClusterFuture] = []
            try:
                for args, kwargs in calls:
                    futures.append(self.submit_call(fn, args, kwargs))
                return gather(
                    futures,
                    return_exceptions=return_exceptions,
                    progress=shown,
                    description=_name(fn),
                )
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        if not backend.is_local:
            fn = self._versions.parallel(fn, self.parallel, config, self.pure, in_job=True) or fn
        spec = self.spec(config, chunksize)
        return cached_batch(fn, calls, config, self.environment).map(
            lambda misses: backend.map(
                fn, misses, spec, config, return_exceptions=return_exceptions, progress=shown
            ),
            return_exceptions=return_exceptions,
        )

    def _array_version(self, fn: Callable[..., Any], config: ClusterConfig) -> Any:
        if self.parallel != "array":
            return None
        arguments = {**self.arguments(), "parallel": False}
        arguments.setdefault("job_name", f"clustrix-{_name(fn).split('.')[-1]}-loop")
        return self._versions.array(fn, arguments, self.pure, lambda options: type(self)(**options))

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: results in order, the first exception raised when reached."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = [tuple(items) for items in zip(*iterables, strict=False)]
        config = self.effective_config()
        backend = self.backend(config)
        if config.cache or not backend.is_local:  # the cache looks calls up one by one
            futures = self.submit_calls(fn, [(c, {}) for c in calls], chunksize).futures
        else:
            chunks = [((fn, calls[i : i + chunksize]), {}) for i in range(0, len(calls), chunksize)]
            futures = backend.submit(_apply_chunk, chunks, self.spec(config), config).futures
        for future in futures:
            self._remember(future)
        return _results(futures, deadline, chunked=backend.is_local and not config.cache)

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

    # ------------------------------------------------------------------ bookkeeping

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

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


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _progress_wanted(config: ClusterConfig, asked: bool | str | None, *, local: bool) -> bool:
    """Whether to show a bar: asked here, else the ``progress`` setting (``auto``: in a
    terminal or a notebook, for cluster work; locally it keeps the batched path)."""
    asked = config.progress if asked is None else asked
    if local:
        return asked is True or asked == "on"
    return wanted(asked)


def _results(futures: list[cf.Future], deadline: float | None, *, chunked: bool) -> Iterator[Any]:
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
