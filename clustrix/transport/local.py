"""The transport for the machine Clustrix runs on (a login node, or tests)."""

from __future__ import annotations

import os
import subprocess

from .base import CommandResult, OutputFrame


class LocalTransport:
    """Runs commands with bash; no connection to manage."""

    where = "localhost"

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        # bash can print before the command, from $BASH_ENV or (run under sshd) ~/.bashrc.
        frame = OutputFrame()
        completed = subprocess.run(
            ["bash", "-c", frame.frame(command)],
            capture_output=True,
            timeout=timeout,
            check=False,
            input=stdin if stdin is not None else b"",
        )
        stdout = frame.strip(completed.stdout)
        stderr = frame.strip(completed.stderr).decode(errors="replace")
        result = CommandResult(command, completed.returncode, stdout, stderr)
        return result.check(self.where) if check else result

    def home(self) -> str:
        return os.path.expanduser("~")

    def close(self) -> None:
        """Nothing to release."""
