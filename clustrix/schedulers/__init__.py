"""One small module per batch system; ``scheduler_for`` picks one by ``cluster_type``."""

from __future__ import annotations

from .base import JobState, JobStatus, Scheduler, ScriptContext
from .pbs import PbsScheduler
from .sge import SgeScheduler
from .slurm import SlurmScheduler
from .ssh import SshScheduler

# In the order messages list them (config.CLUSTER_TYPES is "local" and these names).
SCHEDULERS: dict[str, type[Scheduler]] = {
    "slurm": SlurmScheduler,
    "sge": SgeScheduler,
    "pbs": PbsScheduler,
    "ssh": SshScheduler,
}

__all__ = ["SCHEDULERS", "JobState", "JobStatus", "Scheduler", "ScriptContext", "scheduler_for"]


def scheduler_for(cluster_type: str) -> Scheduler | None:
    """The scheduler module for ``cluster_type``, or None if this version has none."""
    scheduler = SCHEDULERS.get(cluster_type)
    return scheduler() if scheduler else None
