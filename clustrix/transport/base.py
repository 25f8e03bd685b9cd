"""What every transport offers: run a shell command, and read and write files.

The rest of Clustrix reaches a machine only through these few operations, so the same
scheduler code works on a login node reached over SSH and on the machine it runs on.
"""

from __future__ import annotations

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
        """Run ``command`` with bash; every interpolated value must already be quoted."""
        ...

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Create or replace the file at absolute ``path`` with ``data`` and ``mode``."""
        ...

    def read_file(self, path: str) -> bytes:
        """The contents of the file at absolute ``path`` (``FileNotFoundError`` if missing)."""
        ...

    def home(self) -> str:
        """The user's home folder on that machine, to expand ``~`` in remote paths."""
        ...

    def close(self) -> None: ...
