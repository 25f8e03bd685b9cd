"""The client's side of pooled calls: each task's futures, and what a result or a loss means
for them (values, exceptions, a retry, or ``WorkerCrashedError``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ClustrixError, WorkerCrashedError
from ..futures import ClusterFuture, add_note
from ..local.deadline import timeout_error
from ..payload import batch_outcomes

#: (future, True, value) or (future, False, exception)
Settlement = tuple[ClusterFuture, bool, Any]


def new_task_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class PoolTask:
    """Calls sent to the workers together (one claim, one result).

    ``key`` names the calls' checkpoints in the pool's folder (``files.checkpoint_template``):
    the task's first id, kept when it is queued again under a new one (``again``), so that a
    call lost with its worker resumes from the checkpoint it saved there.
    """

    id: str
    name: str
    func: Callable[..., Any]
    futures: list[ClusterFuture]
    #: What the relay queues (see ``clustrix.pools.relay``), without its id.
    record: dict[str, Any]
    #: The calls themselves, to queue again those a worker had no walltime left for.
    calls: list[Any]
    retries: int
    retry_on: tuple[type[BaseException], ...] = ()
    attempts: int = 1
    queued: bool = False
    workers: list[str] = field(default_factory=list)
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or self.id

    def message(self) -> dict[str, Any]:
        return {**self.record, "id": self.id, "key": self.key}

    def again(self) -> PoolTask:
        """The same calls as a new task (a new id: a late copy of the old one is ignored;
        the same ``key``: the calls find their checkpoints)."""
        self.attempts += 1
        self.id = new_task_id()
        self.queued = False
        for future in self.futures:
            future.attempts = self.attempts
        return self

    def pending(self) -> bool:
        return not all(future.done() for future in self.futures)


def read_result(
    task: PoolTask, record: dict[str, Any], where: Callable[[str, str], str]
) -> list[Settlement] | None:
    """Settlements for a task's result record; None when it should run again
    (``retry_on``). ``where(worker, job)`` says, for messages, where the task ran.

    A worker near the end of its walltime runs only the first calls of a task: there are
    settlements for those, and the task's other futures are left for the caller to queue.
    """
    place = where(record.get("worker", "?"), record.get("job", "?"))
    logs = {"stdout": record.get("stdout", ""), "stderr": record.get("stderr", "")}
    for future in task.futures:
        future.bind_logs(lambda stream, logs=logs: logs[stream])
    if "timeout" in record:
        consequence = f"its process was stopped ({place})"
        error = timeout_error(task.name, record["timeout"], consequence)
        return [(future, False, error) for future in task.futures]
    try:
        outcomes = batch_outcomes(record["batch"], where=place, func=task.func)
    except Exception as exc:
        error = ClustrixError(f"could not read the result of {task.name!r} from {place}: {exc}")
        outcomes = [(False, error)] * len(task.futures)
    if (
        task.retry_on
        and task.attempts <= task.retries
        and any(not ok and isinstance(value, task.retry_on) for ok, value in outcomes)
    ):
        return None
    for ok, value in outcomes:
        if not ok and isinstance(value, MemoryError):
            add_note(
                value,
                f"(the call ran out of memory on a pool worker, {place}; a worker "
                "has the pool's memory=, ask for more with clustrix.pool(memory=...))",
            )
    return [(f, ok, value) for f, (ok, value) in zip(task.futures, outcomes, strict=False)]


def lost_error(task: PoolTask, worker: str, job: str, reason: str, host: str) -> WorkerCrashedError:
    """The error of a task lost with its worker, after its retries."""
    tries = f" (attempt {task.attempts})" if task.attempts > 1 else ""
    return WorkerCrashedError(
        f"{task.name!r} was lost with pool worker {worker} (job {job}){tries}: {reason}; "
        "retries=N runs such calls again on another worker",
        job_id=job,
        state="LOST",
        host=host,
    )
