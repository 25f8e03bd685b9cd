"""PBS (PBS Pro / OpenPBS, and Torque with ``flavor="torque"``): ``#PBS`` directives,
``qsub``, ``qstat -f``, ``qdel``.

What was verified, and against what: no PBS server can be installed on the test machines. The
tests run against SLURM's PBS-compatibility commands (Debian's slurm-wlm-torque 22.05: qsub,
qstat, qdel are Perl wrappers translating to SLURM). There, verified:

* ``qsub -N NAME -o scheduler.log -j oe job-N.sh`` prints a bare id (``1128``, no server);
  the script needs its ``#!`` line. The ``#PBS`` lines are read by SLURM's own sbatch, which
  honoured ``-l walltime=``, Torque's ``-l nodes=1:ppn=N`` and ``-l mem=..mb``, PBS Pro's
  ``-l select=1:ncpus=N:mem=..mb`` (the running job had N CPUs and the memory), Torque's
  ``-t 0-N%P`` (throttle included) and PBS Pro's ``-J 0-N``: maps ran as one array with both
  flavors.
* ``qstat -f ID...`` blocks (``Job Id:``, ``job_state`` Q/R/C); the wrapper rejects ``-x``
  and ``-t`` (usage error), which exercises the fallback below; it prints no ``exit_status``,
  so a job that ends without a result is a plain failure there, and it lists array elements
  under SLURM's own job ids, so an array is followed by its id alone. ``qdel ID`` cancels a
  job or a whole array; ``qstat -B`` is not supported (no array size limit is learnt).

Not verified (written from the PBS Pro / OpenPBS and Torque manuals and sources): ``select=``
and ``-J`` on a real PBS Pro server, ``qstat -x`` history, subjob ids ``123[4].server`` and
states B/X, ``Exit_status`` values, ``qdel`` of single subjobs, ``qstat -B -f``'s
``max_array_size``.

Exit codes mapped (finished jobs, ``job_state`` F or X on PBS Pro, C on Torque): 0 completed;
PBS Pro ``JOB_EXEC_KILL_*`` -29 walltime and -28 cput -> TIMEOUT, -27 mem and -26 vmem ->
OUT_OF_MEMORY; Torque -11 walltime and -12 cput -> TIMEOUT, -10 mem -> OUT_OF_MEMORY;
256+signal (265 SIGKILL, 271 SIGTERM: qdel, or the walltime kill of older versions) ->
TIMEOUT when ``resources_used.walltime`` reached ``Resource_List.walltime``, else CANCELLED;
anything else FAILED with its code.

``queue=`` becomes ``-q`` and ``account`` ``-A``; ``partition=`` and ``qos`` are SLURM's and are
not used. The commands may live outside the login shell's PATH (the test wrappers do):
``bin_dir``, a class attribute or constructor argument, names their folder; it is quoted into
every command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .. import layout
from ..errors import ConfigError, SchedulerUnavailableError
from ..resources import Resources, format_clock
from .base import JobState, JobStatus, Scheduler, ScriptContext, clock_seconds, plain_job_name

_FLAVORS = ("pro", "torque")
_NAME_LIMITS = {"pro": 236, "torque": 15}
_BLOCK = re.compile(r"^Job Id:\s*(\S+)")
_ATTRIBUTE = re.compile(r"^\s+([A-Za-z_][\w.]*) = ?(.*)$")
_SUBJOB = re.compile(r"^(\d+)\[(\d+)\]$")
# qstat lines that only say a job is gone or finished, not that the server is unreachable.
_HARMLESS = re.compile(r"unknown job|has finished|does not exist|no such job", re.IGNORECASE)
# Tried in turn: history (PBS Pro -x; Torque's -x is XML, skipped), subjobs (-t), plain.
_QSTAT_START = "--clustrix-qstat--"
_QSTAT_OPTIONS = ("-f -x -t", "-f -t", "-f")
_UNSUPPORTED = '"<"*|*[Uu]nknown\\ option*|*[Ii]nvalid\\ option*|*[Ii]llegal\\ option*|*[Uu]sage:*'

_STATES = {
    "Q": JobState.PENDING,  # queued
    "H": JobState.PENDING,  # held
    "W": JobState.PENDING,  # waiting for its start time
    "T": JobState.PENDING,  # in transit between servers
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,  # exiting after having run
    "B": JobState.RUNNING,  # an array with subjobs begun (PBS Pro)
    "S": JobState.RUNNING,  # suspended
    "U": JobState.RUNNING,  # suspended while the workstation is busy (PBS Pro)
}
_FINISHED = {"F", "X", "C"}  # PBS Pro history, PBS Pro finished subjob, Torque completed
_PRO_CODES = {
    -29: (JobState.TIMEOUT, "walltime exceeded"),
    -28: (JobState.TIMEOUT, "cput exceeded"),
    -27: (JobState.OUT_OF_MEMORY, "mem exceeded"),
    -26: (JobState.OUT_OF_MEMORY, "vmem exceeded"),
}
_TORQUE_CODES = {
    -11: (JobState.TIMEOUT, "walltime exceeded"),
    -12: (JobState.TIMEOUT, "cput exceeded"),
    -10: (JobState.OUT_OF_MEMORY, "mem exceeded"),
}
_SIGNAL_BASE = 256

# Pass-through options: name -> (qsub flag, meaning). "flavor" and "select" change how the
# request itself is written.
_FLAGS: dict[str, tuple[str, str]] = {
    "l": ("-l", "extra resource list, e.g. 'place=scatter' or 'feature=gpu' (-l)"),
    "W": ("-W", "additional attributes, e.g. 'group_list=grp' (-W)"),
    "depend": ("-W depend=", "jobs this one waits for, e.g. 'afterok:123.server' (-W depend)"),
    "project": ("-P", "project the job is accounted to (-P)"),
    "priority": ("-p", "priority, -1024..1023 (-p)"),
    "mail_options": ("-m", "events that send mail, e.g. 'ae' (-m)"),
    "mail_user": ("-M", "where mail goes (-M)"),
    "rerunnable": ("-r", "True/False: may the job be rerun (-r y|n; arrays need y on PBS Pro)"),
    "start_time": ("-a", "start no earlier than [[[[CC]YY]MM]DD]hhmm[.SS] (-a)"),
    "umask": ("-W umask=", "umask of the job's output files (-W umask)"),
}


class PbsScheduler(Scheduler):
    name = "pbs"
    directive_prefix = "#PBS"
    supports_arrays = True
    job_id_variable = "PBS_JOBID"
    array_index_expression = "${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-$SLURM_ARRAY_TASK_ID}}"
    array_base = 0
    flag_options = _FLAGS
    yes_no_options = frozenset({"rerunnable"})
    values_without_whitespace = True
    #: Folder of qsub, qstat and qdel when they are not on the login shell's PATH.
    bin_dir: str = ""
    option_help: ClassVar[dict[str, str]] = {
        "flavor": "'pro' (PBS Pro/OpenPBS syntax, default) or 'torque' (Torque syntax)",
        "select": "extra chunk resources of select (flavor 'pro'), e.g. 'model=a100'",
        **{name: meaning for name, (_, meaning) in _FLAGS.items()},
    }

    def __init__(self, bin_dir: str | None = None) -> None:
        if bin_dir is not None:
            self.bin_dir = bin_dir

    def check_options(self, options: Mapping[str, Any]) -> None:
        super().check_options(options)
        flavor = options.get("flavor", "pro")
        if flavor not in _FLAVORS:
            raise ConfigError(
                f"pbs option flavor={flavor!r} is not valid: expected 'pro' or 'torque'",
                field="flavor",
                value=flavor,
            )

    # ------------------------------------------------------------------ script

    def directives(self, resources: Resources, context: ScriptContext) -> list[str]:
        options = dict(context.options or {})
        torque = options.pop("flavor", "pro") == "torque"
        select = options.pop("select", None)
        select = None if select is None else self.directive_value("select", select)
        lines = [f"-o {layout.SCHEDULER_LOG}", "-j oe"]
        memory = f"{resources.memory_mb}mb" if resources.memory_mb is not None else None
        if torque:
            nodes = f"nodes=1:ppn={resources.cores}"
            if resources.gpus:
                nodes += f":gpus={resources.gpus}"
            lines.append(f"-l {nodes}")
            if memory:
                lines.append(f"-l mem={memory}")
        else:
            chunk = f"select=1:ncpus={resources.cores}"
            if memory:
                chunk += f":mem={memory}"
            if resources.gpus:
                chunk += f":ngpus={resources.gpus}"
            if select:
                chunk += f":{select}"
            lines.append(f"-l {chunk}")
        if resources.time_seconds is not None:
            lines.append(f"-l walltime={format_clock(resources.time_seconds)}")
        if resources.queue:  # partition= is SLURM's; SGE and PBS have queues
            lines.append(f"-q {self.directive_value('queue', resources.queue)}")
        if context.account:
            lines.append(f"-A {self.directive_value('account', context.account)}")
        if context.array is not None:
            last = context.array.count - 1
            if torque:
                lines.append(f"-t 0-{last}%{context.array.max_parallel}")
            else:
                # PBS Pro has no throttle in -J (OpenPBS >= 2020: W="max_run_subjobs=N").
                lines.append(f"-J 0-{last}")
        return lines + self.flag_directives(options)

    def dependency_directives(self, context: ScriptContext) -> list[str]:
        # PBS has no element-wise dependency between arrays: the whole upstream, afterok.
        ids = context.after or ((context.after_each,) if context.after_each else ())
        if not ids:
            return []
        return ["-W depend=afterok:" + ":".join(self.directive_value("depend", i) for i in ids)]

    # ------------------------------------------------------------------ commands

    def version_command(self) -> str:
        # PBS Pro, Torque and compatibility wrappers disagree on version flags: show the path.
        return f"command -v {self._command('qsub')} || echo 'qsub not found'"

    def _command(self, name: str) -> str:
        return shlex.quote(f"{self.bin_dir.rstrip('/')}/{name}") if self.bin_dir else name

    def submit_command(self, script: str, context: ScriptContext) -> str:
        # Output options go on the command line too: SLURM's qsub wrapper overrides the
        # script's -o with its own default otherwise; for PBS they are the same request.
        flavor = (context.options or {}).get("flavor", "pro")
        name = shlex.quote(plain_job_name(context.job_name, _NAME_LIMITS.get(flavor, 15)))
        log = layout.SCHEDULER_LOG
        return f"{self._command('qsub')} -N {name} -o {log} -j oe {shlex.quote(script)}"

    def parse_job_id(self, output: str) -> str:
        # "123.server", "123[].server" for an array; the wrappers print "123". qstat and qdel
        # want the whole id.
        return output.strip().splitlines()[-1].strip()

    def status_command(self, jobs: Mapping[str, str], detailed: bool = False) -> str:
        if not jobs:
            return "true"  # qstat without ids would list every job of the server
        ids = " ".join(shlex.quote(job_id) for job_id in jobs)
        qstat = self._command("qstat")
        # Finished jobs are in the history (-x) only: asked for in a detailed look.
        choices = _QSTAT_OPTIONS if detailed else _QSTAT_OPTIONS[1:]
        options = " ".join(shlex.quote(choice) for choice in choices)
        # qstat's answer is framed by a marker, so that text a login shell adds before it
        # can never be read as qstat's.
        return (
            f"for o in {options}; do out=$({qstat} $o {ids} 2>&1); "
            f'case "$out" in {_UNSUPPORTED}) continue;; esac; break; done; '
            f"echo {_QSTAT_START}; printf '%s\\n' \"$out\""
        )

    def parse_status(self, output: str, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        wanted = {short_id(job_id): job_id for job_id in job_ids}
        _, marker, framed = output.partition(_QSTAT_START)
        blocks, stray = parse_qstat_full(framed if marker else output)
        unexplained = [line for line in stray if not _HARMLESS.search(line)]
        if unexplained and not blocks:
            raise SchedulerUnavailableError(f"qstat failed: {' / '.join(unexplained[-3:])}")
        statuses: dict[str, JobStatus] = {}
        for block_id, attributes in blocks.items():
            short = short_id(block_id)
            subjob = _SUBJOB.match(short)
            if short in wanted:
                statuses[wanted[short]] = attribute_status(attributes)
            elif subjob and f"{subjob.group(1)}[]" in wanted:
                parent = wanted[f"{subjob.group(1)}[]"]
                statuses[f"{parent}_{subjob.group(2)}"] = attribute_status(attributes)
        # Subjobs keep their own "<array id>_<index>" keys and fall back on the array's state
        # (all the wrappers show); ids nobody knows are UNKNOWN.
        return {job_id: JobStatus(JobState.UNKNOWN) for job_id in wanted.values()} | statuses

    def cancel_command(self, job_ids: list[str]) -> str:
        targets = []
        for job_id in job_ids:
            parent, _, index = job_id.rpartition("_")
            if index.isdigit() and "[]" in parent:
                targets.append(parent.replace("[]", f"[{index}]", 1))
            elif index.isdigit() and parent.isdigit():
                # An element of an array the server named without brackets (the SLURM
                # wrappers): qdel would take the whole array, so leave it to finish.
                continue
            else:
                targets.append(job_id)
        if not targets:
            return "true"
        return f"{self._command('qdel')} " + " ".join(shlex.quote(t) for t in targets)

    def max_array_size_command(self) -> str | None:
        return f"{self._command('qstat')} -B -f 2>/dev/null | grep -i 'max_array_size'"

    def parse_max_array_size(self, output: str) -> int | None:
        value = output.partition("=")[2].strip()
        return int(value) if value.isdigit() and int(value) > 0 else None


def short_id(job_id: str) -> str:
    """``123``, ``123[]`` or ``123[4]``: the id without its server name."""
    return job_id.split(".", 1)[0]


def parse_qstat_full(text: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """``qstat -f`` blocks as {job id: {attribute (lower case): value}}, and stray lines.

    Long values continue on lines without ``name =`` (PBS Pro wraps at 80 columns).
    """
    blocks: dict[str, dict[str, str]] = {}
    stray: list[str] = []
    current: dict[str, str] | None = None
    last = ""
    for line in text.splitlines():
        block = _BLOCK.match(line)
        attribute = _ATTRIBUTE.match(line)
        if block:
            current = blocks.setdefault(block.group(1), {})
            last = ""
        elif current is not None and attribute:
            last = attribute.group(1).lower()
            current[last] = attribute.group(2).strip()
        elif current is not None and line[:1].isspace() and line.strip() and last:
            current[last] += line.strip()
        elif line.strip() and not line[:1].isspace():
            current = None
            stray.append(line.strip())
    return blocks, stray


def attribute_status(attributes: Mapping[str, str]) -> JobStatus:
    """A job's state from its ``qstat -f`` attributes."""
    state = attributes.get("job_state", "").strip()
    comment = attributes.get("comment", "")
    if state not in _FINISHED:
        return JobStatus(_STATES.get(state, JobState.UNKNOWN), None, comment or state)
    text = attributes.get("exit_status", "").strip()
    if not re.fullmatch(r"-?\d+", text):
        return JobStatus(JobState.FAILED, None, comment or "finished; no exit status reported")
    code = int(text)
    if code == 0:
        return JobStatus(JobState.COMPLETED, 0)
    known = (_TORQUE_CODES if state == "C" else _PRO_CODES).get(code)
    if known:
        return JobStatus(known[0], code, known[1])
    if code > _SIGNAL_BASE:
        signal = code - _SIGNAL_BASE
        if _over_walltime(attributes):
            return JobStatus(JobState.TIMEOUT, code, f"killed by signal {signal} at its walltime")
        return JobStatus(JobState.CANCELLED, code, f"killed by signal {signal}")
    return JobStatus(JobState.FAILED, code, comment)


def _over_walltime(attributes: Mapping[str, str]) -> bool:
    limit = clock_seconds(attributes.get("resource_list.walltime", ""))
    used = clock_seconds(attributes.get("resources_used.walltime", ""))
    return limit is not None and used is not None and used >= limit
