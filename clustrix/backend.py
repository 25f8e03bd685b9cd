"""Where calls run: the ``Backend`` interface, and ``backend_for``, the one place that decides.

Everything above this module (the ``@cluster`` decorator, ``clustrix.Executor``, the joblib
backend, job handles, the CLI) says *what* to run, as a function, its calls and a
``CallSpec``; a backend decides nothing about that, it only runs it: the local process pool
(``clustrix.local``) or a cluster's scheduler over a transport (``clustrix.cluster``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import ClusterConfig
from .errors import BackendUnavailableError
from .futures import ClusterFuture
from .resources import Resources
from .store import JobRecord, JobStore

#: One call's positional and keyword arguments.
CallArgs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class CallSpec:
    """What the calls of one submission ask for, whatever runs them.

    ``resources`` is the request per call; ``environment`` the Python packages ('auto',
    a requirements file, a list of requirement strings, or None for 'auto'); ``retries``
    how many more times a call lost with its worker, node or job runs (``retry_on`` adds
    exception types of the function's own); ``timeout`` a per-call limit in seconds (local
    backend); ``job_name`` and ``options`` the scheduler's name and pass-through options;
    ``chunksize`` the calls per array task (None: the backend chooses).
    """

    resources: Resources
    environment: str | list[str] | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    timeout: float | None = None
    job_name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    chunksize: int | None = None


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


class Backend(Protocol):
    """Runs calls somewhere; obtained from ``backend_for(config)``."""

    #: ``local``, or the cluster type (``slurm``, ``sge``, ``pbs``, ``ssh``).
    name: str
    #: Whether the calls run on this machine (no job store, no scheduler).
    is_local: bool

    def submit(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
    ) -> Submitted:
        """Start the calls; return at once (a cluster: once the scheduler has accepted)."""
        ...

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
        """Run the calls and return their values in call order (see ``progress.gather``)."""
        ...

    def capacity(self, config: ClusterConfig) -> int:
        """How many calls run at once when nothing says otherwise."""
        ...

    def describe(self, config: ClusterConfig) -> dict[str, str]:
        """Where calls run and what answers there, as labelled lines (``clustrix status``);
        asks the target, so a target that cannot be reached raises here."""
        ...


class JobBackend(Backend, Protocol):
    """A backend whose calls are jobs recorded in the job store (every cluster backend):
    they can be found again, watched and cancelled from any process."""

    def attach(self, record: JobRecord, config: ClusterConfig) -> Any:
        """Track a recorded job (submitted by any process); its calls' futures."""
        ...

    def adopt(self, record: JobRecord, store: JobStore) -> bool:
        """Resolve a record left SUBMITTING by a process that died while submitting."""
        ...

    def refresh(self, job: Any) -> None:
        """Bring an attached job up to date with the scheduler now."""
        ...

    def cancel_job(self, job: Any) -> bool:
        """Cancel every unfinished task of an attached job; False if none was left."""
        ...

    def read_log(self, job: Any, task: Any, stream: str) -> str:
        """A task's ``stdout`` or ``stderr``."""
        ...

    def read_file(self, folder: str, name: str) -> str:
        """A file of a job folder, "" if missing."""
        ...

    def remove_folder(self, folder: str) -> None:
        """Delete a job folder."""
        ...


def columns(calls: Sequence[CallArgs]) -> list[tuple[Any, ...]]:
    """Positional-only calls as one iterable per argument, as ``map(f, *iterables)`` takes."""
    return list(zip(*(args for args, _ in calls), strict=True))


def backend_for(config: ClusterConfig) -> Backend:
    """The backend ``config`` points at: the local pool, or the shared backend of a cluster."""
    if config.cluster_type == "local":
        from .local.backend import LocalBackend

        return LocalBackend()
    from .cluster.backend import cluster_backend

    return cluster_backend(config)


def job_backend_for(config: ClusterConfig) -> JobBackend:
    """The backend of a recorded job's cluster (``config`` from the job's record)."""
    backend = backend_for(config)
    if backend.is_local:
        raise BackendUnavailableError("local calls are not recorded as jobs")
    return backend  # type: ignore[return-value]
