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

RESULT_FILE = "result-0.pkl"


def new_job_id() -> str:
    """Unique across clients and parallel submissions; sorts by time for humans."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:12]


def runner_source() -> bytes:
    return Path(runner.__file__).read_bytes()


def job_files(
    *, job_id: str, name: str, function_bytes: bytes, calls_bytes: bytes, script: str
) -> dict[str, tuple[bytes, int]]:
    """The folder's files as ``{name: (content, mode)}``."""
    metadata = {
        "job_id": job_id,
        "function": name,
        "client": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"python": python_version(), "cloudpickle": cloudpickle.__version__},
    }
    return {
        "job.json": (json.dumps(metadata, indent=1).encode(), 0o600),
        "function.pkl": (function_bytes, 0o600),
        "calls-0.pkl": (calls_bytes, 0o600),
        "runner.py": (runner_source(), 0o600),
        "job.sh": (script.encode(), 0o700),
    }


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
    """Regular files of a tar stream, by name (used to fetch result and logs together)."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is not None:
                found[member.name.removeprefix("./")] = handle.read()
    return found


@dataclass
class RemoteJob:
    """A submitted job as the client tracks it until its future is settled."""

    job_id: str
    folder: str
    scheduler_id: str
    future: ClusterFuture
    func: Any
    poll_interval: float
    cleanup_on_success: bool
    echo_output: bool
    submitted: float = field(default_factory=time.monotonic)
    next_check: float = 0.0
    state: JobState = JobState.PENDING
    missing_result_checks: int = 0
    stdout: str | None = None
    stderr: str | None = None

    def schedule_next_check(self, now: float) -> None:
        """Check often in the first seconds, when short calls end, then back off."""
        age = now - self.submitted
        self.next_check = now + min(self.poll_interval, max(0.1, (age - 1.5) * 0.25))
