"""The pool's relay: the client's one process on the login node, for as long as the pool is open.

The client starts it over the SSH connection it already has (``python -m clustrix.pools.relay
FOLDER``) and speaks to it through that command's stdin and stdout; nothing ever connects
back to the client. The relay turns what the client sends into files of the pool's folder
(see ``clustrix.pools.files``) and streams back what the workers leave there: results, lost
tasks, and the workers' heartbeats, once a second.

Messages are frames: an 8-byte big-endian length, then a pickled tuple of plain data whose
first item names it. From the client::

    ("functions", {fid: bytes})          pickled functions, written once each
    ("tasks", [task, ...])               tasks to queue (dicts, see ``WorkerPool``)
    ("cancel", request, [task id, ...])  take these out of the queue if still there
    ("release", worker, reason)          a worker's job ended: its claimed tasks are lost
    ("stop",)                            the pool is closing: workers leave

To the client::

    ("queued", [task id, ...])           written to the queue
    ("results", [pickled result, ...])   finished tasks (``files`` names their fields)
    ("lost", [pickled lost record, ...]) tasks whose worker stopped before finishing them
    ("workers", {worker: heartbeat})     every second
    ("cancelled", request, [task id, ...])  those of a cancel request still queued
    ("stopped", by)                      the pool's ``stop`` file appeared (``clustrix pool stop``)

Standard library only: this module runs on the cluster, from the pool's runtime zip.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from . import files

_HEADER = struct.Struct(">Q")
# How often the folder is looked at: at once while results arrive, a little later while
# tasks are out, rarely when the pool is idle.
_BUSY_WAIT = 0.002
_WAITING_WAIT = 0.01
_IDLE_WAIT = 0.2
_HEARTBEAT = 1.0


def encode(message: tuple[Any, ...]) -> bytes:
    """One frame: the length, then the pickled message."""
    data = pickle.dumps(message, protocol=4)
    return _HEADER.pack(len(data)) + data


def read_frame(read: Any) -> tuple[Any, ...] | None:
    """The next message from ``read(n)`` (a blocking reader of at most n bytes); None at EOF."""
    header = _read_exact(read, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(read, _HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def _read_exact(read: Any, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = read(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


class Relay:
    """Moves tasks into the pool's folder and results out of it."""

    def __init__(self, folder: Path, output: BinaryIO) -> None:
        self.folder = folder
        self.output = output
        self.write_lock = threading.Lock()
        self.queued: dict[str, str] = {}  # task id -> its file name in the queue
        self.order = time.time_ns() // 1000  # a restarted relay's tasks queue after these
        self.closed = threading.Event()
        self.stopping = False

    def send(self, message: tuple[Any, ...]) -> None:
        with self.write_lock:
            self.output.write(encode(message))
            self.output.flush()

    # ------------------------------------------------------------------ from the client

    def listen(self, read: Any) -> None:
        """Handle the client's messages until its end of the connection closes."""
        try:
            while (message := read_frame(read)) is not None:
                self.handle(message)
        finally:
            self.closed.set()

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "functions":
            for fid, data in message[1].items():
                path = self.folder / files.FUNCTIONS / f"{fid}.pkl"
                if not path.exists():
                    files.write_atomically(path, data)
        elif kind == "tasks":
            self.send(("queued", [self.queue(task) for task in message[1]]))
        elif kind == "cancel":
            self.send(("cancelled", message[1], [t for t in message[2] if self.dequeue(t)]))
        elif kind == "release":
            self.release(message[1], message[2])
        elif kind == "stop":
            self.stopping = True
            (self.folder / files.STOP).touch()
            for task_id in list(self.queued):
                self.dequeue(task_id)

    def queue(self, task: dict[str, Any]) -> str:
        self.order += 1
        name = files.task_name(self.order, task.get("seconds"), task["id"])
        files.write_record(self.folder / files.QUEUE / name, task)
        self.queued[task["id"]] = name
        return task["id"]

    def dequeue(self, task_id: str) -> bool:
        """Take a task out of the queue; False once a worker has claimed it."""
        name = self.queued.pop(task_id, None)
        if name is None:
            return False
        try:
            os.remove(self.folder / files.QUEUE / name)
        except FileNotFoundError:
            return False
        return True

    def release(self, worker: str, reason: str) -> None:
        """The tasks a worker had claimed become lost tasks, which the client runs again."""
        claimed = self.folder / files.CLAIMED / worker
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(claimed):
                parsed = files.parse_task_name(entry.name)
                if parsed is None:
                    continue
                record = {"id": parsed[1], "worker": worker, "reason": reason}
                files.write_record(self.folder / files.LOST / parsed[1], record)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)

    # ------------------------------------------------------------------ to the client

    def collect(self, folder: str, kind: str) -> int:
        """Send every record of ``folder`` (results or lost tasks) and remove them."""
        records, paths = [], []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder / folder):
                if entry.name.startswith("."):
                    continue  # still being written
                with contextlib.suppress(FileNotFoundError):
                    records.append(Path(entry.path).read_bytes())
                    paths.append(entry.path)
                    self.queued.pop(entry.name, None)
        if records:
            self.send((kind, records))
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        return len(records)

    def heartbeat(self) -> None:
        """Tell the workers the client is there, and the client how the workers are."""
        (self.folder / files.RELAY_ALIVE).touch()
        workers = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder / files.WORKERS):
                if entry.name.endswith(".json"):
                    with contextlib.suppress(FileNotFoundError, ValueError):
                        workers[entry.name[:-5]] = json.loads(Path(entry.path).read_text())
        self.send(("workers", workers))
        if not self.stopping and (self.folder / files.STOP).exists():
            self.stopping = True
            self.send(("stopped", "another process (clustrix pool stop)"))

    def run(self) -> None:
        """Collect until the client goes; tasks already queued stay for the workers."""
        last_heartbeat = last_found = 0.0
        while not self.closed.is_set():
            now = time.monotonic()
            try:
                found = self.collect(files.RESULTS, "results") + self.collect(files.LOST, "lost")
                if now - last_heartbeat >= _HEARTBEAT:
                    self.heartbeat()
                    last_heartbeat = now
            except FileNotFoundError:
                if not self.folder.exists():
                    return  # the pool was stopped and its folder removed
                raise
            if found:
                last_found = now
            if now - last_found < 0.5:
                wait = _BUSY_WAIT
            else:
                wait = _WAITING_WAIT if self.queued else _IDLE_WAIT
            self.closed.wait(wait)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m clustrix.pools.relay POOL_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    files.make_folders(folder)
    relay = Relay(folder, sys.stdout.buffer)
    stdin = sys.stdin.buffer
    listener = threading.Thread(target=relay.listen, args=(stdin.read1,), daemon=True)
    listener.start()
    relay.send(("ready", os.getpid()))
    with contextlib.suppress(BrokenPipeError):  # the client went away
        relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
