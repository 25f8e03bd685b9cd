"""Which calls an open pool takes: those made inside its ``with`` block, on its cluster, that
ask for no more than a worker has. ``clustrix.backend.backend_for`` asks ``pooled(config)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..calls import CallArgs, CallSpec, Submitted
from ..progress import gather

if TYPE_CHECKING:
    from ..backend import Backend
    from ..config import ClusterConfig

logger = logging.getLogger("clustrix.pools")


class Workers(Protocol):
    """What routing needs of an open pool (``WorkerPool``)."""

    pool_id: str
    size: int
    is_local: bool

    def matches(self, config: ClusterConfig) -> bool:
        """Whether ``config`` points at the cluster this pool's workers run on."""
        ...

    def misfit(self, spec: CallSpec) -> str | None:
        """Why calls asking for ``spec`` cannot run on a worker, or None if they can."""
        ...

    def run_calls(
        self, func: Callable[..., Any], calls: Sequence[CallArgs], spec: CallSpec
    ) -> Submitted:
        """Queue the calls for the workers; a future per call."""
        ...

    def describe(self) -> dict[str, str]: ...


_active: list[Workers] = []
_lock = threading.Lock()


def activate(pool: Workers) -> None:
    """Route matching calls to ``pool`` (its ``with`` block began)."""
    with _lock:
        _active.append(pool)


def deactivate(pool: Workers) -> None:
    with _lock:
        if pool in _active:
            _active.remove(pool)


def pooled(config: ClusterConfig) -> Workers | None:
    """The innermost open pool on ``config``'s cluster, if any."""
    with _lock:
        for pool in reversed(_active):
            if pool.matches(config):
                return pool
    return None


class PoolBackend:
    """A backend that gives calls to a pool's workers, or to ``fallback`` (the cluster's
    own backend, as jobs) when they ask for more than a worker has."""

    def __init__(self, pool: Workers, fallback: Backend) -> None:
        self.pool = pool
        self.fallback = fallback
        self.name = f"pool {pool.pool_id}"
        self.is_local = pool.is_local

    def submit(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
    ) -> Submitted:
        misfit = self.pool.misfit(spec)
        if misfit is not None:
            logger.info(
                "%s %s; submitted as a job instead of to pool %s",
                getattr(func, "__name__", "the call"),
                misfit,
                self.pool.pool_id,
            )
            return self.fallback.submit(func, calls, spec, config)
        return self.pool.run_calls(func, calls, spec)

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
        submitted = self.submit(func, calls, spec, config)
        try:
            return gather(
                submitted.futures,
                return_exceptions=return_exceptions,
                progress=progress,
                description=getattr(func, "__name__", "calls"),
                counts=submitted.counts,
            )
        except KeyboardInterrupt:
            if config.cancel_on_interrupt:
                submitted.cancel()
            raise

    def capacity(self, config: ClusterConfig) -> int:
        return self.pool.size

    def describe(self, config: ClusterConfig) -> dict[str, str]:
        return {**self.fallback.describe(config), **self.pool.describe()}
