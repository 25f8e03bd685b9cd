"""No scheduler: the job runs detached on an SSH host, tracked by its session.

The job survives the SSH session (``setsid`` + ``nohup``), its exit code lands in a file, a
time limit is enforced with ``timeout``, and cancelling signals the whole session. The tasks of
one job run at most ``nproc / cores`` at a time.
"""

from __future__ import annotations

import numbers
import shlex
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .. import layout
from ..errors import ConfigError
from ..resources import Resources
from .base import JobState, JobStatus, Scheduler, ScriptContext

# `timeout` exits with 124 when the limit is reached; signals give 128 + number.
_TIMEOUT_EXIT = 124
_SIGNAL_EXITS = {128 + 15, 128 + 9}


class SshScheduler(Scheduler):
    name = "ssh"
    waits_in_script = True
    option_help: ClassVar[dict[str, str]] = {
        "nice": "scheduling priority adjustment passed to nice(1)",
    }

    def directives(self, resources: Resources, context: ScriptContext) -> list[str]:
        return []

    def check_options(self, options: Mapping[str, Any]) -> None:
        nice = options.get("nice")
        if nice is not None and (
            isinstance(nice, bool)
            or not isinstance(nice, numbers.Integral)
            or not -20 <= nice <= 19
        ):
            raise ConfigError(
                f"ssh option nice={nice!r} is not valid: expected an integer from -20 to 19",
                field="nice",
                value=nice,
            )
        super().check_options(options)

    def task_launch(self, resources: Resources, context: ScriptContext) -> str:
        folder = shlex.quote(context.job_dir)
        command = f'{context.python_command} {folder}/{layout.RUNNER} {folder} "$task"'
        # No scheduler shares out the host: the tasks of a job take turns for its cores. Each
        # task holds one of nproc/cores slot locks (fd 8, kept by the exec'd runner) while it
        # runs, so a map of a hundred calls runs a core's worth at a time, not all at once.
        wait_for_slot = (
            f'slots=$(( $(nproc) / {resources.cores} )); [ "$slots" -ge 1 ] || slots=1; '
            'while :; do for slot in $(seq 1 "$slots"); do '
            f'exec 8> {folder}/slot-"$slot"; flock -n 8 && break 2; '
            "done; sleep 0.2; done"
        )
        # A pipeline: wait for each upstream session to end, as a scheduler's dependency
        # waits for the upstream job (the runner then reads the results, and fails the calls
        # whose upstream left none). Not only for the result file: the upstream runner may go
        # on with this job's calls itself (runner.follow). Before taking a slot, so that
        # waiting tasks never hold the cores their upstream needs.
        # The exit status file ends the wait too: the id may be reused once the session ended.
        waits = [
            f"while [ ! -e {shlex.quote(status)} ] && kill -0 {shlex.quote(session)} "
            "2>/dev/null; do sleep 0.5; done"
            for status, session in context.wait_for
        ]
        wait_for_slot = "\n".join([*waits, wait_for_slot])
        nice = (context.options or {}).get("nice")
        if nice is not None:
            command = f"nice -n {int(nice)} {command}"
        if resources.time_seconds is not None:
            command = f"timeout --kill-after=10 {resources.time_seconds} {command}"
        return f"{wait_for_slot}\nexec {command}"

    def submit_command(self, script: str, context: ScriptContext) -> str:
        # setsid gives the job a session of its own, whose id the job records itself
        # (setsid may fork, so $! would not be it); a cancel signals the whole session.
        # The exit code is kept in a file named by that id, for the status check. Each task
        # of a job is its own submission in the same folder: the files are per task, and a
        # resubmitted task's old id file is removed before it starts again.
        pid_file = layout.pid_file(context.task or 0)
        inner = (
            f"echo $$ > {pid_file}; bash {shlex.quote(script)} >> {layout.SCHEDULER_LOG} 2>&1 "
            f'< /dev/null; echo $? > "{layout.exit_code_file("$$")}"'
        )
        return (
            f"rm -f {pid_file}; "
            f"setsid nohup bash -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null & "
            f"for _ in $(seq 250); do [ -s {pid_file} ] && break; sleep 0.02; done; cat {pid_file}"
        )

    def parse_job_id(self, output: str) -> str:
        return output.strip().splitlines()[-1].strip()

    def status_command(self, jobs: Mapping[str, str], detailed: bool = False) -> str:
        checks = []
        for pid, folder in jobs.items():
            code_file = shlex.quote(f"{folder}/{layout.exit_code_file(pid)}")
            checks.append(
                f"if [ -s {code_file} ]; then echo {shlex.quote(pid)} DONE $(cat {code_file}); "
                f"elif kill -0 {shlex.quote(pid)} 2>/dev/null; "
                f"then echo {shlex.quote(pid)} RUNNING; "
                f"else echo {shlex.quote(pid)} LOST; fi"
            )
        return "; ".join(checks)

    def parse_status(self, output: str, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        statuses: dict[str, JobStatus] = {}
        for line in output.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1] == "RUNNING":
                statuses[fields[0]] = JobStatus(JobState.RUNNING)
            elif len(fields) >= 3 and fields[1] == "DONE" and fields[2].lstrip("-").isdigit():
                statuses[fields[0]] = self._finished(int(fields[2]))
            elif len(fields) >= 2 and fields[1] == "LOST":
                statuses[fields[0]] = JobStatus(JobState.FAILED, None, "process gone, no exit code")
        return {job_id: statuses.get(job_id, JobStatus(JobState.UNKNOWN)) for job_id in job_ids}

    @staticmethod
    def _finished(code: int) -> JobStatus:
        if code == 0:
            return JobStatus(JobState.COMPLETED, 0)
        if code == _TIMEOUT_EXIT:
            return JobStatus(JobState.TIMEOUT, code, "time limit reached")
        if code in _SIGNAL_EXITS:
            return JobStatus(JobState.CANCELLED, code, "terminated by a signal")
        return JobStatus(JobState.FAILED, code)

    def cancel_command(self, job_ids: list[str]) -> str:
        # The pid is the job's session id; `timeout` moves into a process group of its own,
        # so signal the whole session rather than one group.
        sessions = " ".join(f"pkill -TERM -s {shlex.quote(job_id)};" for job_id in job_ids)
        return f"{sessions} true"
