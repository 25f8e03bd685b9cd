"""What every transport offers: run a shell command (files travel as its input and output).

The rest of Clustrix reaches a machine only through these few operations, so the same
scheduler code works on a login node reached over SSH and on the machine it runs on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import CommandError


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one shell command; ``stdout`` is kept as bytes for binary transfers."""

    command: str
    exit_code: int
    stdout_bytes: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode(errors="replace")

    def check(self, where: str) -> CommandResult:
        """Raise ``CommandError`` (with exit code and output) unless the command succeeded."""
        if self.exit_code != 0:
            raise CommandError(self.command, self.exit_code, self.stdout, self.stderr, where)
        return self


class OutputFrame:
    """Marks where a command's own output begins, past anything its shell printed first.

    A login shell can print before it runs the command: an ``echo`` in ``~/.bashrc``, a site
    notice. The framed command first prints a marker line, unique to this run, on stdout and
    on stderr; everything up to and including it is dropped. The marker is printed from two
    pieces, so a shell that echoes the command line (``set -v``/``-x``) cannot print it early.
    Bytes after the marker are untouched (binary output stays exact), and the command's exit
    code is still the shell's.
    """

    def __init__(self) -> None:
        token = uuid.uuid4().hex
        self._marker = f"clustrix-begin-{token}\n".encode()
        self.prefix = (
            f"printf 'clustrix-begin-%s\\n' {token}; printf 'clustrix-begin-%s\\n' {token} >&2\n"
        )

    def frame(self, command: str) -> str:
        """``command``, preceded by the markers (on a line of their own)."""
        return self.prefix + command

    def start(self, output: bytes | bytearray) -> int:
        """Where the command's own output begins in ``output`` (0 if no marker was printed).

        Without a marker the command never started, and all of it is the shell's own words.
        """
        index = output.find(self._marker)
        return 0 if index < 0 else index + len(self._marker)

    def strip(self, output: bytes | bytearray) -> bytes:
        """``output`` without what the shell printed before the command began."""
        return bytes(memoryview(output)[self.start(output) :])


class Stream(Protocol):
    """A command that keeps running, spoken to through its stdin and stdout
    (``Transport.open_stream``). Only what the command printed is read: not its shell's."""

    def send(self, data: bytes) -> None:
        """Write all of ``data`` to the command's stdin."""
        ...

    def recv(self, size: int) -> bytes:
        """At most ``size`` bytes of its stdout, waiting for some; b"" once it ended."""
        ...

    def close(self) -> None:
        """Close its stdin and the stream; the command sees end-of-file."""
        ...


def skip_shell_output(frame: OutputFrame, read: Callable[[int], bytes], limit: float) -> bytes:
    """Read a framed command's stdout up to its marker; what came after the marker.

    Raises ``ConnectionError`` if the output ends first (the command never started) and
    ``TimeoutError`` if no marker comes within ``limit`` seconds.
    """
    seen = bytearray()
    deadline = time.monotonic() + limit
    while True:
        start = frame.start(seen)
        if start:
            return bytes(seen[start:])
        if time.monotonic() > deadline:
            raise TimeoutError(f"the command did not start within {limit:g} s")
        chunk = read(65536)
        if not chunk:
            raise ConnectionError(
                "the command ended before it started: "
                + bytes(seen[-500:]).decode(errors="replace")
            )
        seen += chunk


class Transport(Protocol):
    """A way to reach one machine as one user."""

    #: Human-readable place, used in messages: ``user@host:port`` or ``localhost``.
    where: str

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run ``command`` with bash; every interpolated value must already be quoted.

        stdout and stderr hold only what the command printed: whatever the shell printed
        before it (a login banner, an ``echo`` in ``~/.bashrc``) is left out.
        """
        ...

    def open_stream(self, command: str) -> Stream:
        """Start ``command`` (quoted like ``run``'s) and keep it running: its stdin and
        stdout become a byte stream, its stderr is discarded. Used where a round trip per
        exchange would cost too much (a pool's relay)."""
        ...

    def home(self) -> str:
        """The user's home folder on that machine, to expand ``~`` in remote paths."""
        ...

    def close(self) -> None: ...
