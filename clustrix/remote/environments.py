"""The Python environments of a cluster: built once per requirement set, on the login node.

A venv lives in ``remote_work_dir/envs/<key>``; the key is a hash of what it holds, so calls
needing the same packages share one. This process remembers which keys it has seen ready, and
asks the cluster only once per key.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from dataclasses import dataclass

from ..config import ClusterConfig
from ..environment import EnvironmentPlan, bootstrap_script
from ..errors import EnvironmentSetupError, tail_lines
from ..schedulers.base import setup_lines
from ..transport.base import Transport

logger = logging.getLogger("clustrix.remote")

_READY_WORDS = ("BUILT", "REUSED")


@dataclass(frozen=True)
class EnvironmentReport:
    """Which environment a job ran in, and whether this submission had to build it."""

    key: str | None
    path: str | None
    built: bool


class Environments:
    """Builds (or finds) the venvs of one cluster's work folder."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._ready: set[str] = set()

    def ensure(
        self, plan: EnvironmentPlan, work_dir: str, config: ClusterConfig
    ) -> EnvironmentReport:
        """Build the plan's venv on the cluster unless it exists; once per key per process."""
        if not plan.builds_venv:
            return EnvironmentReport(None, None, built=False)
        assert plan.key is not None
        path = f"{work_dir}/envs/{plan.key}"
        with self._lock:
            key_lock = self._key_locks.setdefault(plan.key, threading.Lock())
        with key_lock:
            if plan.key in self._ready:
                return EnvironmentReport(plan.key, path, built=False)
            started = time.monotonic()
            built = self._build(plan, path, config)
            if built:
                logger.info("built environment %s in %.1f s", path, time.monotonic() - started)
            self._ready.add(plan.key)
            return EnvironmentReport(plan.key, path, built=built)

    def forget(self) -> None:
        """Forget which environments were seen ready: the next call asks the cluster again,
        as a new process would."""
        with self._lock:
            self._ready.clear()

    def _build(self, plan: EnvironmentPlan, path: str, config: ClusterConfig) -> bool:
        """Run the bootstrap script; whether it built (True) or found (False) the venv."""
        script = bootstrap_script(
            path,
            plan.requirements,
            setup_lines(
                config.module_loads, config.environment_variables, config.pre_execution_commands
            ),
        )
        result = self.transport.run(f"bash -c {shlex.quote(script)}", check=False)
        said = (result.stdout.strip().splitlines() or [""])[-1].strip()
        if result.exit_code != 0 or said not in _READY_WORDS:
            # Ready only when the script's last word says so: an exit status of 0 alone may
            # come from a setup command that ended the script early.
            raise EnvironmentSetupError(
                f"could not build the Python environment {path} on {self.transport.where} "
                f"(exit code {result.exit_code}"
                + ("" if said in _READY_WORDS else ", and it never reported ready")
                + f"); requirements: {', '.join(plan.requirements)}",
                state="ENVIRONMENT",
                exit_code=result.exit_code,
                host=self.transport.where,
                stderr_tail=tail_lines(result.stderr, 40),
            )
        return said == "BUILT"


def python_command(plan: EnvironmentPlan, report: EnvironmentReport) -> str:
    """The interpreter a job script runs the runner with, quoted for the shell."""
    if plan.python:
        return shlex.quote(plan.python)
    if plan.conda_env:
        return f"conda run --no-capture-output -n {shlex.quote(plan.conda_env)} python"
    assert report.path is not None
    return shlex.quote(f"{report.path}/bin/python")
