"""``@cluster``: the decorator that sends a function's calls elsewhere.

The decorated object behaves like the function (name, docstring, signature, picklability) and
adds ``submit`` and ``map``. Decorator arguments are validated when the decorator is applied;
the rest of the configuration is resolved at each call, so ``configure()`` after decoration
takes effect, and a call never changes the global configuration.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import operator
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Any, TypeVar, overload

import cloudpickle

from .config import ClusterConfig, resolve_config
from .errors import ConfigError, NodeFailureError, WorkerCrashedError
from .futures import ClusterFuture
from .jobs import RemoteJob
from .local import KINDS, LocalExecutor, available_cores, in_worker, shared_executor
from .local.executor import chain_native
from .payload import pickling_for_remote
from .progress import gather, wanted
from .remote import backend_for
from .resources import Resources

logger = logging.getLogger("clustrix")

F = TypeVar("F", bound=Callable[..., Any])

# Decorator arguments that override a configuration setting of another name.
_ARGUMENT_SETTINGS = {
    "cores": "default_cores",
    "memory": "default_memory",
    "time": "default_time",
    "partition": "default_partition",
    "queue": "default_queue",
    "executor": "local_executor",
}


def _check_optional_number(name: str, value: Any, minimum: float, integer: bool) -> None:
    if value is None:
        return
    kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not kind_ok or value < minimum:
        expected = "an integer" if integer else "a number"
        raise ConfigError(
            f"{name}={value!r} is not valid: expected {expected} >= {minimum:g}",
            field=name,
            value=value,
        )


def _check_environment(value: Any) -> None:
    if value is None or (isinstance(value, str) and value.strip()):
        return
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return
    raise ConfigError(
        f"environment={value!r} is not valid: expected 'auto', a requirements file path, "
        "or a list of requirement strings",
        field="environment",
        value=value,
    )


class ClusterFunction:
    """A function whose calls run where the configuration says, with the same results."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        cores: int | None = None,
        memory: str | int | None = None,
        time: str | int | None = None,
        partition: str | None = None,
        queue: str | None = None,
        parallel: bool | str | None = None,
        pure: Iterable[Callable[..., Any]] | None = None,
        environment: str | list[str] | None = None,
        gpus: int | None = None,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        timeout: float | None = None,
        profile: str | None = None,
        executor: str | None = None,
        **scheduler_options: Any,
    ) -> None:
        if not callable(func):
            raise ConfigError(f"@cluster needs a function, got {func!r}", field="func", value=func)
        functools.update_wrapper(self, func)
        arguments = {
            "cores": cores,
            "memory": memory,
            "time": time,
            "partition": partition,
            "queue": queue,
            "executor": executor,
        }
        # Parse the resource spellings now, so a typo fails at decoration, not at submission.
        Resources.parse(
            cores=1 if cores is None else cores,
            memory=memory,
            time=time,
            gpus=0 if gpus is None else gpus,
            partition=partition,
            queue=queue,
        )
        if executor is not None and executor not in KINDS:
            raise ConfigError(
                f"executor={executor!r} is not valid: expected one of {', '.join(KINDS)}",
                field="executor",
                value=executor,
            )
        if parallel is not None and not isinstance(parallel, bool) and parallel != "array":
            raise ConfigError(
                f"parallel={parallel!r} is not valid: expected True, False, 'array' or None",
                field="parallel",
                value=parallel,
            )
        if pure is not None and not isinstance(pure, (str, bytes)):
            pure = tuple(pure) if isinstance(pure, Iterable) else pure
        if pure is not None and (not isinstance(pure, tuple) or not all(map(callable, pure))):
            raise ConfigError(
                f"pure={pure!r} is not valid: expected a list of functions",
                field="pure",
                value=pure,
            )
        _check_environment(environment)
        _check_optional_number("retries", retries, 0, integer=True)
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ConfigError(
                f"retry_on={retry_on!r} is not valid: expected exception classes",
                field="retry_on",
                value=retry_on,
            )
        _check_optional_number("timeout", timeout, 0.001, integer=False)
        if profile is not None and (not isinstance(profile, str) or not profile):
            raise ConfigError(
                f"profile={profile!r} is not valid: expected a profile name",
                field="profile",
                value=profile,
            )
        self._overrides = {
            _ARGUMENT_SETTINGS[name]: value
            for name, value in arguments.items()
            if value is not None
        }
        self.parallel = parallel
        self.pure = tuple(pure or ())
        self.environment = environment
        self.gpus = gpus or 0
        self.retries = retries
        self.retry_on = tuple(retry_on)
        self.timeout = timeout
        self.profile = profile
        self.scheduler_options: Mapping[str, Any] = dict(scheduler_options)

    # ------------------------------------------------------------------ behaving like the function

    def __repr__(self) -> str:
        return f"<cluster function {self.__qualname__}>"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        bound = ClusterFunction.__new__(ClusterFunction)
        bound.__dict__.update(self.__dict__)
        bound.__dict__.pop("_parallel_cache", None)  # versions of the unbound function
        bound.__wrapped__ = self.__wrapped__.__get__(instance, owner)
        return bound

    def __reduce__(self) -> Any:
        if pickling_for_remote():
            # Rebuilt with a stdlib callable, so the job side needs no Clustrix.
            return operator.itemgetter(0), ((self.__wrapped__,),)
        if inspect.ismethod(self.__wrapped__):
            # A decorated method bound to its instance: that attribute of the pickled instance.
            owner, name = self.__wrapped__.__self__, self.__wrapped__.__func__.__name__
            if isinstance(inspect.getattr_static(type(owner), name, None), ClusterFunction):
                return getattr, (owner, name)
        # As pickle does for any function: a reference to the module attribute holding it,
        # also in a script's __main__. cloudpickle copies the functions of __main__ (the
        # process loading them may run another __main__) and of modules registered with it by
        # value instead, and so does this. Not reachable by name (closures, lambdas): rebuilt
        # from the wrapped function and the decorator's arguments.
        if _reachable_by_name(self) and not (
            _copied_by_cloudpickle(self.__module__) and _cloudpickle_at_work()
        ):
            return self.__qualname__
        return (_rebuild, (self.__wrapped__, self._decorator_arguments()))

    def _decorator_arguments(self) -> dict[str, Any]:
        names = {setting: argument for argument, setting in _ARGUMENT_SETTINGS.items()}
        arguments = {names[setting]: value for setting, value in self._overrides.items()}
        arguments.update(
            parallel=self.parallel,
            pure=self.pure or None,
            environment=self.environment,
            gpus=self.gpus or None,
            retries=self.retries,
            retry_on=self.retry_on,
            timeout=self.timeout,
            profile=self.profile,
            **self.scheduler_options,
        )
        return arguments

    # ------------------------------------------------------------------ configuration

    def effective_config(self) -> ClusterConfig:
        """The settings a call made now would use (files, environment, configure(), arguments)."""
        return resolve_config(self.profile, self._overrides).config

    def resources(self, config: ClusterConfig | None = None) -> Resources:
        """The normalised resource request of a call made now."""
        config = config or self.effective_config()
        return Resources.parse(
            cores=config.default_cores,
            memory=config.default_memory,
            time=config.default_time,
            gpus=self.gpus,
            partition=config.default_partition,
            queue=config.default_queue,
        )

    def _local_executor(self, config: ClusterConfig) -> LocalExecutor:
        workers = min(available_cores(), config.max_parallel_jobs)
        return shared_executor(workers, config.local_executor)

    def _submit_remote(
        self, config: ClusterConfig, calls: list[tuple[tuple, dict]], chunksize: int | None = None
    ) -> RemoteJob:
        # Safe loops spread over the job's cores; the job gets Clustrix's loop runner with it.
        func = self._parallel_version(config, in_job=True) or self.__wrapped__
        return backend_for(config).submit(
            func,
            calls,
            config=config,
            resources=self.resources(config),
            environment=self.environment,
            options=self.scheduler_options,
            chunksize=chunksize,
            retries=self.retries,
            retry_on=self.retry_on,
        )

    def _parallel_version(
        self, config: ClusterConfig, *, in_job: bool = False
    ) -> Callable[..., Any] | None:
        """The function with its safe loops parallelised, if asked for and if it has any.

        ``parallel=True`` (or ``auto_parallel`` when ``parallel`` is not given) asks. Locally
        the workers are the requested cores, or all local cores when only one was requested;
        in a cluster job (``in_job``) they are the cores the job requests, so one core means
        the loops stay sequential there.
        """
        wanted = self.parallel if self.parallel is not None else config.auto_parallel
        if not wanted or wanted == "array":
            return None
        cores = Resources.parse(cores=config.default_cores).cores
        if in_job:
            if cores < 2:
                return None
            workers = cores
        else:
            workers = min(cores, available_cores()) if cores > 1 else available_cores()
        key = (in_job, workers, config.local_parallel_threshold)
        cache = self.__dict__.setdefault("_parallel_cache", {})
        if key not in cache:
            from .loops import parallelize

            version = parallelize(
                self.__wrapped__,
                workers=workers,
                threshold=config.local_parallel_threshold,
                pure=self.pure,
            )
            cache[key] = None if version is self.__wrapped__ else version
        return cache[key]

    def _array_version(self) -> Callable[..., Any] | None:
        """With ``parallel="array"``: the function whose safe loops become job arrays.

        The body runs in the caller; each loop's iterations are calls of a function built with
        this decorator's options (resources, environment, retries), mapped as one array.
        """
        cache = self.__dict__.setdefault("_parallel_cache", {})
        if "array" not in cache:
            from .loops import parallelize
            from .loops.distribute import ArrayLoopRunner

            arguments = {**self._decorator_arguments(), "parallel": False}
            arguments.setdefault("job_name", f"clustrix-{self.__name__}-loop")

            def submit_map(iteration: Callable[[Any], Any], items: Any) -> list[Any]:
                return _ArrayCall.current().map(iteration, items, arguments)

            version = parallelize(
                self.__wrapped__,
                runner_factory=lambda chunk, info: ArrayLoopRunner(chunk, submit_map),
                pure=self.pure,
            )
            cache["array"] = None if version is self.__wrapped__ else version
        return cache["array"]

    def explain(self, *args: Any, **kwargs: Any) -> str:
        """Each loop of the function with its verdict for parallel execution, and why.

        Arguments, if given, let range bounds that depend on them be counted. This only
        reads the source: nothing of the function runs.
        """
        from .loops import explain

        return explain(self.__wrapped__, args, kwargs, pure=self.pure)

    # ------------------------------------------------------------------ calling

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.parallel is True and not in_worker():
            config = self.effective_config()
            if config.cluster_type == "local":
                parallel_version = self._parallel_version(config)
                if parallel_version is not None:
                    # In the caller's thread, like the plain function: its per-thread state
                    # (decimal context, signal handlers) holds, and a loop that stays
                    # sequential is the original code running where it always would.
                    return parallel_version(*args, **kwargs)
        future = self.submit(*args, **kwargs)
        try:
            return future.result()
        except KeyboardInterrupt:
            if self.effective_config().cancel_on_interrupt:
                future.cancel()
            raise

    def submit(self, *args: Any, **kwargs: Any) -> ClusterFuture:
        """Start a call and return its future at once (remote: once the job is accepted)."""
        func = self.__wrapped__
        if in_worker():
            # Already inside a call Clustrix runs: nesting another pool would oversubscribe.
            return LocalExecutor(kind="inline").submit_call(func, args, kwargs)
        config = self.effective_config()
        if self.parallel == "array" and (array_version := self._array_version()) is not None:
            # The body runs here; each safe loop's iterations go out as one job array.
            future = ClusterFuture(self.__qualname__, f"{config.cluster_type}:loop-array")
            call = _ArrayCall()
            chain_native(_loop_threads().submit(call.run, array_version, args, kwargs), future)
            future.bind_cancel(call.cancel)
            return future
        if config.cluster_type != "local":
            # The backend resubmits tasks lost with their node (retries) by itself.
            return self._submit_remote(config, [(args, kwargs)]).tasks[0].futures[0]
        parallel_version = self._parallel_version(config)
        if parallel_version is not None:
            # The body runs in this process; its loop's iterations go to worker processes.
            future = ClusterFuture(self.__qualname__, "local:loops")
            chain_native(_loop_threads().submit(parallel_version, *args, **kwargs), future)
            return future
        executor = self._local_executor(config)

        def start() -> ClusterFuture:
            return executor.submit_call(func, args, kwargs, timeout=self.timeout)

        if self.retries == 0:
            return start()
        return _with_retries(start, self.retries, _RETRIED_FAILURES + self.retry_on)

    def map(
        self,
        iterable: Iterable[Any],
        *iterables: Iterable[Any],
        return_exceptions: bool = False,
        chunksize: int | None = None,
        progress: bool | None = None,
    ) -> list[Any]:
        """Call the function on each item (zipped across iterables); results in input order.

        On a cluster the calls become one job array (``chunksize`` calls per array task;
        by default enough to keep within ``max_parallel_jobs`` tasks). With
        ``return_exceptions=True`` a failing item's exception takes its place in the list;
        otherwise the first failure in input order is raised, and the job's other results
        stay available through ``clustrix.get_job``. ``progress`` shows a bar (default: the
        ``progress`` setting).
        """
        func = self.__wrapped__
        if in_worker():
            return LocalExecutor(kind="inline").map(
                func, iterable, *iterables, return_exceptions=return_exceptions
            )
        config = self.effective_config()
        if self.parallel == "array" and self._array_version() is not None:
            # Each call's body runs here and sends its loop out as an array of its own.
            return self._gather_calls(
                zip(iterable, *iterables, strict=False),
                return_exceptions=return_exceptions,
                progress=wanted(config.progress if progress is None else progress),
            )
        if config.cluster_type == "local":
            asked = config.progress if progress is None else progress
            shown = asked is True or asked == "on"  # "auto" keeps the batched path
            if not (self.timeout or self.retries or shown):
                return self._local_executor(config).map(
                    func,
                    iterable,
                    *iterables,
                    chunksize=chunksize,
                    return_exceptions=return_exceptions,
                )
            # Per-call deadlines, re-runs and a bar need one future per call, not batches.
            return self._gather_calls(
                zip(iterable, *iterables, strict=False),
                return_exceptions=return_exceptions,
                progress=shown,
            )
        calls = [(tuple(items), {}) for items in zip(iterable, *iterables, strict=False)]
        if not calls:
            return []
        job = self._submit_remote(config, calls, chunksize)
        futures = [future for task in job.tasks for future in task.futures]
        try:
            return gather(
                futures,
                return_exceptions=return_exceptions,
                progress=wanted(config.progress if progress is None else progress),
                description=self.__name__,
                counts=job.counts,
                on_error=f" {job.job_id}; all results: clustrix.get_job({job.job_id!r})"
                ".results(return_exceptions=True)",
            )
        except KeyboardInterrupt:
            if config.cancel_on_interrupt:
                backend_for(config).cancel_job(job)
            raise

    def _gather_calls(
        self, calls: Iterable[tuple[Any, ...]], *, return_exceptions: bool, progress: bool
    ) -> list[Any]:
        """Submit each call and wait for them all; an interrupt (Ctrl-C) while submitting or
        waiting cancels every call that has not started, so none starts afterwards."""
        futures: list[ClusterFuture] = []
        try:
            for items in calls:
                futures.append(self.submit(*items))
            return gather(
                futures,
                return_exceptions=return_exceptions,
                progress=progress,
                description=self.__name__,
            )
        except BaseException:
            for future in futures:
                future.cancel()
            raise


