"""Every exception Clustrix raises on purpose.

One hierarchy so that callers can catch ``ClustrixError`` for "Clustrix could not do what was
asked" while the user's own exceptions keep their own types. Each message says what happened,
where, and what to do about it.
"""

from __future__ import annotations

from typing import Any


class ClustrixError(Exception):
    """Base class of the errors raised by Clustrix itself (never by the user's function)."""


class ConfigError(ClustrixError, ValueError):
    """A configuration value, decorator argument or config file is invalid.

    Raised when the configuration or the decorator is created, so that mistakes surface before
    any job is submitted.
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class SerializationError(ClustrixError, TypeError):
    """The call (function, an argument, or the result) cannot be pickled for transport."""

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class BackendUnavailableError(ClustrixError):
    """The configured backend cannot be used from this installation."""


class JobFailedError(ClustrixError):
    """A job ended without producing a result.

    This is distinct from an exception raised *by* the user's function, which is re-raised as
    its own type. Subclasses say why the job died; the attributes carry what is known about it.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        state: str | None = None,
        exit_code: int | None = None,
        host: str | None = None,
        stdout_tail: str = "",
        stderr_tail: str = "",
    ) -> None:
        details = [message]
        if stderr_tail.strip():
            details.append("last lines of stderr:\n" + stderr_tail.rstrip())
        if stdout_tail.strip():
            details.append("last lines of stdout:\n" + stdout_tail.rstrip())
        super().__init__("\n".join(details))
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        self.host = host
        self.stdout_tail = stdout_tail
        self.stderr_tail = stderr_tail


class WorkerCrashedError(JobFailedError):
    """The process running the function died (``os._exit``, a segfault, the OOM killer...)."""


class JobTimeoutError(JobFailedError, TimeoutError):
    """The job ran past its time limit (the ``timeout`` argument or the scheduler's limit)."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised where the function ran.

    It is attached as ``__cause__`` of the re-raised exception, so Python prints the remote
    traceback above the local one, the way ``concurrent.futures`` does for process pools.
    """

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return "\n" + self.traceback_text.rstrip()


class RemoteError(ClustrixError):
    """The function raised an exception that could not be rebuilt here.

    Happens when the exception's class cannot be unpickled on the client (for example it takes
    required constructor arguments that it does not pass to ``Exception``). The original type
    name and message are kept.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message


class CommandError(ClustrixError):
    """A shell command Clustrix ran (locally or over SSH) failed."""

    def __init__(self, command: str, exit_code: int, stdout: str, stderr: str, where: str) -> None:
        output = (stderr.strip() or stdout.strip())[-2000:]
        super().__init__(
            f"command failed on {where} with exit code {exit_code}: {command}"
            + (f"\n{output}" if output else "")
        )
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.where = where


class ConnectionFailedError(ClustrixError):
    """The remote host could not be reached (DNS, refused, timed out, dropped)."""


class AuthenticationError(ClustrixError):
    """The SSH server refused every credential offered."""


class SchedulerUnavailableError(ClustrixError):
    """The scheduler did not answer a status query.

    Checks are retried; once they have failed for ``status_check_patience`` seconds, the calls
    waiting on them fail with this error (the jobs are left alone).
    """


class JobNotFoundError(ClustrixError, KeyError):
    """No job with that id (or id prefix) is in the job store."""

    def __str__(self) -> str:
        return str(self.args[0])


class ResultsCollectedElsewhereError(ClustrixError):
    """Another process collected the job's results and removed its folder."""


class HostKeyError(ClustrixError):
    """The SSH server's host key is unknown or does not match known_hosts."""

    def __init__(self, message: str, *, host: str, fingerprint: str) -> None:
        super().__init__(message)
        self.host = host
        self.fingerprint = fingerprint


class JobCancelledError(JobFailedError):
    """The job was cancelled (by ``future.cancel()``, Ctrl-C, ``scancel`` or an administrator)."""


class JobOutOfMemoryError(JobFailedError):
    """The job used more memory than it asked for and was killed; ask for more ``memory``."""


class NodeFailureError(JobFailedError):
    """The node running the job failed; ``retries=N`` resubmits such jobs automatically."""


class EnvironmentSetupError(JobFailedError):
    """The Python environment for the job could not be created on the cluster."""


class VersionMismatchError(JobFailedError):
    """The job's Python or cloudpickle cannot read what the client sent."""


class PayloadError(JobFailedError):
    """The job could not load the function or its arguments (a module missing there, say)."""


class DependencyFailedError(JobFailedError):
    """A call of a pipeline could not run because a call it takes a value from failed.

    ``upstream_job_id`` is Clustrix's id of the job whose result was passed on,
    ``item`` the position of the failed call in it (None when unknown: the whole job was
    lost), and ``upstream_error`` that call's error as text.
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_job_id: str | None = None,
        item: int | None = None,
        upstream_error: str = "",
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        self.upstream_job_id = upstream_job_id
        self.item = item
        self.upstream_error = upstream_error


# Failure kinds the runner reports by name, because it cannot import this module.
RUNNER_FAILURES: dict[str, type[JobFailedError]] = {
    "clustrix.VersionMismatchError": VersionMismatchError,
    "clustrix.PayloadError": PayloadError,
}


def tail_lines(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``, for the log tails errors carry."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
