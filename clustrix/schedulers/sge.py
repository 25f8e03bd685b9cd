"""Grid Engine (SGE, Son of Grid Engine, OGS): ``#$`` directives, ``qsub -terse``, ``qstat`` +
``qacct``, ``qdel``.

Verified against Son of Grid Engine 8.1.9 (Debian 12's gridengine packages) on the test
cluster: the directives below, ``-terse`` ids of plain jobs and arrays, the ``qstat`` columns
of running, pending, held, error (``Eqw``) jobs and of task ranges such as
``1-3:1,5,6,8-10:1``, ``qstat -j`` error reasons, and ``qacct -j`` records of a completed
job, a non-zero exit, an ``h_rt`` kill (``failed 37``), a ``qdel`` of a running job
(``failed 100``, ``exit_status 137``) and of array tasks (one record per ``taskid``).

Why things are the way they are:

* Memory requests in Grid Engine are per slot: ``-pe smp 2 -l h_vmem=512M`` gave the job a
  1 GiB ``ulimit -v``. The job's memory is therefore divided by its cores, rounded up.
  ``h_vmem`` is a limit on *virtual* memory; sites that use another complex name it with
  ``memory_resources``.
* Job names may not hold whitespace, non-ASCII, ``/ : @ * ? \\``, nor start with a digit
  (all refused by qsub 8.1.9): they are reduced to ``[A-Za-z0-9._-]``.
* ``qacct`` learns of a job only when qmaster flushes its accounting file (``flush_time``,
  often 15 s on real sites, 1 s on the test cluster). The detailed look waits once, briefly,
  for jobs not yet there; one that ended without a result and is still not accounted for
  reads as UNKNOWN, which the backend reports as a failure without the precise reason (time
  limit, cancellation).
* ``queue=`` becomes ``-q`` and ``account`` ``-A``; ``partition=`` and ``qos`` are SLURM's and
  are not used. ``gpus=`` requests the ``gpu_resource`` complex, which sites define per slot or
  per job: check with ``qconf -sc``.
* A job in an error state (``Eqw``) never runs: it is reported FAILED with ``qstat -j``'s
  error reason, and stays in the queue for the user to inspect or ``qdel``.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar

from .. import layout
from ..errors import SchedulerUnavailableError
from ..resources import Resources, format_clock
from .base import (
    JobState,
    JobStatus,
    RequeueSupport,
    Scheduler,
    ScriptContext,
    clock_seconds,
    plain_job_name,
)

_QSTAT_START = "--clustrix-qstat--"
_QSTAT_EXIT = "--clustrix-qstat-exit--"
_JOB_MARK = "--clustrix-sge-job--"
_ACCOUNTING_WAIT = 2  # seconds, once per detailed look, for qmaster to flush accounting
_RECORD_SEPARATOR = re.compile(r"^={10,}\s*$")

# qacct's "failed" codes with a meaning of their own (sge_status(5), accounting(5)).
_FAILED_LIMIT = 37  # qmaster enforced h_rt, h_cpu, or h_vmem limit
_FAILED_AFTER_JOB = 100  # "assumedly after job": what a qdel of a running job leaves
_KILL_EXITS = {128 + 9, 128 + 15}

# Pass-through options: name -> (qsub flag, meaning). "pe", "memory_resources" and
# "gpu_resource" change how the request is rendered rather than adding a flag.
_FLAGS: dict[str, tuple[str, str]] = {
    "project": ("-P", "project the job is accounted to (-P)"),
    "priority": ("-p", "priority relative to your other jobs, -1023..0 (-p)"),
    "hold_jid": ("-hold_jid", "jobs (ids or names) this one waits for (-hold_jid)"),
    "l": ("-l", "extra resource requests, e.g. 'arch=lx-amd64,gpu=1' (-l)"),
    "binding": ("-binding", "core binding strategy, e.g. 'linear:2' (-binding)"),
    "mail_options": ("-m", "events that send mail, e.g. 'ea' (-m)"),
    "mail_user": ("-M", "where mail goes (-M)"),
    "notify": ("-notify", "warn the job with SIGUSR1/SIGUSR2 before suspend or kill (-notify)"),
    "rerun": ("-r", "True/False: may the job be rerun after a host failure (-r y|n)"),
    "ar": ("-ar", "an existing advance reservation id (-ar)"),
    "start_time": ("-a", "start no earlier than [[CC]YY]MMDDhhmm[.SS] (-a)"),
    "checkpoint": ("-ckpt", "checkpointing environment (-ckpt)"),
    "soft_time": ("-l s_rt=", "soft run-time limit HH:MM:SS, sends SIGUSR1 (-l s_rt)"),
}


class SgeScheduler(Scheduler):
    name = "sge"

    def version_command(self) -> str:
        return "qstat -help | head -n 1"  # e.g. "SGE 8.1.9"; there is no --version

    directive_prefix = "#$"
    supports_arrays = True
    job_id_variable = "JOB_ID"
    # The soft walltime s_rt sends SIGUSR1 (sometimes twice); a job that exits with 99 is
    # rescheduled with its id and task (RESTARTED=1), whatever the queue's rerun setting,
    # starting again some 15 s later once its host has cleaned up. Verified on SGE 8.1.9.
    requeue = RequeueSupport(
        signal="USR1",
        command="",
        exit_code=99,
        needs_time_limit=True,
        clashing_options=("notify", "r", "soft_time"),
    )
    array_index_expression = "$SGE_TASK_ID"
    array_base = 1
    option_help: ClassVar[dict[str, str]] = {
        "pe": "parallel environment giving cores > 1 their slots (-pe NAME N; default 'smp')",
        "memory_resources": (
            "comma-separated per-slot complexes that memory= sets (default 'h_vmem,mem_free')"
        ),
        "gpu_resource": "the complex that gpus= requests (default 'gpu')",
        **{name: meaning for name, (_, meaning) in _FLAGS.items()},
    }
    flag_options = _FLAGS
    yes_no_options = frozenset({"rerun"})
    values_without_whitespace = True

    def directives(self, resources: Resources, context: ScriptContext) -> list[str]:
        options = dict(context.options or {})
        pe = self.directive_value("pe", options.pop("pe", "smp"))
        memory_resources = self.directive_value(
            "memory_resources", options.pop("memory_resources", "h_vmem,mem_free")
        ).split(",")
        gpu_resource = self.directive_value("gpu_resource", options.pop("gpu_resource", "gpu"))
        lines = ["-S /bin/bash", "-cwd", "-j y", f"-o {layout.SCHEDULER_LOG}"]
        if resources.cores > 1:
            lines.append(f"-pe {pe} {resources.cores}")
        if resources.memory_mb is not None:
            per_slot = math.ceil(resources.memory_mb / resources.cores)
            lines.append("-l " + ",".join(f"{r.strip()}={per_slot}M" for r in memory_resources))
        if resources.time_seconds is not None:
            lines.append(f"-l h_rt={format_clock(resources.time_seconds)}")
        if context.requeue_grace is not None:
            # -r y: an admin's `qmod -rj` (a preemption) reschedules it too. Not -notify: with
            # it, a rescheduled job was lost instead (SGE 8.1.9).
            lines.append("-r y")
            if resources.time_seconds is not None:
                warning = max(1, resources.time_seconds - context.requeue_grace)
                lines.append(f"-l s_rt={format_clock(warning)}")
        if resources.gpus:
            lines.append(f"-l {gpu_resource}={resources.gpus}")
        if resources.queue:  # partition= is SLURM's; SGE and PBS have queues
            lines.append(f"-q {self.directive_value('queue', resources.queue)}")
        if context.account:
            lines.append(f"-A {self.directive_value('account', context.account)}")
        if context.array is not None:
            lines.append(f"-t 1-{context.array.count}")
            if context.array.max_parallel < context.array.count:
                lines.append(f"-tc {context.array.max_parallel}")
        return lines + self.flag_directives(options)

    def dependency_directives(self, context: ScriptContext) -> list[str]:
        # -hold_jid_ad: task i of this array waits for task i of the upstream array (same
        # size). Grid Engine releases a hold when the upstream ends however it ended: the
        # runner reads the upstream results and fails calls whose upstream failed.
        if context.after_each:
            return [f"-hold_jid_ad {self.directive_value('hold_jid', context.after_each)}"]
        if context.after:
            ids = ",".join(self.directive_value("hold_jid", i) for i in context.after)
            return [f"-hold_jid {ids}"]
        return []

    def submit_command(self, script: str, context: ScriptContext) -> str:
        name = shlex.quote(plain_job_name(context.job_name))
        return f"qsub -terse -N {name} {shlex.quote(script)}"

    def parse_job_id(self, output: str) -> str:
        # -terse prints "123" for a job and "123.1-10:1" for an array.
        return output.strip().splitlines()[-1].strip().split(".")[0]

    def status_command(self, jobs: Mapping[str, str], detailed: bool = False) -> str:
        if not jobs:
            return "true"
        # qstat lists the user's queued and running jobs (and array task ranges) in one call;
        # its exit status tells "no such jobs" (0, empty) from "qmaster unreachable".
        command = (
            f'q=$(qstat -u "$(id -un)" 2>&1); rc=$?; echo {_QSTAT_START}; '
            f'printf \'%s\\n\' "$q"; echo "{_QSTAT_EXIT} $rc"'
        )
        if detailed:
            # Finished jobs are only in the accounting file, one qacct call per job (each
            # reads the whole file: only for the detailed look at jobs ending without result).
            # qmaster writes that file every flush_time: jobs gone from the queue but not yet
            # accounted for are asked about once more, after one shared short wait.
            ids = " ".join(shlex.quote(job_id) for job_id in jobs)
            command += (
                f'; late=""; for id in {ids}; do echo "{_JOB_MARK} $id"; '
                "qstat -j \"$id\" 2>/dev/null | grep '^error reason'; "
                'qacct -j "$id" 2>/dev/null || case "$q" in *" $id "*) ;; '
                '*) late="$late $id";; esac; done; '
                f'if [ -n "$late" ]; then sleep {_ACCOUNTING_WAIT}; for id in $late; do '
                f'echo "{_JOB_MARK} $id"; qacct -j "$id" 2>/dev/null; done; fi'
            )
        return command + "; true"

    def parse_status(self, output: str, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        wanted = set(job_ids)
        # Only what follows the start marker is qstat's: a login shell may print before it.
        before, started, framed = output.partition(_QSTAT_START)
        queue_part, marker, detail_part = (framed if started else before).partition(_QSTAT_EXIT)
        exit_code = detail_part.split("\n", 1)[0].strip()
        if marker and exit_code != "0":
            raise SchedulerUnavailableError(f"qstat failed: {_tail(queue_part)}")
        reasons, records = _parse_details(detail_part)
        statuses: dict[str, JobStatus] = {}
        for key, record in records.items():
            if key.split("_")[0] in wanted:
                statuses[key] = accounting_status(record)
        # The queue is current; accounting only knows jobs and tasks that have ended.
        for job, state, tasks in _queue_lines(queue_part):
            if job not in wanted:
                continue
            status = queue_status(state, reasons.get(job, ""))
            if tasks is None:
                statuses[job] = status
            else:
                for task in expand_tasks(tasks):
                    statuses[f"{job}_{task}"] = status
        # Array elements keep their own "<id>_<task>" keys; ids nobody knows are UNKNOWN.
        return {job_id: JobStatus(JobState.UNKNOWN) for job_id in wanted} | statuses

    def cancel_command(self, job_ids: list[str]) -> str:
        # qdel takes "123" for a job and "123.4" for one task of an array.
        targets = [job_id.replace("_", ".", 1) for job_id in job_ids]
        return "qdel " + " ".join(shlex.quote(target) for target in targets)

    def max_array_size_command(self) -> str | None:
        return "qconf -sconf 2>/dev/null | grep '^max_aj_tasks'"

    def parse_max_array_size(self, output: str) -> int | None:
        # "max_aj_tasks 75000": tasks 1..75000. 0 means unlimited: the backend's default holds.
        fields = output.split()
        if len(fields) >= 2 and fields[1].isdigit() and int(fields[1]) > 0:
            return int(fields[1])
        return None


def queue_status(state: str, reason: str = "") -> JobStatus:
    """A qstat state code (``qw``, ``hqw``, ``r``, ``Rr``, ``dr``, ``Eqw``, ``s``...)."""
    if "E" in state:
        return JobStatus(JobState.FAILED, None, reason or f"error state {state}; see qstat -j")
    if any(letter in state for letter in "rtsST"):  # running, transferring, suspended
        return JobStatus(JobState.RUNNING, None, "being deleted" if "d" in state else state)
    if any(letter in state for letter in "qwh"):  # queued, waiting, held (R = restarted)
        return JobStatus(JobState.PENDING, None, state)
    if "d" in state:  # leaving: accounting will say how it ended
        return JobStatus(JobState.RUNNING, None, "being deleted")
    return JobStatus(JobState.UNKNOWN, None, state)


def accounting_status(record: Mapping[str, str]) -> JobStatus:
    """How a job or task ended, from its ``qacct -j`` record."""
    failed_text = record.get("failed", "0")
    failed = _leading_int(failed_text) or 0
    code = _leading_int(record.get("exit_status", ""))
    over_time = _over_time(record)
    if failed == 0 and code == 0:
        return JobStatus(JobState.COMPLETED, 0)
    if failed == _FAILED_LIMIT:
        # One code for three limits: memory only with evidence of reaching h_vmem.
        if not over_time and _over_memory(record):
            return JobStatus(JobState.OUT_OF_MEMORY, code, failed_text)
        return JobStatus(JobState.TIMEOUT, code, failed_text)
    if code in _KILL_EXITS and over_time:
        return JobStatus(JobState.TIMEOUT, code, "killed at its h_rt limit")
    if failed == _FAILED_AFTER_JOB and code in _KILL_EXITS:
        return JobStatus(JobState.CANCELLED, code, "killed (qdel)")
    if failed:
        return JobStatus(JobState.FAILED, code, f"failed {failed_text}")
    return JobStatus(JobState.FAILED, code, record.get("exit_status", ""))


def expand_tasks(spec: str) -> Iterator[int]:
    """Task ids of a qstat range list such as ``1-3:1,5,6,8-10:2``."""
    for part in spec.split(","):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        if not first.isdigit():
            continue
        stop = int(last) if last.isdigit() else int(first)
        yield from range(int(first), stop + 1, int(step) if step.isdigit() and step != "0" else 1)


def _queue_lines(text: str) -> Iterator[tuple[str, str, str | None]]:
    """(job id, state, task range or None) of each job line of plain ``qstat``."""
    for line in text.splitlines():
        fields = line.split()
        # job-ID prior name user state date time [queue@host] slots [ja-task-ID]; names
        # and users hold no whitespace, and only running jobs have a queue instance.
        if len(fields) < 8 or not fields[0].isdigit():
            continue
        rest = fields[7:]
        if rest and "@" in rest[0]:
            rest = rest[1:]
        yield fields[0], fields[4], rest[1] if len(rest) > 1 else None


def _parse_details(text: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Error reasons by job, and qacct records by ``"<job>"`` / ``"<job>_<task>"``."""
    reasons: dict[str, str] = {}
    records: dict[str, dict[str, str]] = {}
    job = ""
    record: dict[str, str] = {}

    def close() -> None:
        number = record.get("jobnumber", "")
        if number.isdigit():
            task = record.get("taskid", "undefined")
            # A later record (a rerun) of the same job or task replaces an earlier one.
            records[number if not task.isdigit() else f"{number}_{task}"] = dict(record)
        record.clear()

    for line in text.splitlines():
        if line.startswith(_JOB_MARK):
            close()
            job = line[len(_JOB_MARK) :].strip()
        elif line.startswith("error reason"):
            reasons.setdefault(job, line.split(":", 1)[-1].strip())
        elif _RECORD_SEPARATOR.match(line):
            close()
        else:
            key, _, value = line.strip().partition(" ")
            if key:
                record[key] = " ".join(value.split())
    close()
    return reasons, records


