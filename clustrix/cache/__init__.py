"""The result cache: a call made before, with the same key, returns its stored value.

With the ``cache`` setting (or ``@cluster(cache=True)``) the executor asks here before it
runs anything: ``cached_call`` for one call (``f(x)``, ``f.submit``), ``cached_batch`` for
many (``f.map``, ``f.submit_map``, ``Executor.map``). A hit is a value, or a future already
finished with it; nothing is submitted for it, so a map of 100 calls with 60 hits hands only
the 40 others to the backend. A call's value is stored once it succeeded; exceptions and
cancelled calls are never stored, so they run again next time. What makes the key is in
``keys.py``; how values are kept, in ``files.py``.

Calls inside a running call (a worker or a job) never use the cache: the folder is the
client's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ..calls import CallArgs, Submitted
from ..config import ClusterConfig
from ..environment import modules_used_by
from ..futures import ClusterFuture, resolved
from .files import CacheDir, Entry
from .keys import arguments_digest, code_digest, environment_digest, function_name, value_modules

__all__ = [
    "CacheDir",
    "CachedBatch",
    "CachedCall",
    "CallCache",
    "Entry",
    "cached_batch",
    "cached_call",
]

#: The backend name of futures a cache hit finished.
HIT = "cache"


class CallCache:
    """The cache as the calls of one function, made with one configuration, see it.

    What does not change between the calls (the code's hash, the modules the code uses) is
    computed once, when the cache is opened; per call only the arguments are hashed.
    """

    def __init__(self, func: Callable[..., Any], config: ClusterConfig, environment: Any) -> None:
        self.func = func
        self.name = function_name(func)
        self.folder = CacheDir(config.cache_dir)
        self._config = config
        self._environment = environment
        self._code = code_digest(func)
        self._used = modules_used_by(func)
        self._environments: dict[frozenset[str], str] = {}

    @classmethod
    def open(
        cls, func: Callable[..., Any], config: ClusterConfig, environment: Any
    ) -> CallCache | None:
        """The cache for ``func``'s calls, or None when the ``cache`` setting is off or the
        callable has no Python code to hash (a builtin, a callable object)."""
        if not config.cache or getattr(func, "__code__", None) is None:
            return None
        return cls(func, config, environment)

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The call's key (64 hex digits), or None when the call cannot be cached (see
        ``arguments_digest``)."""
        arguments = arguments_digest(self.func, args, kwargs)
        if arguments is None:
            return None
        modules = value_modules([*args, *kwargs.values()])
        environment = self._environments.get(modules)
        if environment is None:
            environment = environment_digest(
                self.func, self._config, self._environment, self._used, modules
            )
            self._environments[modules] = environment
        text = "\n".join([self.name, self._code, arguments, environment])
        return hashlib.sha256(text.encode()).hexdigest()

    def lookup(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` for a stored call, ``(False, None)`` otherwise."""
        return self.folder.load(key)

    def save(self, key: str, value: Any) -> None:
        """Store a call's value (a value that cannot be pickled is not stored)."""
        self.folder.save(key, self.name, value)

    def save_when_done(self, key: str, future: Future) -> None:
        """Store the future's value when it succeeds, before ``result()`` returns it (so an
        identical call made right after is a hit); failures and cancellations are not."""
        if isinstance(future, ClusterFuture):
            future.before_result(lambda value: self.save(key, value))
            return

        def store(done: Future) -> None:
            if not done.cancelled() and done.exception() is None:
                self.save(key, done.result())

        future.add_done_callback(store)


class CachedCall:
    """One call as the cache sees it: a hit (``hit``, ``value``) or a call to run and store."""

    def __init__(self, cache: CallCache | None, key: str | None, found: tuple[bool, Any]) -> None:
        self._cache = cache
        self._key = key
        self.hit, self.value = found

    def future(self) -> ClusterFuture:
        """A future already finished with the stored value."""
        return resolved(self._cache.func.__qualname__, HIT, (True, self.value))

    def save(self, value: Any) -> Any:
        """Store the value of the call, which ran; returns it."""
        if self._cache is not None and self._key is not None:
            self._cache.save(self._key, value)
        return value

    def save_when_done(self, future: ClusterFuture) -> ClusterFuture:
        """Store the future's value once it succeeds; returns the future."""
        if self._cache is not None and self._key is not None:
            self._cache.save_when_done(self._key, future)
        return future


def cached_call(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    config: ClusterConfig,
    environment: Any,
) -> CachedCall:
    """Look one call up (a miss that stores nothing when the cache is off)."""
    cache = CallCache.open(func, config, environment)
    key = cache.key(args, kwargs) if cache is not None else None
    found = cache.lookup(key) if cache is not None and key is not None else (False, None)
    return CachedCall(cache, key, found)


class CachedBatch:
    """Many calls of one function: the hits, and the misses that still have to run.

    ``misses`` are the calls to hand to the backend, in call order; ``submit`` and ``map``
    put the backend's futures or values for them back among the hits.
    """

    def __init__(self, cache: CallCache | None, calls: Sequence[CallArgs]) -> None:
        self._cache = cache
        self._keys = [cache.key(*call) if cache is not None else None for call in calls]
        self._hits: dict[int, Any] = {}
        for index, key in enumerate(self._keys):
            found, value = cache.lookup(key) if cache and key else (False, None)
            if found:
                self._hits[index] = value
        self._order = [i for i in range(len(calls)) if i not in self._hits]
        self.misses: list[CallArgs] = [calls[i] for i in self._order]

    def submit(self, run: Callable[[list[CallArgs]], Submitted]) -> Submitted:
        """``run(misses)`` (unless every call hit), its futures merged with finished ones for
        the hits, in call order; each miss's value is stored when its future succeeds."""
        if self._cache is None:
            return run(self.misses)
        submitted = run(self.misses) if self.misses else Submitted([])
        futures: list[ClusterFuture] = [
            resolved(self._cache.func.__qualname__, HIT, (True, value))
            for value in self._hits.values()
        ]
        merged = dict(zip(self._hits, futures, strict=True))
        for index, future in zip(self._order, submitted.futures, strict=True):
            merged[index] = future
            if self._keys[index] is not None:
                self._cache.save_when_done(self._keys[index], future)
        submitted.futures = [merged[i] for i in range(len(merged))]
        if submitted.counts is not None:
            submitted.counts = _with_hits(submitted.counts, len(self._hits))
        return submitted

    def map(self, run: Callable[[list[CallArgs]], list[Any]], *, return_exceptions: bool) -> list:
        """``run(misses)`` (unless every call hit), its values merged with the hits', in call
        order; each successful miss is stored. With ``return_exceptions`` a returned
        exception object is taken for a failure and not stored."""
        if self._cache is None:
            return run(self.misses)
        values = run(self.misses) if self.misses else []
        merged = dict(self._hits)
        for index, value in zip(self._order, values, strict=True):
            merged[index] = value
            failed = return_exceptions and isinstance(value, BaseException)
            if self._keys[index] is not None and not failed:
                self._cache.save(self._keys[index], value)
        return [merged[i] for i in range(len(merged))]


def _with_hits(counts: Callable[[], dict[str, int]], hits: int) -> Callable[[], dict[str, int]]:
    def counted() -> dict[str, int]:
        numbers = dict(counts())
        numbers["done"] = numbers.get("done", 0) + hits
        return numbers

    return counted


def cached_batch(
    func: Callable[..., Any], calls: Sequence[CallArgs], config: ClusterConfig, environment: Any
) -> CachedBatch:
    """Look many calls up; with the cache off, every call is a miss and nothing is stored."""
    return CachedBatch(CallCache.open(func, config, environment), calls)
