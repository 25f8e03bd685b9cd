"""Every file of a pool's folder, and how each is written.

A pool gets ``remote_work_dir/<pool id>/`` (mode 700), shared by the client's relay on the
login node and the workers on the compute nodes; nothing else connects them::

    functions/<fid>.pkl        a pickled function, written once, read by every worker
    queue/<order>-<seconds>-<task id>
                               a task waiting for a worker (pickled dict, see ``Task``);
                               ``seconds`` is the walltime it needs, 0 if unknown
    claimed/<worker>/<name>    a task a worker took, by renaming it out of the queue
    results/<task id>          what a worker hands back (pickled dict, see ``Result``)
    lost/<task id>             a task whose worker stopped before finishing it
    checkpoints/<key>-<position>.pkl
                               the checkpoint of call ``position`` of the task whose calls
                               were first queued under id ``key`` (a task queued again
                               keeps its key), and beside it ``<name>.json``, its size and time
    workers/<worker>.json      each worker's heartbeat: state, deadline, calls done
    relay.alive                touched every second while the client's relay runs
    stop                       present once the pool is stopped: workers leave

Every file appears whole: it is written under a temporary name and renamed. A rename within
one file system is atomic (POSIX; NFS renames are atomic on the server), which is also how a
task is claimed by exactly one worker.

A call's checkpoint is removed once the call has succeeded; a failed call's stays until the
pool is stopped and its folder removed, so that the call, queued again, resumes from it.

Standard library only: this module runs on the cluster.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

FUNCTIONS = "functions"
QUEUE = "queue"
CLAIMED = "claimed"
RESULTS = "results"
LOST = "lost"
CHECKPOINTS = "checkpoints"
WORKERS = "workers"
RELAY_ALIVE = "relay.alive"
RELAY_LOG = "relay.log"
STOP = "stop"
FOLDERS = (FUNCTIONS, QUEUE, CLAIMED, RESULTS, LOST, CHECKPOINTS, WORKERS)


def task_name(order: int, seconds: float | None, task_id: str) -> str:
    """A queued task's file name: the queue's order, the walltime it needs, its id.

    Workers read what a task needs from its name, so deciding whether one fits costs no read.
    """
    return f"{order:012d}-{int(seconds or 0)}-{task_id}"


def parse_task_name(name: str) -> tuple[int, str] | None:
    """``(seconds needed, task id)`` of a queued task's file name; None for other files."""
    parts = name.split("-", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


def checkpoint_template(folder: Path, key: str) -> str:
    """The checkpoint file of each call of the task with ``key``, with ``{position}`` for
    the call's place in the task (``runner.run_calls``'s ``checkpoints``)."""
    escaped = str(folder / CHECKPOINTS).replace("{", "{{").replace("}", "}}")
    return f"{escaped}{os.sep}{key}-{{position}}.pkl"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing (mode 600)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def write_record(path: Path, record: dict[str, Any]) -> None:
    """A pickled plain-data record (a task, a result), written atomically."""
    write_atomically(path, pickle.dumps(record, protocol=4))


def read_record(path: Path) -> dict[str, Any]:
    return pickle.loads(path.read_bytes())


def write_status(path: Path, status: dict[str, Any]) -> None:
    """A worker's heartbeat, as JSON (``clustrix pools`` reads these with ``cat``)."""
    write_atomically(path, json.dumps(status).encode())


def make_folders(folder: Path) -> None:
    for name in FOLDERS:
        (folder / name).mkdir(mode=0o700, parents=True, exist_ok=True)
