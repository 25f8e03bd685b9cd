"""The client's side of jobs that requeue themselves (``@cluster(requeue=N)``): what the
runner is told, and what the client learns of each run.

``requeue_settings`` checks the request against the scheduler and writes job.json's
``requeue``. The runner records each run of a task in ``attempts-<task>.json``
(``clustrix.requeue``) and each call's checkpoint beside it; the status checks bring the
attempts back with the result. This module turns them into each future's
``attempt_history``, the job store's ``attempts``, and, when the requeues ran out, the words
of the error.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping
from typing import Any

from .. import layout
from ..config import ClusterConfig
from ..errors import ConfigError
from ..futures import Attempt
from ..resources import Resources
from ..schedulers import Scheduler
from .job import ClusterJob, Task


def requeue_settings(
    config: ClusterConfig,
    scheduler: Scheduler,
    resources: Resources,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """What the runner of a job that requeues itself needs (job.json's ``requeue``), or
    None for ``max_requeues=0``, and on a plain SSH host (no time limit, no preemption).

    Raises ConfigError for a scheduler whose jobs cannot requeue themselves, and for a
    ``requeue_grace`` that does not leave the job any time before its warning.
    """
    if not config.max_requeues or not scheduler.directive_prefix:
        return None
    support = scheduler.requeue
    if support is None:
        raise ConfigError(
            f"requeue={config.max_requeues} is not available on {scheduler.name}: jobs there "
            "cannot be warned before their time limit and requeue themselves (slurm and sge "
            "can); use requeue=0 (max_requeues), and retries=N to resubmit lost jobs",
            field="max_requeues",
            value=config.max_requeues,
        )
    if config.conda_env_name:
        # The job starts Python through `conda run`, which does not pass signals on
        # (conda/conda#10351): the runner would never hear the warning.
        raise ConfigError(
            f"requeue={config.max_requeues} cannot be used with conda_env_name="
            f"{config.conda_env_name!r}: jobs start Python through `conda run`, which does "
            "not pass the scheduler's warning on; set python_executable to the environment's "
            "own python instead",
            field="max_requeues",
            value=config.max_requeues,
        )
    limit = resources.time_seconds
    if limit is None and support.needs_time_limit:
        raise ConfigError(
            f"requeue={config.max_requeues} needs a time limit on {scheduler.name}: the "
            "warning comes requeue_grace seconds before it; give time= (e.g. '24:00:00')",
            field="max_requeues",
            value=config.max_requeues,
        )
    clashing = sorted(set(options or {}) & set(support.clashing_options))
    if clashing:
        raise ConfigError(
            f"the {scheduler.name} option {clashing[0]}= cannot be used with "
            f"requeue={config.max_requeues}: Clustrix sets the job's warning and requeue "
            "itself (requeue_grace); drop the option, or use requeue=0",
            field=clashing[0],
            value=(options or {})[clashing[0]],
        )
    if limit is not None and config.requeue_grace >= limit:
        raise ConfigError(
            f"requeue_grace={config.requeue_grace} is not valid with a time limit of "
            f"{limit:g} s: the warning would come before the job starts; requeue_grace must "
            f"be under {limit:g} seconds (on SLURM, better under {max(1, limit - 60):g}: "
            "its warning may come up to 60 s early), or ask for a longer time",
            field="requeue_grace",
            value=config.requeue_grace,
        )
    return {
        "max": config.max_requeues,
        "signal": support.signal,
        "command": support.command,
        "exit_code": support.exit_code,
    }


def files_to_fetch(task: Task) -> list[str]:
    """The files that describe ``task``'s runs and its calls' checkpoints."""
    infos = [
        layout.checkpoint_file(task.index, position) + ".json"
        for position in range(len(task.futures))
    ]
    return [layout.attempts_file(task.index), *infos]


def remember_attempts(job: ClusterJob, task: Task, files: Mapping[str, bytes]) -> list[Attempt]:
    """Read ``task``'s attempts from ``files``: onto its futures and into the job store.

    Returns the attempts, oldest first (empty when the file is absent or unreadable).
    """
    records = _records(files.get(layout.attempts_file(task.index)))
    if not records:
        return []
    history = [Attempt.from_record(record) for record in records]
    for future in task.futures:
        future.attempt_history = history
        future.attempts = max(future.attempts, len(history))
    job.attempts[str(task.index)] = records
    job.store.update(job.job_id, attempts=job.attempts)
    return history


def exhausted_words(job: ClusterJob, task: Task, files: Mapping[str, bytes]) -> str:
    """For a task of a job that requeues itself and failed: how many runs it had and where
    its last checkpoint is, as a sentence to add to its error ("" for other jobs)."""
    if not job.requeue:
        return ""
    history = remember_attempts(job, task, files)
    runs = len(history) or task.attempts
    most = int(job.requeue.get("max", 0))
    words = f"; it ran {runs} attempt(s) (requeue={most})"
    saved = []
    first = sum(len(earlier.futures) for earlier in job.tasks[: task.index])
    for position in range(len(task.futures)):
        name = layout.checkpoint_file(task.index, position)
        info = _info(files.get(name + ".json"))
        if info is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["saved"]))
            item = f"item={first + position}" if len(job.tasks) > 1 else ""
            saved.append(
                f"{job.folder}/{name} ({info['size']} bytes, saved {when}): "
                f"clustrix.get_job({job.job_id!r}).restore({item}) returns it"
            )
    if saved:
        words += f"; its last checkpoint is {', '.join(saved)}"
    else:
        words += "; it saved no checkpoint (clustrix.checkpoint)"
    return words


def _records(data: bytes | None) -> list[dict[str, Any]]:
    if not data:
        return []
    try:
        records = json.loads(data)
    except ValueError:
        return []
    return [record for record in records if isinstance(record, dict)]


def _info(data: bytes | None) -> dict[str, float] | None:
    if not data:
        return None
    try:
        info = json.loads(data)
        return {"size": int(info["size"]), "saved": float(info["saved"])}
    except (ValueError, KeyError, TypeError):
        return None


def release_command(scheduler: Scheduler, elements: list[str]) -> str:
    """The command that lets requeued ``elements`` start again soon, where the scheduler
    holds them back (``RequeueSupport.release``); "" where there is none."""
    support = scheduler.requeue
    if not elements or support is None or not support.release:
        return ""
    return support.release.format(ids=" ".join(shlex.quote(e) for e in sorted(set(elements))))
