"""A worker's call process: runs the pooled calls one task at a time, as the runner would.

The worker starts one per Python environment (``python -m clustrix.pools.calls IN OUT``, with
the pool's runtime zip on ``PYTHONPATH``) and keeps it for the tasks that need that
environment, so a call costs no interpreter start. Running the calls in a process of their
own keeps the worker responsive: it writes its heartbeat while a call holds the GIL in C code,
stops a call past its ``timeout``, and notices a call that killed its process.

Requests arrive on file descriptor IN, one JSON line each::

    {"task": path of the claimed task, "function": path of its pickled function,
     "stdout": path, "stderr": path, "deadline": epoch seconds or null,
     "checkpoints": the calls' checkpoint template (``{position}`` left in) or null}

and each answer on OUT is a line ``<length>`` followed by that many bytes: the result batch
(``clustrix.runner``'s format). A call whose walltime (the task's ``seconds``, per call) would
not fit before the worker's deadline is not started: the batch then ends with the calls that
ran, and the client queues the rest again. While the calls run, file descriptors 1 and 2
point at the request's ``stdout`` and ``stderr`` files, so whatever the call prints (from
Python, C code or a subprocess) is kept per task. Each call's checkpoint place is the
request's template for its position (``clustrix.pools.files``); the checkpoint of a call that
succeeded is removed, a failed call's kept for the task's next run to resume from.

Standard library, cloudpickle, ``clustrix.runner`` and the standalone
``clustrix.checkpointing`` only: this module runs on the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

from .. import runner
from ..checkpointing import remove_succeeded
from . import files


class Calls:
    """Loads functions once, runs tasks, and answers with their result batches."""

    def __init__(self) -> None:
        self.functions: dict[str, Any] = {}

    def function(self, path: str) -> Any:
        func = self.functions.get(path)
        if func is None:
            if len(self.functions) > 64:
                self.functions.clear()
            with open(path, "rb") as handle:
                func = cloudpickle.loads(handle.read())
            self.functions[path] = func
        return func

    def run(self, request: dict[str, str]) -> bytes:
        """The pickled result batch of one task, its output written to the request's files."""
        task = files.read_record(Path(request["task"]))
        try:
            func = self.function(request["function"])
            calls = cloudpickle.loads(task["calls"])
        except BaseException as exc:  # a module missing here, say: every call fails with it
            return _payload_failure(exc, task.get("count", 1))
        checkpoints = request.get("checkpoints")
        with _output_to(request["stdout"], request["stderr"]):
            batch = run_fitting(
                func, calls, task.get("seconds"), request.get("deadline"), checkpoints
            )
        if checkpoints is not None:
            remove_succeeded(checkpoints, (ok for ok, _ in batch["outcomes"]))
        return runner.dump_batch(batch)


def run_fitting(
    func: Any,
    calls: list[Any],
    seconds: float | None,
    deadline: float | None,
    checkpoints: str | None = None,
) -> dict[str, Any]:
    """``runner.run_calls`` (``checkpoints`` is its template), but no call starts unless
    its ``seconds`` fit before ``deadline`` (epoch seconds): the batch then holds the
    outcomes of the calls that ran, and the client queues the others again."""
    if not seconds or deadline is None:
        return runner.run_calls(func, calls, checkpoints=checkpoints)

    def fitting() -> Any:
        for call in calls:
            if time.time() + seconds > deadline:
                return
            yield call

    # Any iterable of calls will do.
    return runner.run_calls(func, fitting(), checkpoints=checkpoints)  # type: ignore[arg-type]


def _payload_failure(exc: BaseException, count: int) -> bytes:
    failure = {
        "exception": None,
        "type": "clustrix.PayloadError",
        "message": f"could not load the function or its arguments: {type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
        "exit_code": None,
    }
    now = time.time()
    batch = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "finished": now,
        "outcomes": [(False, failure)] * count,
    }
    return runner.dump_batch(batch)


class _output_to:
    """Points file descriptors 1 and 2 at two files for the duration of a task."""

    def __init__(self, stdout: str, stderr: str) -> None:
        self.paths = (stdout, stderr)
        self.saved: list[int] = []

    def __enter__(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, path in zip((1, 2), self.paths, strict=True):
            self.saved.append(os.dup(fd))
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)

    def __exit__(self, *exc_info: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a call may have closed or replaced them
                stream.flush()
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.saved.clear()


def main(argv: list[str]) -> int:
    requests = os.fdopen(int(argv[0]), "rb")
    answers = os.fdopen(int(argv[1]), "wb")
    os.environ["CLUSTRIX_IN_JOB"] = "1"
    calls = Calls()
    for line in requests:
        data = calls.run(json.loads(line))
        answers.write(b"%d\n" % len(data) + data)
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
