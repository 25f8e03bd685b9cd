"""Every file of a job folder, named in one place.

A job gets ``remote_work_dir/<job id>/`` (mode 700). The client stages the payload there, the
scheduler's script writes the logs, the runner writes results, the submitting shell leaves
the scheduler's answers. Everything that writes or reads one of these files (staging, the
status checks, the schedulers' scripts, job handles, the CLI) takes its name from here; the
runner, which cannot import Clustrix, is told the names in ``job.json`` (``FILES``).

This module imports nothing of Clustrix, so that the lowest layers (the schedulers) may use
it too.
"""

from __future__ import annotations

#: The client's metadata (versions, the other names below); read by the runner first.
JOB_JSON = "job.json"
#: The pickled function, shared by every task.
FUNCTION = "function.pkl"
#: The runner script the job scripts execute.
RUNNER = "runner.py"
#: Clustrix's own code for payloads that need it (parallel loops), put on ``sys.path``.
RUNTIME_ZIP = "clustrix-runtime.zip"
#: The scheduler's own messages (time limits, memory kills); one file for the whole job.
SCHEDULER_LOG = "scheduler.log"
#: The pid of the shell submitting the job, while it runs.
SUBMITTING_PID = "submitting.pid"
#: Present once a submission was given up: parts not yet submitted never will be.
ABANDONED = "submission-abandoned"

# Per-task names as templates, so that shell code can fill in ``$task`` itself.
CALLS_TEMPLATE = "calls-{task}.pkl"
#: The calls of ``task`` once a runner claimed them (renamed from ``calls-<task>.pkl``):
#: ``taker`` is the task whose process runs them, ``task`` itself unless taken by another,
#: or ``<job id>.<task>`` for a runner of an earlier pipeline stage (``runner.follow``).
TAKEN_TEMPLATE = "taken-{task}-by-{taker}.pkl"
RESULT_TEMPLATE = "result-{task}.pkl"
STDOUT_TEMPLATE = "stdout-{task}"
STDERR_TEMPLATE = "stderr-{task}"
#: The checkpoint of call ``position`` of ``task`` (``clustrix.checkpoint``), and beside it
#: ``<name>.json`` with its size and time.
CHECKPOINT_TEMPLATE = "checkpoint-{task}-{position}.pkl"
#: Each run of ``task``'s job (a requeue starts another): start, end, reason, host.
ATTEMPTS_TEMPLATE = "attempts-{task}.json"
#: The folders of later pipeline stages whose calls this job's runners may run, a line each
#: (appended when they are submitted; ``runner.follow``).
FOLLOWERS = "followers"

#: What the runner needs to know, written into ``job.json``.
FILES = {
    "function": FUNCTION,
    "calls": CALLS_TEMPLATE,
    "taken": TAKEN_TEMPLATE,
    "result": RESULT_TEMPLATE,
    "stdout": STDOUT_TEMPLATE,
    "stderr": STDERR_TEMPLATE,
    "runtime": RUNTIME_ZIP,
    "checkpoint": CHECKPOINT_TEMPLATE,
    "attempts": ATTEMPTS_TEMPLATE,
    "followers": FOLLOWERS,
}


def calls_file(task: int | str) -> str:
    """The pickled calls of array task ``task``."""
    return CALLS_TEMPLATE.format(task=task)


def taken_file(task: int | str, taker: int | str) -> str:
    """The calls of ``task`` as claimed by the runner of task ``taker``."""
    return TAKEN_TEMPLATE.format(task=task, taker=taker)


def result_file(task: int | str) -> str:
    """The result batch of array task ``task``, written atomically by the runner."""
    return RESULT_TEMPLATE.format(task=task)


def stdout_file(task: int | str) -> str:
    return STDOUT_TEMPLATE.format(task=task)


def stderr_file(task: int | str) -> str:
    return STDERR_TEMPLATE.format(task=task)


def checkpoint_file(task: int | str, position: int | str) -> str:
    """The checkpoint of call ``position`` (its place in the task) of ``task``."""
    return CHECKPOINT_TEMPLATE.format(task=task, position=position)


def attempts_file(task: int | str) -> str:
    """The record of each run of ``task`` (JSON list, written by the runner)."""
    return ATTEMPTS_TEMPLATE.format(task=task)


def logs(task: int | str) -> tuple[str, str]:
    """A task's stdout and stderr files."""
    return stdout_file(task), stderr_file(task)


def script_file(part: int) -> str:
    """The job script of submission ``part`` (a large map may be several arrays)."""
    return f"job-{part}.sh"


def retry_script(task: int, attempt: int) -> str:
    """The job script that runs ``task`` again, for its ``attempt``-th time."""
    return f"retry-{task}-{attempt}.sh"


def submitted_file(part: int) -> str:
    """The scheduler's answer (the job id) to submission ``part``."""
    return f"submitted-{part}"


def pid_file(task: int) -> str:
    """On a plain SSH host: the session id of the process running ``task``."""
    return f"pid-{task}"


def exit_code_file(session: str) -> str:
    """On a plain SSH host: the exit code of the job whose session id is ``session``."""
    return f"exit_code-{session}"
