"""SLURM: ``#SBATCH`` directives, ``sbatch --parsable``, ``squeue`` + ``sacct``, ``scancel``."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from typing import ClassVar

from .. import layout
from ..errors import SchedulerUnavailableError
from ..resources import Resources, format_slurm_time
from .base import (
    JobState,
    JobStatus,
    RequeueSupport,
    Scheduler,
    ScriptContext,
    render_flag,
)

# Option values written on #SBATCH lines as they are; any other is quoted.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.,:/@%+=-]+")

# squeue's and sacct's state names, mapped onto ours.
_STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PREEMPTED,
    "REQUEUE_HOLD": JobState.PREEMPTED,
    "REQUEUE_FED": JobState.PREEMPTED,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "SPECIAL_EXIT": JobState.FAILED,
}
_SECTION = "--clustrix-section--"
_QUEUE_START = "--clustrix-queue--"
_QUEUE_EXIT = "--clustrix-queue-exit"
# A line of squeue or sacct output: "123|RUNNING|...", "123_4|...", "123_[5-9%2]|...",
# "123.batch|..." (sacct steps, ignored by the lookups). Nothing else is a job's line.
_RECORD = re.compile(r"^\d+(?:_(?:\d+|\[[^\]]*\]))?(?:\.[\w+-]+)?\|")
# squeue's own complaints start with its name or the library call that failed.
_COMPLAINT = re.compile(r"^(?:squeue|slurm_\w+)(?::| error)", re.IGNORECASE)


def parse_state(text: str) -> JobState:
    """``CANCELLED by 1000`` and ``RUNNING`` alike; unknown names are UNKNOWN."""
    word = text.strip().split(" ")[0].rstrip("+").upper()
    return _STATES.get(word, JobState.UNKNOWN)


class SlurmScheduler(Scheduler):
    name = "slurm"

    def version_command(self) -> str:
        return "sinfo --version"

    directive_prefix = "#SBATCH"
    supports_arrays = True
    job_id_variable = "SLURM_JOB_ID"
    element_dependencies = True
    # An array's pending elements all lose their dependency (verified on SLURM 22.05, as the
    # job's owner).
    dependency_clear = "for id in {ids}; do scontrol update jobid=$id dependency=; done"
    array_index_expression = "$SLURM_ARRAY_TASK_ID"
    # SLURM_JOB_ID is an array element's own id too. A requeued job waits about 120 s
    # (reason BeginTime) before it may start again; its owner may bring that forward with
    # StartTime (verified on SLURM 22.05, as an unprivileged user). Not to "now": slurmd
    # refuses a run whose credential dates from the second the last run's was revoked
    # ("Job credential revoked"), so a few seconds later.
    requeue = RequeueSupport(
        signal="USR1",
        command='scontrol requeue "$SLURM_JOB_ID"',
        exit_code=0,
        release="for id in {ids}; do scontrol update jobid=$id starttime=now+3; done",
        clashing_options=("signal", "no_requeue"),
    )
    option_help: ClassVar[dict[str, str]] = {
        "constraint": "node features required (--constraint)",
        "exclusive": "whole nodes for the job (--exclusive)",
        "nodes": "number of nodes (--nodes)",
        "ntasks": "number of tasks (--ntasks)",
        "ntasks_per_node": "tasks per node (--ntasks-per-node)",
        "mem_per_cpu": "memory per CPU instead of per node (--mem-per-cpu)",
        "gpus": "GPUs with --gpus instead of --gres (--gpus)",
        "gres": "generic resources, e.g. 'gpu:a100:2' (--gres)",
        "reservation": "an existing reservation (--reservation)",
        "nodelist": "specific nodes (--nodelist)",
        "exclude": "nodes to avoid (--exclude)",
        "begin": "start no earlier than this time (--begin)",
        "comment": "free text stored with the job (--comment)",
        "licenses": "licenses the job needs (--licenses)",
        "mail_type": "events that send mail (--mail-type)",
        "mail_user": "where mail goes (--mail-user)",
        "requeue": "allow requeueing (--requeue)",
        "no_requeue": "forbid requeueing (--no-requeue)",
        "signal": "signal before the time limit (--signal)",
        "tmp": "minimum local scratch space (--tmp)",
        "hint": "task placement hint (--hint)",
        "cluster": "cluster of a federation (--clusters)",
        "wckey": "workload characterisation key (--wckey)",
        "dependency": "jobs this one waits for (--dependency)",
    }

    def directives(self, resources: Resources, context: ScriptContext) -> list[str]:
        lines = [
            f"--output={layout.SCHEDULER_LOG}",
            "--open-mode=append",
            f"--cpus-per-task={resources.cores}",
        ]
        if context.array is not None:
            array = context.array
            lines.append(f"--array=0-{array.count - 1}%{array.max_parallel}")
        if resources.memory_mb is not None:
            lines.append(f"--mem={resources.memory_mb}M")
        if resources.time_seconds is not None:
            lines.append(f"--time={format_slurm_time(resources.time_seconds)}")
        if resources.partition:
            lines.append(f"--partition={self.directive_value('partition', resources.partition)}")
        options = dict(context.options or {})
        if resources.gpus and "gpus" not in options and "gres" not in options:
            lines.append(f"--gres=gpu:{resources.gpus}")
        if context.account:
            lines.append(f"--account={self.directive_value('account', context.account)}")
        if context.qos:
            lines.append(f"--qos={self.directive_value('qos', context.qos)}")
        for name, value in options.items():
            if value is False or value is None:
                continue
            rendered = True if value is True else self.directive_value(name, value)
            lines.append(render_flag("clusters" if name == "cluster" else name, rendered))
        if context.requeue_grace is not None:
            # B: signals the batch shell, which the runner replaced (exec); SLURM may send
            # it up to 60 s earlier than asked.
            lines += ["--requeue", f"--signal=B:USR1@{context.requeue_grace}"]
        return lines

    def dependency_directives(self, context: ScriptContext) -> list[str]:
        # aftercorr: element i of this array starts once element i of the upstream array
        # completed. An upstream that can no longer end well (an element failed, timed out,
        # was cancelled) would leave this job PENDING (DependencyNeverSatisfied) for ever:
        # --kill-on-invalid-dep makes SLURM remove it instead.
        if context.after_each:
            after = f"aftercorr:{self.directive_value('dependency', context.after_each)}"
        elif context.after:
            ids = ":".join(self.directive_value("dependency", i) for i in context.after)
            after = f"afterok:{ids}"
        else:
            return []
        return [f"--dependency={after}", "--kill-on-invalid-dep=yes"]

    def directive_value(self, name: str, value: object) -> str:
        """The value, double-quoted when it holds more than a plain word: sbatch reads
        ``#SBATCH`` lines with quotes (``--comment="two words"``), backslash escapes and
        ``#`` comments, as verified on SLURM 22.05."""
        text = super().directive_value(name, value)
        if _PLAIN_VALUE.fullmatch(text):
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def submit_command(self, script: str, context: ScriptContext) -> str:
        # The name goes on the command line, quoted: a directive line cannot carry every
        # character a name may hold, and the shell must never interpret it.
        return f"sbatch --parsable --job-name={shlex.quote(context.job_name)} {shlex.quote(script)}"

    def max_array_size_command(self) -> str | None:
        return "scontrol show config 2>/dev/null | grep -i '^MaxArraySize'"

    def parse_max_array_size(self, output: str) -> int | None:
        # Elements are numbered 0 .. MaxArraySize-1.
        value = output.partition("=")[2].strip()
        return int(value) if value.isdigit() else None

    def parse_job_id(self, output: str) -> str:
        # --parsable prints "id" or "id;cluster".
        return output.strip().splitlines()[-1].split(";")[0].strip()

    def status_command(self, jobs: Mapping[str, str], detailed: bool = False) -> str:
        ids = shlex.quote(",".join(jobs))
        # squeue knows queued, running and recently ended jobs in milliseconds. sacct (when
        # accounting is on) knows exit codes and jobs squeue has forgotten, but costs a
        # database query: it runs only for a detailed look at jobs that ended without result.
        # squeue's answer is framed by markers, its exit status included, so that text a
        # login shell or a site wrapper adds can never be read as squeue's.
        command = (
            f"echo {_QUEUE_START}; "
            f"squeue --noheader --array --states=all --format='%i|%T|%r' --jobs={ids} 2>&1; "
            f'echo "{_QUEUE_EXIT} $?"; echo {_SECTION}; '
        )
        if detailed:
            command += (
                "sacct --noheader --parsable2 --allocations --format=JobID,State,ExitCode "
                f"--jobs={ids} 2>/dev/null; "
            )
        return command + "true"

    def parse_status(self, output: str, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        queue_part, _, accounting_part = output.partition(_SECTION)
        queue_lines, exit_code = _framed(queue_part)
        _raise_if_unavailable(queue_lines, exit_code)
        statuses: dict[str, JobStatus] = {}
        for fields in _records(accounting_part):
            code = fields[2].split(":")[0] if len(fields) > 2 else ""
            statuses[fields[0]] = JobStatus(
                parse_state(fields[1]), int(code) if code.isdigit() else None, fields[1]
            )
        for fields in _records("\n".join(queue_lines)):
            # squeue is current (sacct can lag a second or two); only sacct has exit codes.
            known = statuses.get(fields[0])
            statuses[fields[0]] = JobStatus(
                parse_state(fields[1]),
                known.exit_code if known else None,
                fields[2] if len(fields) > 2 else "",
            )
        # Array elements keep their own "<id>_<n>" keys; requested ids nobody knows are UNKNOWN.
        return {job_id: JobStatus(JobState.UNKNOWN) for job_id in job_ids} | statuses

    def cancel_command(self, job_ids: list[str]) -> str:
        """``scancel`` of jobs and array elements; the elements of one array are named
        together (``123_[4-9,12]``), which scancel handles in one request instead of one
        per element."""
        whole: list[str] = []
        elements: dict[str, list[int]] = {}
        for job_id in job_ids:
            parent, _, index = job_id.partition("_")
            if index.isdigit():
                elements.setdefault(parent, []).append(int(index))
            else:
                whole.append(job_id)
        targets = whole + [
            f"{parent}_{indices[0]}" if len(indices) == 1 else f"{parent}_[{_ranges(indices)}]"
            for parent, indices in elements.items()
        ]
        return "scancel " + " ".join(shlex.quote(target) for target in targets)


def _ranges(indices: list[int]) -> str:
    """``4-9,12`` for [4, 5, 6, 7, 8, 9, 12] (sorted, duplicates dropped)."""
    runs: list[list[int]] = []
    for index in sorted(set(indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _framed(text: str) -> tuple[list[str], int | None]:
    """The lines between squeue's markers and its exit status (None if unmarked: then the
    whole text, as older status commands printed it)."""
    start, marker, rest = text.partition(_QUEUE_START)
    body = rest if marker else start
    body, marker, after = body.partition(_QUEUE_EXIT)
    code = after.split()[0] if marker and after.split() else ""
    return body.splitlines(), int(code) if code.lstrip("-").isdigit() else None


def _raise_if_unavailable(lines: list[str], exit_code: int | None) -> None:
    """Raise when squeue failed for another reason than jobs it has forgotten.

    "Invalid job id" only means the queue forgot finished jobs; anything else (the controller
    down, say) must not be mistaken for jobs that vanished.
    """
    complaints = [line.strip() for line in lines if _COMPLAINT.match(line.strip())]
    serious = [line for line in complaints if "invalid job id" not in line.lower()]
    if exit_code not in (None, 0) and not serious and not complaints:
        serious = [line.strip() for line in lines if line.strip()][-3:] or [
            f"squeue exited with {exit_code} and printed nothing"
        ]
    if serious:
        raise SchedulerUnavailableError(f"squeue failed: {' / '.join(serious[-3:])}")


def _records(text: str) -> list[list[str]]:
    """The ``|``-separated fields of each job line, other lines skipped."""
    return [line.strip().split("|") for line in text.splitlines() if _RECORD.match(line.strip())]
