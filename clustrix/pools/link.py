"""The client's end of a pool's relay: one command kept running over the cluster connection.

Frames go down the command's stdin and come back on its stdout (see ``clustrix.pools.relay``);
a reader thread hands each message from the relay to the pool as it arrives, so a result
reaches its future without the client asking for it.
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConnectionFailedError
from ..transport.base import Stream, Transport
from . import files
from .relay import encode, read_frame

logger = logging.getLogger("clustrix.pools")

#: ``on_message(message)`` for each message of the relay; ``on_message(None)`` once it ended.
Handler = Callable[[tuple[Any, ...] | None], None]


def relay_command(folder: str, python: str, runtime: str) -> str:
    """The shell command that runs the relay for the pool in ``folder`` with ``python`` (an
    interpreter command already quoted for the shell)."""
    quoted = shlex.quote(folder)
    return (
        f"cd {quoted} && PYTHONPATH={shlex.quote(runtime)} exec {python} -u "
        f"-m clustrix.pools.relay {quoted} 2>> {quoted}/{files.RELAY_LOG}"
    )


class RelayLink:
    """A running relay: ``send`` messages to it; its messages go to ``on_message``."""

    def __init__(self, transport: Transport, command: str, on_message: Handler) -> None:
        self.where = transport.where
        self._stream: Stream = transport.open_stream(command)
        self._on_message = on_message
        self._lock = threading.Lock()
        self._closed = False
        first = read_frame(self._stream.recv)
        if first is None or first[0] != "ready":
            self._stream.close()
            raise ConnectionFailedError(
                f"the pool's relay did not start on {self.where} (it said {first!r}); see "
                f"{files.RELAY_LOG} in the pool's folder"
            )
        self.pid = first[1]
        self._reader = threading.Thread(target=self._read, name="clustrix-pool-relay", daemon=True)
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message; ConnectionFailedError if the relay is gone."""
        data = encode(message)
        with self._lock:
            if self._closed:
                raise ConnectionFailedError(f"the pool's relay on {self.where} has stopped")
            try:
                self._stream.send(data)
            except (OSError, EOFError, ConnectionError) as exc:
                raise ConnectionFailedError(
                    f"the connection to the pool's relay on {self.where} dropped: {exc}"
                ) from None

    def _read(self) -> None:
        try:
            while (message := read_frame(self._stream.recv)) is not None:
                self._on_message(message)
        except Exception as exc:  # the connection dropped; the pool decides what to do
            logger.debug("the pool's relay on %s: %s", self.where, exc)
        finally:
            with self._lock:
                self._closed = True
            self._on_message(None)

    def in_reader(self) -> bool:
        """Whether this is the thread that hands the relay's messages on (a done-callback of a
        pooled future runs there: it must not wait for another message)."""
        return threading.current_thread() is self._reader

    @property
    def alive(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Close the relay's input: it stops at once (the workers keep their queue)."""
        with self._lock:
            self._closed = True
        self._stream.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)
