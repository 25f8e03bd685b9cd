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

from .checkpointing import run_requeue_callbacks

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
        self._lock = threading.Lock()

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
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.records, indent=1))
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)


def watch(attempts: Attempts) -> None:
    """Handle the scheduler's warning and stop signals for the rest of this process.

    Warning (``settings["signal"]``): with requeues left, save (callbacks), record, requeue
    and exit; without, note it and let the call run on to its limit. SIGTERM: save, record,
    exit with 143. The handlers run in the main thread, between two bytecodes of the call.
    """
    warning = getattr(signal, f"SIG{attempts.settings.get('signal', 'USR1')}")
    signal.signal(warning, lambda signum, frame: _on_warning(attempts))
    signal.signal(signal.SIGTERM, lambda signum, frame: _on_stop(attempts))


def _on_warning(attempts: Attempts) -> None:
    if attempts.requeues_left <= 0:
        attempts.note(WARNED_NO_REQUEUE)
        print(f"clustrix: {WARNED_NO_REQUEUE}", file=sys.stderr, flush=True)
        return
    # From here on the job is going away: neither a stop signal nor a repeated warning (Grid
    # Engine may send it twice) may cut the requeue short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(getattr(signal, f"SIG{attempts.settings.get('signal', 'USR1')}"), signal.SIG_IGN)
    _save(attempts)
    attempts.end(REQUEUED)
    print(f"clustrix: {REQUEUED}", file=sys.stderr, flush=True)
    command = attempts.settings.get("command")
    if command:
        try:
            subprocess.run(
                ["/bin/sh", "-c", command],
                timeout=_COMMAND_TIMEOUT,
                check=True,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"clustrix: the requeue command failed: {exc}", file=sys.stderr, flush=True)
    os._exit(int(attempts.settings.get("exit_code", 0)))


def _on_stop(attempts: Attempts) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _save(attempts)
    attempts.end(STOPPED)
    print(f"clustrix: {STOPPED}", file=sys.stderr, flush=True)
    os._exit(128 + signal.SIGTERM)


def _save(attempts: Attempts) -> None:
    """Run the call's ``on_requeue`` callbacks; their failures are reported, not raised."""
    for error in run_requeue_callbacks():
        print(
            f"clustrix: an on_requeue callback failed: {type(error).__name__}: {error}",
            file=sys.stderr,
            flush=True,
        )
    sys.stdout.flush()
    sys.stderr.flush()


def _scheduler_id() -> str:
    for name in _ID_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return ""
