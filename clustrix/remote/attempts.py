"""What the client learns of the runs of a job that requeues itself (``@cluster(requeue=N)``).

The runner records each run of a task in ``attempts-<task>.json`` (``clustrix.requeue``) and
each call's checkpoint beside it; the status checks bring the attempts back with the result.
This module turns them into each future's ``attempt_history``, the job store's ``attempts``,
and, when the requeues ran out, the words of the error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from .. import layout
from ..futures import Attempt
from .job import ClusterJob, Task


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
    words = f"after {runs} attempt(s) (requeue={most})"
    saved = []
    for position in range(len(task.futures)):
        name = layout.checkpoint_file(task.index, position)
        info = _info(files.get(name + ".json"))
        if info is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["saved"]))
            saved.append(f"{job.folder}/{name} ({info['size']} bytes, saved {when})")
    if saved:
        words += (
            f"; its last checkpoint is {', '.join(saved)}: "
            f"clustrix.get_job({job.job_id!r}).restore() returns it"
        )
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
