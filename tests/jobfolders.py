"""A job folder as staging writes it, and the runner run on it as a job script runs it: as a
process of its own, its output appended to the task's log files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from clustrix import layout
from clustrix.remote.archive import job_files


def job_folder(
    path: Path, func: Any, tasks: list[list[tuple]], name: str = "job", **options: Any
) -> Path:
    """``path/NAME`` (also the job's id) holding ``func`` and, per task, its calls
    (positional argument tuples); ``options`` go to ``job_files`` (``time_limit``,
    ``requeue``, ``needs``, ``extra``...)."""
    folder = path / name
    folder.mkdir()
    options.setdefault("calls_per_task", max(len(calls) for calls in tasks))
    files = job_files(
        job_id=name,
        name="f",
        function_bytes=cloudpickle.dumps(func),
        tasks=[cloudpickle.dumps([(args, {}) for args in calls]) for calls in tasks],
        scripts={},
        **options,
    )
    for name, (content, mode) in files.items():
        (folder / name).write_bytes(content)
        (folder / name).chmod(mode)
    return folder


def start_runner(folder: Path, task: int) -> subprocess.Popen:
    """The runner of ``task``, started as the job script starts it."""
    with (
        open(folder / layout.stdout_file(task), "ab") as out,
        open(folder / layout.stderr_file(task), "ab") as err,
    ):
        command = [sys.executable, str(folder / layout.RUNNER), str(folder), str(task)]
        return subprocess.Popen(command, stdout=out, stderr=err)
