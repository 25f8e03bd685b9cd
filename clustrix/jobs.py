"""Remote job folders: what one job's folder holds, and how it gets there in one round trip.

Each job gets ``remote_work_dir/<job id>/`` (mode 700) with the payload, the runner, the job
script, and later its logs and result. The files travel as one tar stream into a single shell
command that also submits the job, so staging costs one round trip whatever the file count.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from . import runner
from .environment import python_version
from .futures import ClusterFuture
from .schedulers import JobState


def result_file(task: int) -> str:
    return f"result-{task}.pkl"


def new_job_id() -> str:
    """Unique across clients and parallel submissions; sorts by time for humans."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:12]


def runner_source() -> bytes:
    return Path(runner.__file__).read_bytes()


def job_files(
    *,
    job_id: str,
    name: str,
    function_bytes: bytes,
    tasks: list[bytes],
    scripts: dict[str, str],
    extra: dict[str, bytes] | None = None,
) -> dict[str, tuple[bytes, int]]:
    """The folder's files as ``{name: (content, mode)}``; ``tasks`` are pickled call lists,
    ``scripts`` the job scripts of the submissions, ``extra`` further private files."""
    metadata = {
        "job_id": job_id,
        "function": name,
        "client": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": len(tasks),
        "versions": {"python": python_version(), "cloudpickle": cloudpickle.__version__},
    }
    files = {
        "job.json": (json.dumps(metadata, indent=1).encode(), 0o600),
        "function.pkl": (function_bytes, 0o600),
        "runner.py": (runner_source(), 0o600),
    }
    files.update({script: (text.encode(), 0o700) for script, text in scripts.items()})
    files.update({file: (content, 0o600) for file, content in (extra or {}).items()})
    for index, calls in enumerate(tasks):
        files[f"calls-{index}.pkl"] = (calls, 0o600)
    return files


def tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, (content, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def untar(data: bytes) -> dict[str, bytes]:
    """Regular files of a tar stream, by name (used to fetch results and logs together)."""
    found: dict[str, bytes] = {}
    if not data:
        return found
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is not None:
                found[member.name.removeprefix("./")] = handle.read()
    return found


def index_ranges(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as inclusive ``(first, last)`` runs: [1,2,3,7] -> [(1,3),(7,7)]."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


@dataclass(frozen=True)
class Submission:
    """One accepted submission: a plain job for one task, or an array over a task range."""

    scheduler_id: str
    offset: int
    count: int
    is_array: bool

    def status_key(self, task: int, array_base: int) -> str:
        if not self.is_array:
            return self.scheduler_id
        return f"{self.scheduler_id}_{task - self.offset + array_base}"

    def element_id(self, task: int, array_base: int) -> str:
        """What to name to cancel just this task."""
        return self.status_key(task, array_base)


@dataclass
class Task:
    """One array task (or the only task of a single call) and the futures it settles."""

    index: int
    futures: list[ClusterFuture]
    submission: Submission | None = None
    state: JobState = JobState.PENDING
    done: bool = False
    attempts: int = 1
    missing_result_checks: int = 0
    stdout: str | None = None
    stderr: str | None = None


@dataclass
class RemoteJob:
    """A submitted job as the client tracks it until every task is settled."""

    job_id: str
    folder: str
    name: str
    func: Any
    tasks: list[Task]
    poll_interval: float
    #: Seconds status checks may fail in a row before the job's waiting calls fail.
    status_patience: float
    cleanup_on_success: bool
    echo_output: bool
    store: Any  # the JobStore recording this job
    retries: int = 0
    #: Exception types of the user's function that also trigger a resubmission.
    retry_on: tuple[type[BaseException], ...] = ()
    #: How the first submission was made, to resubmit tasks the same way (None if attached).
    context: Any = None
    resources: Any = None
    submitted: float = field(default_factory=time.monotonic)
    next_check: float = 0.0
    any_failed: bool = False
    recorded_final: bool = False  # the store holds the job's final state
    #: When status checks of this job started failing in a row (monotonic), else None.
    failing_since: float | None = None

    def pending_tasks(self) -> list[Task]:
        return [task for task in self.tasks if not task.done]

    def schedule_next_check(self, now: float) -> None:
        """Check often in the first seconds, when short calls end, then back off."""
        age = now - self.submitted
        self.next_check = now + min(self.poll_interval, max(0.1, (age - 1.5) * 0.25))

    def counts(self) -> dict[str, int]:
        """Items done, failed, running and waiting, for progress displays."""
        counts = {"done": 0, "failed": 0, "running": 0, "pending": 0}
        for task in self.tasks:
            for future in task.futures:
                if future.done():
                    failed = future.cancelled() or future.exception() is not None
                    counts["failed" if failed else "done"] += 1
                elif task.state is JobState.RUNNING:
                    counts["running"] += 1
                else:
                    counts["pending"] += 1
        return counts