class _ArrayCall:
    """One call of a ``parallel="array"`` function, so that cancelling it cancels its arrays.

    The body runs in a loop thread; each loop it reaches maps its iterations through an
    ``Executor`` registered here, which ``cancel`` (from the caller's future, on Ctrl-C say)
    shuts down with its jobs.
    """

    _local = threading.local()

    def __init__(self) -> None:
        self._executors: list[Any] = []
        self._cancelled = False
        self._lock = threading.Lock()

    @classmethod
    def current(cls) -> _ArrayCall:
        return getattr(cls._local, "call", None) or cls()

    def run(self, func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        _ArrayCall._local.call = self
        try:
            return func(*args, **kwargs)
        finally:
            _ArrayCall._local.call = None

    def map(
        self, iteration: Callable[[Any], Any], items: list[Any], arguments: dict[str, Any]
    ) -> list[Any]:
        """Each item's result, or the exception of the first failing item (and nothing after)."""
        from .executor import Executor

        function = ClusterFunction(iteration, **arguments)
        config = function.effective_config()
        if config.cluster_type == "local":  # nothing outlives the process: no job to cancel
            return function.map(items, return_exceptions=True)
        executor = Executor(**arguments)
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


def _loop_threads() -> ThreadPoolExecutor:
    """Threads that run bodies whose loops are parallelised (the work is in processes)."""
    global _loop_thread_pool
    if _loop_thread_pool is None:
        _loop_thread_pool = ThreadPoolExecutor(
            available_cores(), thread_name_prefix="clustrix-loops"
        )
    return _loop_thread_pool


def _rebuild(func: Callable[..., Any], arguments: dict[str, Any]) -> ClusterFunction:
    return ClusterFunction(func, **arguments)


def _reachable_by_name(function: ClusterFunction) -> bool:
    """Whether ``module.qualname`` names this very object, as pickling by reference needs."""
    module_name = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module_name or not qualname or "<locals>" in qualname:
        return False
    try:
        target: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return False
    return target is function


def _copied_by_cloudpickle(module_name: str) -> bool:
    """Whether cloudpickle pickles this module's functions by value rather than by name."""
    if module_name == "__main__":
        return True
    registered = cloudpickle.list_registry_pickle_by_value()
    parts = module_name.split(".")
    return any(".".join(parts[:n]) in registered for n in range(1, len(parts) + 1))


def _cloudpickle_at_work() -> bool:
    """Whether the object being pickled now is pickled by cloudpickle, not by pickle.

    ``pickle.dumps`` runs in C and leaves no frame; cloudpickle's ``Pickler.dump`` is Python
    code, so its frame is on the stack while it pickles (a copy vendored by another package
    has the same file name).
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "dump" and os.path.basename(code.co_filename) == "cloudpickle.py":
            return True
        frame = frame.f_back
    return False


# Failures of the machine rather than of the call: running it again may well succeed.
_RETRIED_FAILURES = (WorkerCrashedError, NodeFailureError)


def _with_retries(
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


@overload
def cluster(func: F) -> ClusterFunction: ...
@overload
def cluster(
    func: None = None, **options: Any
) -> Callable[[Callable[..., Any]], ClusterFunction]: ...


def cluster(func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Run a function's calls on the configured backend: ``@cluster`` or ``@cluster(cores=8)``.

    Arguments: ``cores``, ``memory``, ``time``, ``partition``, ``queue``, ``gpus``,
    ``parallel``, ``environment``, ``retries`` (re-runs after a worker or node failure, and
    after the exception types listed in ``retry_on``),
    ``timeout`` (seconds), ``profile``, ``executor`` (local: auto, processes, threads, inline)
    and scheduler-specific options as further keywords.
    """
    if func is not None:
        return ClusterFunction(func, **options)

    def decorate(target: Callable[..., Any]) -> ClusterFunction:
        return ClusterFunction(target, **options)

    return decorate
