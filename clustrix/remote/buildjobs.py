"""Environment builds run as short scheduler jobs (``environment_build="job"``).

For sites that forbid builds on login nodes, the bootstrap script becomes the body of a job
of its own (1 core, 2 GB, 30 minutes, named ``clustrix-env-<key>``), submitted from a folder
next to the environment, ``envs/<key>.build-<token>/``::

    build.sh        the job script: the scheduler's directives, then bootstrap.sh
    bootstrap.sh    the build itself (``environment.bootstrap_script``)
    wheels/         wheels shipped by the client (``package_source="client"``)
    build.out, build.err, build.exit    its output and its exit status
    scheduler.log   the scheduler's own messages

The client waits on it, one command per check: the scheduler's state, then the exit status
file, then the ready marker. The script's ``flock`` still orders concurrent builds of one key,
so two clients submitting at once get one environment: the second job finds it ready.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import time

from ..errors import ClustrixError, EnvironmentSetupError, tail_lines
from ..resources import Resources
from ..schedulers import JobState, JobStatus, Scheduler, ScriptContext
from ..transport.base import Transport
from ..wheels import index_hint

logger = logging.getLogger("clustrix.remote")

#: What a build job asks for: a build is one pip process, mostly waiting for downloads.
BUILD_CORES = 1
BUILD_MEMORY = "2GB"
BUILD_TIME = "00:30:00"

JOB_SCRIPT = "build.sh"
BOOTSTRAP = "bootstrap.sh"
WHEELS = "wheels"
_OUT, _ERR, _EXIT = "build.out", "build.err", "build.exit"
_SUBMITTED = "submitted"
_SCHEDULER_LOG = "scheduler.log"
_SECTION = "--clustrix-build-section--"
# Checks in a row that the scheduler does not know the job (not yet, or not any more)
# before it counts as gone; from the second one on, the detailed status is asked for.
_UNKNOWN_LIMIT = 5
_READY_WORDS = ("BUILT", "REUSED")


def build_resources(partition: str | None, queue: str | None) -> Resources:
    """The request of a build job, in the configured partition or queue."""
    return Resources.parse(
        cores=BUILD_CORES, memory=BUILD_MEMORY, time=BUILD_TIME, partition=partition, queue=queue
    )


class BuildJob:
    """One environment build submitted as a job, and the wait for its outcome."""

    def __init__(
        self,
        transport: Transport,
        scheduler: Scheduler,
        env_dir: str,
        folder: str,
        package_source: str = "index",
    ) -> None:
        self.transport = transport
        self.package_source = package_source
        self.scheduler = scheduler
        self.env_dir = env_dir
        self.folder = folder
        self.scheduler_id: str | None = None

    def job_script(self, resources: Resources, context: ScriptContext) -> str:
        """The job script: directives, then the bootstrap with its output in files; the
        exit status is written last, atomically, so that a check never reads half of it."""
        commands = []
        if self.scheduler.job_id_variable:
            # The build log names the job it ran in.
            commands.append(f'export CLUSTRIX_BUILD_JOB="${{{self.scheduler.job_id_variable}:-}}"')
        commands += [
            f"bash {BOOTSTRAP} > {_OUT} 2> {_ERR}",
            # The shipped wheels are needed no more; a failed build's logs stay.
            f"status=$?; rm -rf {WHEELS}",
            f'echo "$status" > {_EXIT}.part && mv {_EXIT}.part {_EXIT}',
        ]
        return self.scheduler.render_command_script(resources, context, commands)

    def submit(self, archive: bytes, context: ScriptContext) -> str:
        """Stage the folder from ``archive`` (a tar of its files) and submit ``build.sh``, in
        one round trip; the scheduler's id. Raises EnvironmentSetupError if it was refused."""
        folder = shlex.quote(self.folder)
        envs = shlex.quote(self.folder.rsplit("/", 1)[0])
        command = (
            f"mkdir -p {envs} && chmod 700 {envs} && mkdir -m 700 {folder} && cd {folder} && "
            f"tar -x -f - && {{ {self.scheduler.submit_command(JOB_SCRIPT, context)}; }} "
            f"> {_SUBMITTED} && cat {_SUBMITTED}"
        )
        result = self.transport.run(command, stdin=archive, check=False)
        if result.exit_code != 0 or not result.stdout.strip():
            raise EnvironmentSetupError(
                f"could not submit the job building the Python environment {self.env_dir} "
                f"on {self.transport.where} (exit code {result.exit_code}); its folder is "
                f"{self.folder}",
                state="ENVIRONMENT",
                exit_code=result.exit_code,
                host=self.transport.where,
                stderr_tail=tail_lines(result.stderr or result.stdout, 20),
            )
        self.scheduler_id = self.scheduler.parse_job_id(result.stdout)
        logger.info(
            "building environment %s in %s job %s", self.env_dir, self.scheduler.name, self.id
        )
        return self.scheduler_id

    @property
    def id(self) -> str:
        assert self.scheduler_id is not None, "submit first"
        return self.scheduler_id

    def wait(self, interval: float, patience: float) -> bool:
        """Wait for the job; whether it built the environment (False: it found it ready).

        Checks start at half a second and slow down to ``interval``. Checks that fail (the
        scheduler or the connection down) are retried for ``patience`` seconds. Raises
        EnvironmentSetupError, with the job's id and the end of its logs, if the job fails
        or ends without the environment being ready.
        """
        delay, unknown, failing_since = 0.5, 0, None
        while True:
            time.sleep(delay)
            delay = min(max(interval, 0.5), delay * 2)
            try:
                status, exit_code, ready = self._check(detailed=unknown >= 2)
            except (ClustrixError, OSError) as exc:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > patience:
                    raise self._error(f"its status could not be checked: {exc}") from exc
                continue
            failing_since = None
            if exit_code is not None:
                return self._finish(exit_code)
            unknown = unknown + 1 if status.state is JobState.UNKNOWN else 0
            if status.state.finished or unknown > _UNKNOWN_LIMIT:
                if ready:  # another build of the same key finished it: nothing to do here
                    self._remove()
                    return False
                state = status.state.value if status.state.finished else "gone from the queue"
                reason = f": {status.reason}" if status.reason else ""
                raise self._error(f"it ended ({state}{reason}) without marking it ready")

    def cancel(self) -> None:
        """Cancel the job (Ctrl-C while waiting); its folder is left for inspection."""
        if self.scheduler_id is None:
            return
        with contextlib.suppress(ClustrixError, OSError):
            self.transport.run(self.scheduler.cancel_command([self.scheduler_id]), check=False)
        logger.warning("cancelled the build job %s of %s", self.scheduler_id, self.env_dir)

    # ------------------------------------------------------------------ reading its state

    def _check(self, *, detailed: bool) -> tuple[JobStatus, int | None, bool]:
        """The job's state, its exit status (None until written) and whether the
        environment is ready, in one round trip. The state is asked first: a job seen
        finished had written its exit status before the file is read, if it ever did."""
        folder = shlex.quote(self.folder)
        marker = shlex.quote(f"{self.env_dir}/.clustrix-ready")
        status_command = self.scheduler.status_command({self.id: self.folder}, detailed)
        output = self.transport.run(
            f"{status_command}; echo {_SECTION}; cat {folder}/{_EXIT} 2>/dev/null; "
            f"echo {_SECTION}; test -e {marker} && echo READY; true",
            check=False,
        ).stdout
        status_part, _, rest = output.partition(_SECTION)
        exit_part, _, ready_part = rest.partition(_SECTION)
        status = self.scheduler.parse_status(status_part, [self.id])[self.id]
        code = exit_part.strip()
        exit_code = int(code) if code.lstrip("-").isdigit() else None
        return status, exit_code, ready_part.strip() == "READY"

    def _finish(self, exit_code: int) -> bool:
        """The outcome of a job that wrote its exit status: built (True) or reused (False)."""
        said = (self._read(_OUT).strip().splitlines() or [""])[-1].strip()
        if exit_code != 0 or said not in _READY_WORDS:
            # As on the login node: ready only when the script's last word says so.
            raise self._error(
                f"the build exited with {exit_code}"
                + ("" if said in _READY_WORDS else " and never reported ready"),
                exit_code=exit_code,
            )
        self._remove()
        return said == "BUILT"

    def _read(self, name: str, lines: int | None = None) -> str:
        path = shlex.quote(f"{self.folder}/{name}")
        reader = f"tail -n {lines}" if lines else "cat"
        return self.transport.run(f"{reader} {path} 2>/dev/null; true", check=False).stdout

    def _error(self, what: str, exit_code: int | None = None) -> EnvironmentSetupError:
        """The error of a failed build job, with the end of its logs and where the rest is."""
        logs = ""
        with contextlib.suppress(ClustrixError, OSError):
            logs = "\n".join(
                text
                for text in (self._read(_ERR, 40), self._read(_SCHEDULER_LOG, 10))
                if text.strip()
            )
        return EnvironmentSetupError(
            f"could not build the Python environment {self.env_dir} in {self.scheduler.name} "
            f"job {self.scheduler_id} on {self.transport.where}: {what}; its files are in "
            f"{self.folder}" + index_hint(logs, self.package_source),
            job_id=self.scheduler_id,
            state="ENVIRONMENT",
            exit_code=exit_code,
            host=self.transport.where,
            stderr_tail=logs,
        )

    def _remove(self) -> None:
        with contextlib.suppress(ClustrixError, OSError):
            self.transport.run(f"rm -rf {shlex.quote(self.folder)}", check=False)
