"""The scheduler template: what a batch system must say, and the script they all share.

A scheduler module fills in a few hooks: its directive lines for a resource request, how to
submit a script and read back the job id, how to ask for the state of many jobs at once, and
how to cancel. Everything else (the job script body, quoting, validation of extra options) is
common and lives here, so that adding a scheduler is one small file.
"""

from __future__ import annotations

import difflib
import enum
import numbers
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .. import layout
from ..errors import ConfigError
from ..resources import Resources
from ..scripttext import VARIABLE_NAME, text_problem


class JobState(enum.Enum):
    """Scheduler states, reduced to what decides the fate of a future."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"  # requeued by the scheduler: still alive, not failed
    UNKNOWN = "UNKNOWN"  # the scheduler no longer (or not yet) knows the job

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.TIMEOUT,
    JobState.OUT_OF_MEMORY,
    JobState.NODE_FAIL,
}


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    exit_code: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class ArraySpec:
    """A job array of ``count`` tasks running task indices ``offset .. offset+count-1``.

    Schedulers number array elements from 0 or 1 and cap the element index, so a large map is
    split into several arrays, each numbered from the start, with its offset in the script.
    """

    offset: int
    count: int
    max_parallel: int


@dataclass(frozen=True)
class ScriptContext:
    """Everything the job script needs beyond the resources."""

    job_name: str
    job_dir: str  # absolute path on the cluster
    python_command: str  # already quoted for the shell
    module_loads: tuple[str, ...] = ()
    environment_variables: Mapping[str, str] = None  # type: ignore[assignment]
    pre_execution_commands: tuple[str, ...] = ()
    account: str | None = None
    qos: str | None = None
    options: Mapping[str, Any] = None  # type: ignore[assignment]
    #: A job array, or None for one task whose index is ``task``.
    array: ArraySpec | None = None
    task: int = 0
    #: Scheduler ids (array elements where the scheduler has them) that must end well
    #: before this submission starts (a pipeline).
    after: tuple[str, ...] = ()
    #: An upstream array of the same shape: element i waits for its element i only.
    after_each: str | None = None
    #: Where the scheduler cannot wait (a plain SSH host): the upstream jobs to wait for in
    #: the script until they end (as SLURM's afterok would), each as the file its session
    #: writes its exit status to, and the session's id.
    wait_for: tuple[tuple[str, str], ...] = ()
    #: A job that requeues itself (``@cluster(requeue=N)``): seconds before the time limit
    #: at which the scheduler should warn it (``Scheduler.requeue``); None: it does not.
    requeue_grace: int | None = None


@dataclass(frozen=True)
class RequeueSupport:
    """How a job of a scheduler puts itself back in the queue (``@cluster(requeue=N)``).

    ``signal`` names the warning the scheduler sends before the time limit (without SIG);
    ``command`` is run by the job on that warning (a fixed shell command using only the
    scheduler's own variables; empty: none); then the job exits with ``exit_code``.
    ``release`` is a client's command that lets requeued jobs start at once (``{ids}``:
    their ids, space-separated; empty: none), for schedulers that hold them back a while.
    """

    signal: str
    command: str
    exit_code: int
    release: str = ""
    #: Whether the warning needs the job's own time limit (``time``), from which it is set.
    needs_time_limit: bool = False
    #: Pass-through options that would undo the requeue (a signal, no requeue...).
    clashing_options: tuple[str, ...] = ()


def setup_lines(
    module_loads: Iterable[str],
    environment_variables: Mapping[str, str],
    pre_execution_commands: Iterable[str],
) -> list[str]:
    """Shell lines that prepare a job's environment; every configured value is quoted.

    ``pre_execution_commands`` are commands the user wrote to be run, so they are kept as
    written; module names and variable values are data and can never execute. Variable
    names cannot be quoted: one that is not a plain identifier is refused.
    """
    lines = []
    for module in module_loads:
        problem = text_problem(module)
        if problem:
            raise ConfigError(
                f"module_loads: {module!r} is not valid: expected a module name on one line "
                f"without control characters (it contains {problem})",
                field="module_loads",
                value=module,
            )
        lines.append(f"module load {shlex.quote(module)}")
    for name, value in environment_variables.items():
        if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name):
            raise ConfigError(
                f"environment_variables: {name!r} is not valid: expected a variable name of "
                "ASCII letters, digits and _, not starting with a digit",
                field="environment_variables",
                value=name,
            )
        if "\0" in value:
            raise ConfigError(
                f"environment_variables: the value of {name} contains a NUL character, "
                "which no shell variable can hold",
                field="environment_variables",
                value=value,
            )
        lines.append(f"export {name}={shlex.quote(value)}")
    lines += list(pre_execution_commands)
    return lines


class Scheduler:
    """Base of every scheduler module; subclasses fill in the hooks marked below."""

    name: ClassVar[str]
    #: The prefix of directive lines, e.g. ``#SBATCH``; empty for no scheduler.
    directive_prefix: ClassVar[str] = ""
    #: Options a user may pass through ``@cluster(**options)``, with what each means.
    option_help: ClassVar[Mapping[str, str]] = {}
    #: Whether many tasks can be one submission; without arrays, each task is a job.
    supports_arrays: ClassVar[bool] = False
    #: qsub-style pass-through options: name -> (flag, meaning). ``flag`` ending in "=" is
    #: glued to its value; True gives the bare flag; ``yes_no_options`` render as ``flag y|n``.
    flag_options: ClassVar[Mapping[str, tuple[str, str]]] = {}
    yes_no_options: ClassVar[frozenset[str]] = frozenset()
    #: qsub splits directive lines on whitespace, so values there cannot hold any.
    values_without_whitespace: ClassVar[bool] = False
    #: Shell expression of the scheduler's element number inside an array task, counted
    #: from ``array_base``.
    array_index_expression: ClassVar[str] = "0"
    array_base: ClassVar[int] = 0
    #: The variable holding the job's own id inside a job (empty: there is none).
    job_id_variable: ClassVar[str] = ""
    #: Whether a dependency can name one array element (SLURM's ``123_4``).
    element_dependencies: ClassVar[bool] = False
    #: Whether dependencies are waited for by the job script itself (no scheduler).
    waits_in_script: ClassVar[bool] = False
    #: How its jobs requeue themselves; None where they cannot (``@cluster(requeue=N)``).
    requeue: ClassVar[RequeueSupport | None] = None
    #: A command that lets jobs waiting on others (a pipeline) start without waiting any
    #: more (``{ids}``: their ids, space-separated); empty where there is none.
    dependency_clear: ClassVar[str] = ""

    # ------------------------------------------------------------------ hooks

    def directives(self, resources: Resources, context: ScriptContext) -> list[str]:
        """Directive arguments (without the prefix) for this request, arrays included."""
        raise NotImplementedError

    def dependency_directives(self, context: ScriptContext) -> list[str]:
        """Directive arguments making the submission wait for ``context.after`` (all must
        end well) or, element by element, for the array ``context.after_each``."""
        return []

    def submit_command(self, script: str, context: ScriptContext) -> str:
        """A command, run in the job folder, that submits ``script`` and prints the id."""
        raise NotImplementedError

    def parse_job_id(self, output: str) -> str:
        raise NotImplementedError

    def status_command(self, jobs: Mapping[str, str], detailed: bool = False) -> str:
        """One command reporting on all jobs (scheduler id -> job folder) for ``parse_status``.

        ``detailed`` asks for what costs more to learn (exit codes, long-finished jobs); it
        is requested only for jobs that ended without leaving a result.
        """
        raise NotImplementedError

    def parse_status(self, output: str, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """Statuses keyed by scheduler id, and by ``"<id>_<element>"`` for array elements
        (element numbers as the scheduler counts them, from ``array_base``). Every id of
        ``job_ids`` is present; ids the scheduler does not know are ``UNKNOWN``."""
        raise NotImplementedError

    def cancel_command(self, job_ids: list[str]) -> str:
        raise NotImplementedError

    def version_command(self) -> str:
        """A command printing what answers on the login node (``clustrix status``)."""
        return "uname -srm"

    def max_array_size_command(self) -> str | None:
        """A command printing the largest array the scheduler accepts, if it can tell."""
        return None

    def parse_max_array_size(self, output: str) -> int | None:
        """How many elements one array may have, numbered from ``array_base``."""
        return None

    # ------------------------------------------------------------------ shared

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Reject unknown pass-through options, naming the closest valid one, and values
        that cannot be written on a directive line (see ``directive_value``)."""
        for name, value in options.items():
            if name not in self.option_help:
                close = difflib.get_close_matches(name, list(self.option_help), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(
                    f"unknown {self.name} option '{name}'; {hint}valid options: "
                    f"{', '.join(sorted(self.option_help))}",
                    field=name,
                    value=value,
                )
            if value is None or isinstance(value, bool):
                continue
            if not isinstance(value, (str, numbers.Real)):
                raise ConfigError(
                    f"{self.name} option {name}={value!r} is not valid: expected a string, "
                    "a number, True or False",
                    field=name,
                    value=value,
                )
            self.directive_value(name, value)

    def directive_value(self, name: str, value: Any) -> str:
        """``value`` of option or setting ``name`` as written on a directive line.

        The one place a value is rendered for a directive: one that cannot be written there
        (a line break would start a line of its own; qsub splits on whitespace) is refused
        with a ConfigError naming it and what is allowed. Subclasses may quote.
        """
        text = str(value)
        problem = text_problem(text)
        allowed = "one line without control characters"
        if problem is None and self.values_without_whitespace:
            allowed = "a non-empty value without whitespace (qsub splits directive lines on it)"
            problem = None if text.strip() else "nothing"
            if any(char.isspace() for char in text):
                problem = "whitespace"
        if problem:
            kind = "option" if name in self.option_help else "setting"
            raise ConfigError(
                f"{self.name} {kind} {name}={value!r} cannot be written on a "
                f"'{self.directive_prefix or self.name}' line: it contains {problem}; "
                f"allowed: {allowed}",
                field=name,
                value=value,
            )
        return text

    def flag_directives(self, options: Mapping[str, Any]) -> list[str]:
        """Directives for the pass-through options listed in ``flag_options``."""
        lines = []
        for name, value in options.items():
            if (
                name not in self.flag_options
                or value is None
                or (value is False and (name not in self.yes_no_options))
            ):
                continue
            flag = self.flag_options[name][0]
            if name in self.yes_no_options:
                lines.append(f"{flag} {'y' if value else 'n'}")
            elif flag.endswith("="):
                lines.append(f"{flag}{self.directive_value(name, value)}")
            elif value is True:
                lines.append(flag)
            else:
                lines.append(f"{flag} {self.directive_value(name, value)}")
        return lines

    def directive_lines(self, resources: Resources, context: ScriptContext) -> list[str]:
        """The script's directive lines, each checked to be one line.

        Every value in them went through ``directive_value``; this checks the lines again
        as they are written, so that nothing can end one early and start a line of its own.
        """
        lines = []
        for directive in [
            *self.directives(resources, context),
            *self.dependency_directives(context),
        ]:
            problem = text_problem(directive)
            if problem:
                raise ConfigError(
                    f"the {self.name} directive {directive!r} cannot be written: it contains "
                    f"{problem}; a directive is one line without control characters",
                    field="directive",
                    value=directive,
                )
            lines.append(f"{self.directive_prefix} {directive}")
        return lines

    def render_script(self, resources: Resources, context: ScriptContext) -> str:
        """The whole job script: directives, then the task's own logs, setup and runner.

        The task index decides which calls a task runs and where its stdout and stderr
        go; the scheduler's own messages (time limit, memory kills) go to scheduler.log.
        """
        folder = shlex.quote(context.job_dir)
        if context.array is None:
            task = str(context.task)
        else:
            element = self.array_index_expression
            task = f"$(( {context.array.offset} + {element} - {self.array_base} ))"
        body = [
            f"# {self.name} job written by clustrix",
            f"cd {folder}",
            f"task={task}",
            f'exec >> "{layout.stdout_file("$task")}" 2>> "{layout.stderr_file("$task")}"',
            "set -e",
            *setup_lines(
                context.module_loads,
                context.environment_variables or {},
                context.pre_execution_commands,
            ),
            self.task_launch(resources, context),
        ]
        self._check_body("\n".join(body))
        return "\n".join(["#!/bin/bash", *self.directive_lines(resources, context), *body]) + "\n"

    def render_command_script(
        self, resources: Resources, context: ScriptContext, commands: list[str]
    ) -> str:
        """A job script that runs shell ``commands`` in ``context.job_dir`` (not the runner):
        the directives of ``resources`` and ``context`` (one task, no array), then the
        commands. Used for environment builds run as jobs. Raises ConfigError as
        ``render_script`` does."""
        body = [
            f"# {self.name} job written by clustrix",
            f"cd {shlex.quote(context.job_dir)}",
            *commands,
        ]
        self._check_body("\n".join(body))
        return "\n".join(["#!/bin/bash", *self.directive_lines(resources, context), *body]) + "\n"

    def _check_body(self, body: str) -> None:
        """Refuse a script body with a line that starts like a directive: qsub (Grid Engine)
        reads such lines anywhere in the script, so a quoted value spanning lines could
        otherwise add a directive."""
        if not self.directive_prefix:
            return
        for line in body.splitlines():
            if line.startswith(self.directive_prefix):
                raise ConfigError(
                    f"a line of the {self.name} job script would start with "
                    f"'{self.directive_prefix}', which the scheduler may read as a directive: "
                    f"{line!r} (from environment_variables, pre_execution_commands, module_loads "
                    "or a path); start no line of a value or command with it",
                    field="script",
                    value=line,
                )

    def task_launch(self, resources: Resources, context: ScriptContext) -> str:
        """The line that runs the runner on task ``$task``."""
        folder = shlex.quote(context.job_dir)
        return f'exec {context.python_command} {folder}/{layout.RUNNER} {folder} "$task"'


_NAME_REFUSED = re.compile(r"[^A-Za-z0-9._-]")


def plain_job_name(name: str, limit: int = 200) -> str:
    """A name qsub-style schedulers accept: ``[A-Za-z0-9._-]``, starting with a letter."""
    cleaned = _NAME_REFUSED.sub("_", name) or "clustrix"
    if not cleaned[0].isalpha():
        cleaned = f"j{cleaned}"
    return cleaned[:limit]


def clock_seconds(text: str) -> float | None:
    """``5``, ``5.2``, ``0:0:5`` or ``00:00:05`` as seconds; None if it is none of those."""
    text = text.strip()
    if not text:
        return None
    total = 0.0
    try:
        for part in text.split(":"):
            total = total * 60 + float(part)
    except ValueError:
        return None
    return total


def render_flag(name: str, value: Any) -> str:
    """``--name=value`` for a pass-through option (``True`` gives a bare ``--name``)."""
    flag = "--" + name.replace("_", "-")
    return flag if value is True else f"{flag}={value}"
