"""``@cluster``: the decorator that sends a function's calls elsewhere.

The decorated object behaves like the function (name, docstring, signature, picklability) and
adds ``submit``, ``submit_map``, ``map`` and ``explain``. It is a thin layer over
``clustrix.Executor``, which checks the decorator's arguments when the decorator is applied
and resolves the rest of the configuration at each call, so ``configure()`` after decoration
takes effect, and a call never changes the global configuration.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import operator
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

import cloudpickle

from .calls import NO_KEYWORDS
from .config import ClusterConfig
from .errors import ConfigError
from .executor import Executor
from .futures import ClusterFuture
from .payload import pickling_for_remote
from .resources import Resources

F = TypeVar("F", bound=Callable[..., Any])


class ClusterFunction:
    """A function whose calls run where the configuration says, with the same results."""

    def __init__(self, func: Callable[..., Any], **options: Any) -> None:
        if not callable(func):
            raise ConfigError(f"@cluster needs a function, got {func!r}", field="func", value=func)
        functools.update_wrapper(self, func)
        self._executor = Executor(**options)

    # The decorator's arguments, as checked by the executor.
    parallel = property(lambda self: self._executor.parallel)
    pure = property(lambda self: self._executor.pure)
    environment = property(lambda self: self._executor.environment)
    retries = property(lambda self: self._executor.retries)
    retry_on = property(lambda self: self._executor.retry_on)
    timeout = property(lambda self: self._executor.timeout)
    profile = property(lambda self: self._executor.profile)
    scheduler_options = property(lambda self: self._executor.scheduler_options)

    # ------------------------------------------------------------------ behaving like the function

    def __repr__(self) -> str:
        return f"<cluster function {self.__qualname__}>"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        bound = ClusterFunction.__new__(ClusterFunction)
        bound.__dict__.update(self.__dict__)
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
        return (_rebuild, (self.__wrapped__, self._executor.arguments()))

    # ------------------------------------------------------------------ configuration

    def effective_config(self) -> ClusterConfig:
        """The settings a call made now would use (files, environment, configure(), arguments)."""
        return self._executor.effective_config()

    def resources(self, config: ClusterConfig | None = None) -> Resources:
        """The normalised resource request of a call made now."""
        return self._executor.resources(config)

    def explain(self, *args: Any, **kwargs: Any) -> str:
        """Each loop of the function with its verdict for parallel execution, and why.

        Arguments, if given, let range bounds that depend on them be counted. This only
        reads the source: nothing of the function runs.
        """
        from .loops import explain

        return explain(self.__wrapped__, args, kwargs, pure=self.pure)

    # ------------------------------------------------------------------ calling

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._executor.call(self.__wrapped__, args, kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> ClusterFuture:
        """Start a call and return its future at once (remote: once the job is accepted)."""
        return self._executor.submit_call(self.__wrapped__, args, kwargs)

    def submit_map(
        self, iterable: Iterable[Any], *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[ClusterFuture]:
        """Start a call per item (zipped across iterables) and return their futures at once,
        in item order: on a cluster one job array, like ``map``, without waiting for it."""
        calls = [(items, NO_KEYWORDS) for items in zip(iterable, *iterables, strict=False)]
        if not calls:
            return []
        return self._executor.submit_calls(self.__wrapped__, calls, chunksize).futures

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
        calls = [(items, NO_KEYWORDS) for items in zip(iterable, *iterables, strict=False)]
        return self._executor.map_calls(
            self.__wrapped__,
            calls,
            return_exceptions=return_exceptions,
            chunksize=chunksize,
            progress=progress,
        )


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
    ``timeout`` (seconds), ``profile``, ``executor`` (local: auto, processes, threads, inline),
    ``cache`` (return stored values of identical calls; the ``cache`` setting),
    ``requeue`` (times a job warned of its time limit requeues itself, resuming from its
    last ``clustrix.checkpoint``; the ``max_requeues`` setting), ``requeue_grace`` (seconds
    before the limit the warning comes) and scheduler-specific options as further keywords.
    """
    if func is not None:
        return ClusterFunction(func, **options)

    def decorate(target: Callable[..., Any]) -> ClusterFunction:
        return ClusterFunction(target, **options)

    return decorate
