"""Jobs that requeue themselves: the runner's side of ``@cluster(requeue=N)``.

A job submitted with ``requeue=N`` asks its scheduler for a warning signal some time before
its time limit (SLURM ``--signal=B:USR1@<grace>``, Grid Engine's ``s_rt``). On that signal the
runner lets the running call save a last checkpoint (its ``clustrix.on_requeue`` callbacks),
writes down how the attempt ended, and puts the job back in the queue itself: with the
scheduler's requeue command (SLURM ``scontrol requeue``) or the exit status the scheduler
reads as "run me again" (Grid Engine's 99). No client needs to be running. A job stopped by
the scheduler (preemption, a requeue from outside: SIGTERM) gets the same chance to save.

Every attempt is recorded in ``attempts-<task>.json`` in the job folder, a JSON list of
``{"attempt": n, "host": str, "scheduler_id": str, "started": epoch s, "ended": epoch s |
None, "reason": str}``, which the client reads into ``future.attempt_history``.

This module runs inside jobs, shipped in Clustrix's runtime zip: it uses only the standard
library and ``clustrix.checkpointing``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .checkpointing import call_running, forget_requeue_callbacks, run_requeue_callbacks

#: Reasons an attempt ended, as recorded and shown to the user.
REQUEUED = "requeued itself before its time limit"
WARNED_NO_REQUEUE = "warned of its time limit with no requeue left"
STOPPED = "stopped by the scheduler (SIGTERM: preemption, a requeue or a cancel)"
VANISHED = "ended without a word (killed: node failure, memory limit or time limit)"
FINISHED = "finished"

# How long the scheduler's requeue command may take (seconds): the job is killed soon after.
_COMMAND_TIMEOUT = 30.0
# Which scheduler variables name the running job, in the order they are looked for.
_ID_VARIABLES = ("SLURM_JOB_ID", "JOB_ID", "PBS_JOBID")


class Attempts:
    """The attempts of one task, kept in its ``attempts-<task>.json``.

    ``settings`` is job.json's ``requeue``: ``{"max": int, "signal": "USR1", "command":
    str, "exit_code": int}``; ``command`` is the scheduler's own requeue command (written by
    Clustrix's scheduler module, never by a user), run with ``/bin/sh``.
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings
        self.records: list[dict[str, Any]] = []
        # Re-entrant: a signal handler may record while the main thread is recording.
        self._lock = threading.RLock()

    @property
    def requeues_left(self) -> int:
        """Requeues this task may still ask for itself: ``max`` minus those done."""
        done = sum(1 for record in self.records[:-1] if record.get("reason") == REQUEUED)
        return max(0, int(self.settings.get("max", 0)) - done)

    def begin(self) -> dict[str, Any]:
        """Record the start of a new attempt (an earlier one left open ended unseen)."""
        self.records = self._read()
        if self.records and self.records[-1].get("ended") is None:
            self.records[-1].update(ended=time.time(), reason=VANISHED)
        record = {
            "attempt": len(self.records) + 1,
            "host": socket.gethostname(),
            "scheduler_id": _scheduler_id(),
            "started": time.time(),
            "ended": None,
            "reason": "",
        }
        self.records.append(record)
        self._write()
        return record

    def end(self, reason: str) -> None:
        """Record how the current attempt ended."""
        self._change(ended=time.time(), reason=reason)

    def note(self, text: str) -> None:
        """Add a remark to the current attempt (it goes on running)."""
        self._change(note=text)

    def _change(self, **fields: Any) -> None:
        """Change this attempt's record in the file as it is now: a later attempt may have
        begun meanwhile (an old run stopped late, after its node was declared lost), and
        its record must not be written over."""
        with self._lock:
            if not self.records:
                return
            number = self.records[-1]["attempt"]
            records = self._read() or self.records
            for record in records:
                if record.get("attempt") == number:
                    if "reason" in fields and record.get("ended") is not None:
                        return  # recorded as ended already (by a later attempt's start)
                    record.update(fields)
            self.records = records
            self._write()

    def _read(self) -> list[dict[str, Any]]:
        try:
            records = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return records if isinstance(records, list) else []

    def _write(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{socket.gethostname()}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(self.records, indent=1))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


