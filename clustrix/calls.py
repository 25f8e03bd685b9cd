"""What a backend is handed and what it hands back: the calls, their ``CallSpec``, and the
``Submitted`` futures. Plain values, below every backend, so that any backend can use them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .futures import ClusterFuture
from .payload import CallArgs
from .resources import Resources

__all__ = ["NO_KEYWORDS", "CallArgs", "CallSpec", "Submitted", "columns"]

#: The keyword arguments of calls that have none, shared (a map of ten thousand calls
#: need not make ten thousand empty dicts). Never changed.
NO_KEYWORDS: dict[str, Any] = {}


@dataclass(frozen=True)
class CallSpec:
    """What the calls of one submission ask for, whatever runs them.

    ``resources`` is the request per call; ``environment`` the Python packages ('auto',
    a requirements file, a list of requirement strings, or None for 'auto'); ``retries``
    how many more times a call lost with its worker, node or job runs (``retry_on`` adds
    exception types of the function's own); ``timeout`` a per-call limit in seconds (local
    backend); ``job_name`` and ``options`` the scheduler's name and pass-through options;
    ``chunksize`` the calls per array task (None: the backend chooses); ``requested`` the
    resource arguments (``cores``, ``memory``, ``time``...) the caller gave itself, rather
    than inherited from the settings' defaults: what a pool's worker must offer.
    """

    resources: Resources
    environment: str | list[str] | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    timeout: float | None = None
    job_name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    chunksize: int | None = None
    requested: frozenset[str] = frozenset()


@dataclass
class Submitted:
    """Calls handed to a backend: a future per call, in call order.

    ``job_id`` names the job in the job store (cluster backends); ``counts`` says how many
    calls are done, failed, running and waiting, for progress displays, where the backend
    knows more than the futures do.
    """

    futures: list[ClusterFuture]
    job_id: str | None = None
    counts: Callable[[], dict[str, int]] | None = None
    #: Cancels every unfinished call at once (one scheduler command), where the backend can.
    cancel_all: Callable[[], Any] | None = None

    def cancel(self) -> None:
        """Cancel every call that has not finished (queued jobs leave the queue)."""
        if self.cancel_all is not None:
            self.cancel_all()
            return
        for future in self.futures:
            future.cancel()


def columns(calls: Sequence[CallArgs]) -> list[tuple[Any, ...]]:
    """Positional-only calls as one iterable per argument, as ``map(f, *iterables)`` takes."""
    return list(zip(*(args for args, _ in calls), strict=True))
