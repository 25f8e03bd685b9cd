"""A job folder's files as one tar stream, so staging them costs one round trip.

The files travel into a single shell command that also submits the job; results and logs
come back the same way.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from pathlib import Path

import cloudpickle

from .. import layout, runner
from ..environment import python_version


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
    calls_per_task: int | None = None,
    time_limit: float | None = None,
    needs: dict[str, list[str]] | None = None,
    requeue: dict[str, object] | None = None,
) -> dict[str, tuple[bytes, int]]:
    """The folder's files as ``{name: (content, mode)}``; ``tasks`` are pickled call lists,
    ``scripts`` the job scripts of the submissions, ``extra`` further private files.

    ``calls_per_task`` (the largest task's calls) and ``time_limit`` (a task's limit in
    seconds, None if none) tell the runner how much of other tasks' work it may take on;
    ``needs`` (a pipeline's stage: per task, the upstream result files its calls read) which.
    ``requeue`` (a job that requeues itself): ``{"max", "signal", "command", "exit_code"}``,
    read by ``clustrix.requeue.Attempts``.
    """
    metadata = {
        "job_id": job_id,
        "function": name,
        "client": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": len(tasks),
        "versions": {"python": python_version(), "cloudpickle": cloudpickle.__version__},
        "files": layout.FILES,
        "calls_per_task": calls_per_task,
        "time_limit": time_limit,
        "needs": needs or {},
        "requeue": requeue,
    }
    files = {
        layout.JOB_JSON: (json.dumps(metadata, indent=1).encode(), 0o600),
        layout.FUNCTION: (function_bytes, 0o600),
        layout.RUNNER: (runner_source(), 0o600),
    }
    files.update({script: (text.encode(), 0o700) for script, text in scripts.items()})
    files.update({file: (content, 0o600) for file, content in (extra or {}).items()})
    for index, calls in enumerate(tasks):
        files[layout.calls_file(index)] = (calls, 0o600)
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
