"""A pool worker: the call a worker job runs, taking tasks from the pool's folder until it
is idle, out of walltime, or stopped.

A worker job is an ordinary Clustrix job (same runner, environment and job folder) whose
one call is ``serve``. It claims the oldest queued task that fits in its remaining walltime
(renaming it into ``claimed/<worker>/``, so that no other worker can), hands it to a call
process for the task's Python environment (``clustrix.pools.calls``), and writes the result
into ``results/``. Meanwhile it writes its heartbeat (``workers/<worker>.json``) every second.

It leaves when the ``stop`` file appears, when it has been idle for ``idle_timeout`` seconds,
when the client's relay has been gone that long (an abandoned pool costs nothing for long),
or when no queued task fits in the walltime it has left. SIGTERM (``scancel``, preemption, the
scheduler's time limit) stops the call running and gives its task back as lost, so that the
client runs it again elsewhere.

Standard library and the standalone ``clustrix.checkpointing`` only: this module runs on the
cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ..checkpointing import CHECKPOINT_ENV
from . import files

# The walltime a worker keeps in hand: it takes no task that would end within it.
_MARGIN_FRACTION = 0.1
_MARGIN_LIMIT = 30.0
_HEARTBEAT = 1.0
_LONGEST_NAP = 0.02


def scheduler_job_id() -> str:
    """The scheduler's id of the job (or array element) this process runs in."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    if env.get("PBS_JOBID"):
        return env["PBS_JOBID"]
    if env.get("JOB_ID"):  # Grid Engine
        task = env.get("SGE_TASK_ID", "undefined")
        return env["JOB_ID"] if task in ("", "undefined") else f"{env['JOB_ID']}.{task}"
    return f"pid {os.getpid()} on {socket.gethostname()}"


def margin(walltime: float) -> float:
    return min(_MARGIN_LIMIT, walltime * _MARGIN_FRACTION)