def _requested_limits(category: str) -> dict[str, str]:
    """The ``-l`` requests of a qacct category, e.g. ``-l h_rt=5,h_vmem=1G -pe smp 2``."""
    limits: dict[str, str] = {}
    words = category.split()
    for flag, value in itertools.pairwise(words):
        if flag == "-l":
            for item in value.split(","):
                name, _, amount = item.partition("=")
                limits[name] = amount
    return limits


def _over_time(record: Mapping[str, str]) -> bool:
    limit = clock_seconds(_requested_limits(record.get("category", "")).get("h_rt", ""))
    used = clock_seconds(record.get("ru_wallclock", "").split(" ")[0].rstrip("s"))
    return limit is not None and used is not None and used >= limit


def _over_memory(record: Mapping[str, str]) -> bool:
    """Whether the job's peak (maxvmem) reached its h_vmem, which is per slot."""
    per_slot = _bytes(_requested_limits(record.get("category", "")).get("h_vmem", ""))
    peak = _bytes(record.get("maxvmem", ""))
    slots = _leading_int(record.get("slots", "1")) or 1
    return per_slot is not None and peak is not None and peak >= 0.95 * per_slot * slots


def _bytes(text: str) -> float | None:
    """``4096M``, ``1.5G`` (requests) or ``212.539MB`` (qacct) in bytes, 1024-based."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)([KMGT]?)B?", text.strip(), re.IGNORECASE)
    if not match:
        return None
    return float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " ")


def _leading_int(text: str) -> int | None:
    match = re.match(r"\s*(-?\d+)", text)
    return int(match.group(1)) if match else None


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-3:]) or "no output"
