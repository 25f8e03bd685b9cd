"""The transport for the machine Clustrix runs on (a login node, or tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading

from .base import CommandResult, OutputFrame, skip_shell_output


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

    def open_stream(self, command: str) -> PipeStream:
        frame = OutputFrame()
        return PipeStream(["bash", "-c", frame.frame(command)], frame, limit=60.0)

    def home(self) -> str:
        return os.path.expanduser("~")

    def close(self) -> None:
        """Nothing to release."""


class PipeStream:
    """A command kept running as a child process (bash, or an ``ssh`` session), spoken to
    through pipes; its stderr is dropped.

    Raises ``ConnectionError`` (it ended before the command began) or ``TimeoutError`` when
    it is created, as ``skip_shell_output`` does.
    """

    def __init__(self, argv: list[str], frame: OutputFrame, limit: float) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin
        self._stdout = self.process.stdout.fileno()
        self._lock = threading.Lock()
        try:
            self._pending = skip_shell_output(frame, self._read, limit=limit)
        except (ConnectionError, TimeoutError):
            self._end()
            raise

    def _read(self, size: int) -> bytes:
        return os.read(self._stdout, size)

    def send(self, data: bytes) -> None:
        with self._lock:
            self._stdin.write(data)
            self._stdin.flush()

    def recv(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return self._read(size)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stdin.close()  # the command sees end-of-file
        self._end()

    def _end(self) -> None:
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.terminate()  # an ssh session: the master closes it, the command hangs up
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]