def watch(attempts: Attempts) -> None:
    """Handle the scheduler's warning and stop signals for the rest of this process.

    Warning (``settings["signal"]``), while a call runs: save (callbacks); with requeues
    left, requeue and exit; without, note it and let the call run on to its limit (its last
    checkpoint saved). SIGTERM: save, record, exit with 143. The handlers run in the main
    thread, between two bytecodes of the call. Processes the call forks get the default
    handlers and no callbacks: their copy of the call's state is not the call's.
    """
    runner = os.getpid()
    warning = _warning_signal(attempts)
    signal.signal(warning, lambda signum, frame: _on_warning(attempts, runner))
    signal.signal(signal.SIGTERM, lambda signum, frame: _on_stop(attempts, runner))
    os.register_at_fork(after_in_child=lambda: _forget_in_child(warning))


def _forget_in_child(warning: int) -> None:
    for signum in (warning, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    forget_requeue_callbacks()


def _warning_signal(attempts: Attempts) -> int:
    return int(getattr(signal, f"SIG{attempts.settings.get('signal', 'USR1')}"))


def _on_warning(attempts: Attempts, runner: int) -> None:
    if os.getpid() != runner:
        return
    if not call_running():  # not begun, or its result is being written: let it be
        _quietly(attempts.note, "warned while no call was running: nothing to save")
        return
    if attempts.requeues_left <= 0:
        _save()  # the last state, for clustrix.get_job(...).restore() after the limit
        _quietly(attempts.note, WARNED_NO_REQUEUE)
        _say(WARNED_NO_REQUEUE)
        return
    # From here on the job is going away: neither a stop signal nor a repeated warning (Grid
    # Engine may send it twice) may cut the requeue short.
    warning = _warning_signal(attempts)
    handlers = {signum: signal.getsignal(signum) for signum in (warning, signal.SIGTERM)}
    for signum in handlers:
        signal.signal(signum, signal.SIG_IGN)
    _save()
    problem = _requeue_command(attempts.settings.get("command") or "")
    if problem:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        text = f"the requeue command failed ({problem}): the call runs on to its time limit"
        _quietly(attempts.note, text)
        _say(text)
        return
    _quietly(attempts.end, REQUEUED)
    _say(REQUEUED)
    os._exit(int(attempts.settings.get("exit_code", 0)))


def _on_stop(attempts: Attempts, runner: int) -> None:
    if os.getpid() != runner:  # a forked process that kept our handler: end as by default
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _save()
    _quietly(attempts.end, STOPPED)
    _say(STOPPED)
    os._exit(128 + signal.SIGTERM)


def _requeue_command(command: str) -> str:
    """Run the scheduler's requeue command (none: ""); what went wrong, or ""."""
    if not command:
        return ""
    try:
        subprocess.run(
            ["/bin/sh", "-c", command],
            timeout=_COMMAND_TIMEOUT,
            check=True,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return ""


def _save() -> None:
    """Run the calls' ``on_requeue`` callbacks; their failures are reported, not raised:
    nothing may keep a handler from ending as it must."""
    try:
        errors = run_requeue_callbacks()
    except BaseException as exc:  # the handler must go on
        errors = [exc]
    for error in errors:
        _say(f"an on_requeue callback failed: {type(error).__name__}: {error}")


def _quietly(action: Any, *args: Any) -> None:
    """``action(*args)``, a failure (a full disk) reported instead of raised into the call."""
    try:
        action(*args)
    except BaseException as exc:
        _say(f"could not record the attempt: {type(exc).__name__}: {exc}")


def _say(text: str) -> None:
    try:
        sys.stdout.flush()
        print(f"clustrix: {text}", file=sys.stderr, flush=True)
    except BaseException:  # a closed stream must not keep the handler from its end
        pass


def _scheduler_id() -> str:
    for name in _ID_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return ""