class CallProcess:
    """One ``clustrix.pools.calls`` process, for one Python environment."""

    def __init__(self, python: str, folder: Path) -> None:
        request_read, self.request_write = os.pipe()
        self.answer_read, answer_write = os.pipe()
        env = dict(os.environ)
        # The worker job's own call may have its checkpoint place in the environment; the
        # pooled calls get theirs, one per call, from each request.
        env.pop(CHECKPOINT_ENV, None)
        runtime = str(folder / "clustrix-runtime.zip")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [runtime, env.get("PYTHONPATH")]))
        # ``python`` is the environment's interpreter command, already quoted for the shell.
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {python} -m clustrix.pools.calls {request_read} {answer_write}"],
            pass_fds=(request_read, answer_write),
            env=env,
            cwd=str(folder),
            stdin=subprocess.DEVNULL,
        )
        os.close(request_read)
        os.close(answer_write)
        self.answers = os.fdopen(self.answer_read, "rb")

    def start(self, request: dict[str, str]) -> None:
        os.write(self.request_write, json.dumps(request).encode() + b"\n")

    def answer(self, wait: float) -> bytes | None:
        """The result batch, or None if none came within ``wait`` seconds; EOFError if the
        process died."""
        ready, _, _ = select.select([self.answers], [], [], wait)
        if not ready:
            return None
        header = self.answers.readline()
        if not header:
            raise EOFError
        data = self.answers.read(int(header))
        if len(data) < int(header):
            raise EOFError
        return data

    def stop(self) -> str:
        """Kill the process; how it ended, for messages."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        code = self.process.wait()
        for fd in (self.request_write,):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.answers.close()
        return f"signal {-code}" if code < 0 else f"exit code {code}"


class Worker:
    """The state of one worker of a pool."""

    def __init__(self, folder: str, name: str, walltime: float | None, idle_timeout: float):
        self.folder = Path(folder)
        self.name = name
        self.started = time.time()
        self.deadline = None if walltime is None else self.started + walltime - margin(walltime)
        self.idle_timeout = idle_timeout
        self.job = scheduler_job_id()
        self.claimed = self.folder / files.CLAIMED / name
        self.scratch = Path(tempfile.mkdtemp(prefix="clustrix-pool-"))
        self.children: dict[str, CallProcess] = {}
        self.listing: list[str] = []
        self.calls_done = self.tasks_done = 0
        self.task: str | None = None
        self.last_active = time.monotonic()
        self.last_heartbeat = 0.0
        self.terminated = False
        self.unfit = False

    # ------------------------------------------------------------------ heartbeat

    def heartbeat(self, state: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_heartbeat < _HEARTBEAT:
            return
        self.last_heartbeat = now
        status = {
            "worker": self.name,
            "job": self.job,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": state,
            "task": self.task,
            "started": self.started,
            "deadline": self.deadline,
            "calls": self.calls_done,
            "tasks": self.tasks_done,
            "updated": time.time(),
        }
        files.write_status(self.folder / files.WORKERS / f"{self.name}.json", status)

    # ------------------------------------------------------------------ taking tasks

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def claim(self) -> str | None:
        """Rename the oldest queued task that fits into this worker's folder; its name.

        The queue is listed once and worked through (a task another worker took is
        skipped), so a long queue costs one listing per pass, not one per task.
        """
        self.unfit = False
        listed = False
        while True:
            if not self.listing:
                if listed:
                    return None
                self.listing = sorted(os.listdir(self.folder / files.QUEUE), reverse=True)
                listed = True
                continue
            name = self.listing.pop()
            parsed = files.parse_task_name(name)
            if parsed is None:
                continue
            if parsed[0] > self.remaining():
                self.unfit = True
                continue
            try:
                os.rename(self.folder / files.QUEUE / name, self.claimed / name)
            except FileNotFoundError:
                continue  # another worker was first
            return name

    def run(self, name: str) -> None:
        """Run one claimed task and hand its result (or its loss) back through the folder."""
        path = self.claimed / name
        task = files.read_record(path)
        self.task = task["id"]
        record = self.execute(task, path)
        if record.get("lost"):
            files.write_record(self.folder / files.LOST / task["id"], record)
        else:
            files.write_record(self.folder / files.RESULTS / task["id"], record)
            self.calls_done += task.get("count", 1)
        self.tasks_done += 1
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        self.task = None
        self.last_active = time.monotonic()

    def execute(self, task: dict[str, Any], path: Path) -> dict[str, Any]:
        out, err = self.scratch / "stdout", self.scratch / "stderr"
        base = {"id": task["id"], "worker": self.name, "job": self.job}
        child = self.children.get(task["python"])
        if child is None:
            child = self.children[task["python"]] = CallProcess(task["python"], self.folder)
        function = self.folder / files.FUNCTIONS / f"{task['function']}.pkl"
        checkpoints = files.checkpoint_template(self.folder, task.get("key") or task["id"])
        request = {"task": str(path), "function": str(function), "checkpoints": checkpoints}
        child.start({**request, "stdout": str(out), "stderr": str(err), "deadline": self.deadline})
        timeout = task.get("timeout")
        began = time.monotonic()
        while True:
            self.heartbeat("busy")
            wait = _HEARTBEAT
            if timeout is not None:
                wait = max(0.0, min(wait, began + timeout - time.monotonic()))
            try:
                data = child.answer(wait)
            except EOFError:
                del self.children[task["python"]]
                how = child.stop()
                if (self.folder / files.STOP).exists():
                    return {**base, "lost": True, "stopped": True, "reason": "the pool was stopped"}
                why = "its worker's job was stopped" if self.terminated else "its process died"
                return {**base, "lost": True, "reason": f"{why} ({how}) while running it"}
            if data is not None:
                return {**base, "batch": data, **_logs(out, err)}
            if timeout is not None and time.monotonic() - began >= timeout:
                del self.children[task["python"]]
                child.stop()
                return {**base, "timeout": timeout, **_logs(out, err)}

    # ------------------------------------------------------------------ leaving

    def reason_to_leave(self) -> str | None:
        if self.terminated:
            return "stopped by the scheduler (SIGTERM)"
        if (self.folder / files.STOP).exists():
            return "the pool was stopped"
        if self.remaining() <= 0:
            return "its walltime is used up"
        idle = time.monotonic() - self.last_active
        if idle >= self.idle_timeout:
            return f"idle for {self.idle_timeout:g} s"
        if self.unfit and not self.listing:
            return "no queued task fits in the walltime it has left"
        try:
            relay_seen = os.stat(self.folder / files.RELAY_ALIVE).st_mtime
        except FileNotFoundError:
            relay_seen = self.started
        if time.time() - max(relay_seen, self.started) >= self.idle_timeout:
            return f"the client has been gone for {self.idle_timeout:g} s"
        return None

    def close(self) -> None:
        for child in self.children.values():
            child.stop()
        self.children.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)


def serve(folder: str, worker: str, walltime: float | None, idle_timeout: float) -> dict[str, Any]:
    """Run queued tasks of the pool in ``folder`` until there is a reason to leave.

    ``walltime`` is the worker job's time limit in seconds (None: unlimited), ``idle_timeout``
    how long it waits for work. Returns ``{"worker", "job", "calls", "tasks", "reason"}``.
    """
    state = Worker(folder, worker, walltime, idle_timeout)
    files.make_folders(state.folder)
    state.claimed.mkdir(mode=0o700, exist_ok=True)

    def terminated(signum: int, frame: Any) -> None:
        state.terminated = True
        for child in list(state.children.values()):
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()

    previous = signal.signal(signal.SIGTERM, terminated)
    nap = 0.001
    try:
        state.heartbeat("idle", force=True)
        while (reason := state.reason_to_leave()) is None:
            name = state.claim()
            if name is not None:
                state.run(name)
                nap = 0.001
                continue
            state.heartbeat("idle")
            time.sleep(nap)
            nap = min(_LONGEST_NAP, nap * 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
        state.close()
    state.heartbeat("exited", force=True)
    return {
        "worker": worker,
        "job": state.job,
        "calls": state.calls_done,
        "tasks": state.tasks_done,
        "reason": reason,
    }


def _logs(out: Path, err: Path) -> dict[str, str]:
    return {
        name: path.read_bytes().decode(errors="replace") if path.exists() else ""
        for name, path in (("stdout", out), ("stderr", err))
    }
