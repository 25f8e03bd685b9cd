"""Clustrix: run a Python function's calls on local cores, an HPC cluster or an SSH host.

from clustrix import cluster

@cluster(cores=4, memory="8GB", time="01:00:00")
def simulate(seed): ...

simulate(1)                  # runs where the configuration says, returns the value
simulate.map(range(100))     # many calls, results in input order
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._joblib_hook import register_joblib, watch_for_joblib
from .checkpointing import checkpoint, on_requeue, restore
from .config import (
    ClusterConfig,
    configure,
    get_config,
    load_config,
    reset_config,
    save_config,
)
from .decorator import ClusterFunction, cluster
from .errors import (
    BackendUnavailableError,
    ClustrixError,
    ConfigError,
    DependencyFailedError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerCrashedError,
)
from .executor import Executor
from .futures import ClusterFuture
from .handle import Job, get_job, jobs
from .local import LocalExecutor
from .pools.client import WorkerPool, pool
from .resources import Resources
from .transport.login import set_login_prompt

try:
    __version__ = version("clustrix")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

# The "clustrix" joblib backend: registered now if joblib is imported, else when it is.
watch_for_joblib()

__all__ = [
    "BackendUnavailableError",
    "ClusterConfig",
    "ClusterFunction",
    "ClusterFuture",
    "ClustrixError",
    "ConfigError",
    "DependencyFailedError",
    "Executor",
    "Job",
    "JobFailedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "LocalExecutor",
    "RemoteError",
    "RemoteTraceback",
    "Resources",
    "SerializationError",
    "WorkerCrashedError",
    "WorkerPool",
    "__version__",
    "checkpoint",
    "cluster",
    "configure",
    "get_config",
    "get_job",
    "jobs",
    "load_config",
    "on_requeue",
    "pool",
    "register_joblib",
    "reset_config",
    "restore",
    "save_config",
    "set_login_prompt",
]
