"""Where calls run: the ``Backend`` interface, and ``backend_for``, the one place that decides.

Everything above this module (the ``@cluster`` decorator, ``clustrix.Executor``, the joblib
backend, job handles, the CLI) says *what* to run, as a function, its calls and a
``CallSpec``; a backend decides nothing about that, it only runs it: the local process pool
(``clustrix.local``) or a cluster's scheduler over a transport (``clustrix.remote``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .calls import CallArgs, CallSpec, Submitted, columns
from .config import ClusterConfig
from .errors import BackendUnavailableError
from .pools.routing import PoolBackend, pooled
from .store import JobRecord, JobStore

__all__ = [
    "Backend",
    "CallArgs",
    "CallSpec",
    "JobBackend",
    "Submitted",
    "backend_for",
    "columns",
    "job_backend_for",
]


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

    def read_bytes(self, folder: str, name: str) -> bytes | None:
        """A file of a job folder as it is, None if missing."""
        ...

    def remove_folder(self, folder: str) -> None:
        """Delete a job folder."""
        ...


def backend_for(config: ClusterConfig) -> Backend:
    """The backend ``config`` points at: inside an open ``clustrix.pool`` on that cluster, the
    pool's workers; otherwise the local process pool, or the shared backend of a cluster."""
    backend = _own_backend(config)
    pool = pooled(config)
    return backend if pool is None else PoolBackend(pool, backend)


def _own_backend(config: ClusterConfig) -> Backend:
    if config.cluster_type == "local":
        from .local.backend import LocalBackend

        return LocalBackend()
    from .remote.backend import cluster_backend

    return cluster_backend(config)


def job_backend_for(config: ClusterConfig) -> JobBackend:
    """The backend of a recorded job's cluster (``config`` from the job's record)."""
    backend = _own_backend(config)
    if backend.is_local:
        raise BackendUnavailableError("local calls are not recorded as jobs")
    return backend  # type: ignore[return-value]
