"""The local job database: every remote submission, written down before it is made.

A laptop that sleeps, a kernel that restarts, a client killed mid-wait: the jobs go on, and
this record is how a later process finds them again (``clustrix.get_job``, ``clustrix jobs``).
SQLite in WAL mode with a busy timeout keeps it safe for concurrent threads and processes;
each operation uses its own short-lived connection.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ACTIVE_STATES = ("SUBMITTING", "PENDING", "RUNNING")
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    cluster_type TEXT NOT NULL,
    host TEXT NOT NULL,
    remote_folder TEXT NOT NULL,
    state TEXT NOT NULL,
    items INTEGER NOT NULL,
    task_sizes TEXT NOT NULL,
    submissions TEXT NOT NULL DEFAULT '[]',
    connection TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    failed_items INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    parts TEXT NOT NULL DEFAULT '[]',
    submitter TEXT NOT NULL DEFAULT '{}',
    depends_on TEXT NOT NULL DEFAULT '[]',
    attempts TEXT NOT NULL DEFAULT '{}',
    requeue TEXT NOT NULL DEFAULT 'null'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE TABLE IF NOT EXISTS pools (
    pool_id TEXT PRIMARY KEY,
    cluster_type TEXT NOT NULL,
    host TEXT NOT NULL,
    remote_folder TEXT NOT NULL,
    state TEXT NOT NULL,
    workers INTEGER NOT NULL,
    settings TEXT NOT NULL,
    connection TEXT NOT NULL,
    worker_jobs TEXT NOT NULL DEFAULT '[]',
    owner TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    message TEXT NOT NULL DEFAULT ''
);
"""
# Columns added after the first release, with their definitions, for stores made before.
_ADDED_COLUMNS = {
    "parts": "TEXT NOT NULL DEFAULT '[]'",
    "submitter": "TEXT NOT NULL DEFAULT '{}'",
    "depends_on": "TEXT NOT NULL DEFAULT '[]'",
    "attempts": "TEXT NOT NULL DEFAULT '{}'",
    "requeue": "TEXT NOT NULL DEFAULT 'null'",
}
_JSON_COLUMNS = (
    "task_sizes",
    "connection",
    "submissions",
    "parts",
    "submitter",
    "depends_on",
    "attempts",
    "requeue",
)
_POOL_JSON_COLUMNS = ("settings", "connection", "worker_jobs", "owner")
#: A pool's states: starting its workers, open for calls, stopped (by its owner or
#: ``clustrix pool stop``); a pool whose owner died stays RUNNING until its workers idle out.
POOL_STATES = ("STARTING", "RUNNING", "STOPPED")


@dataclass
class JobRecord:
    """What is known of a job without asking the cluster."""

    job_id: str
    function: str
    cluster_type: str
    host: str
    remote_folder: str
    state: str
    items: int
    task_sizes: list[int]
    connection: dict[str, Any]
    submissions: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    finished: float | None = None
    failed_items: int = 0
    message: str = ""
    #: The submissions planned, in order: ``{"offset", "count", "is_array"}`` each; what the
    #: scheduler accepted is in ``submissions``.
    parts: list[dict[str, Any]] = field(default_factory=list)
    #: The process that submitted the job: ``{"host", "pid", "started"}``.
    submitter: dict[str, Any] = field(default_factory=dict)
    #: Clustrix ids of the jobs this one takes values from (a pipeline), which it waits for.
    depends_on: list[str] = field(default_factory=list)
    #: A job that requeues itself: per task (its index as a string), each run's
    #: ``{"attempt", "host", "scheduler_id", "started", "ended", "reason"}`` (epoch seconds).
    attempts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: How its tasks requeue themselves (job.json's ``requeue``), or None.
    requeue: dict[str, Any] | None = None

    @property
    def scheduler_ids(self) -> list[str]:
        return [s["scheduler_id"] for s in self.submissions]


@dataclass
class PoolRecord:
    """A warm worker pool (``clustrix.pool``): where it is and which jobs are its workers."""

    pool_id: str
    cluster_type: str
    host: str
    remote_folder: str
    state: str
    workers: int
    #: What each worker has: ``{"cores", "memory_mb", "time_seconds", "idle_timeout"}``.
    settings: dict[str, Any]
    connection: dict[str, Any]
    #: Clustrix job ids of the worker jobs, in the order they were submitted.
    worker_jobs: list[str] = field(default_factory=list)
    #: The process that opened the pool: ``{"host", "pid", "started"}``.
    owner: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    finished: float | None = None
    message: str = ""


def this_process() -> dict[str, Any]:
    """How a record names the process submitting a job (for ``submitter_gone``)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_ticks(os.getpid())}


def submitter_gone(record: JobRecord, stale_after: float = 3600.0) -> bool:
    """Whether the process that submitted ``record`` can no longer be submitting it."""
    return process_gone(record.submitter, record.created, stale_after)


def process_gone(process: Mapping[str, Any], since: float, stale_after: float = 3600.0) -> bool:
    """Whether ``process`` (as ``this_process`` named it, at time ``since``) has ended.

    On the same host the process is looked up (its start time tells a reused pid apart);
    a process on another host is taken as gone once ``stale_after`` seconds have passed
    since ``since``.
    """
    if process.get("host") != socket.gethostname() or "pid" not in process:
        return time.time() - since > stale_after
    pid = int(process["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, as another user
    started = process.get("started")
    return started is not None and _start_ticks(pid) != started


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux); None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if len(fields) > 19 else None


def default_store_path() -> Path:
    return Path(os.path.expanduser("~")) / ".clustrix" / "jobs.db"


_INITIALISING = threading.Lock()


class JobStore:
    """CRUD on the jobs table; safe to use from many threads and processes at once."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_store_path()
        self._ready = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout = 30000")
            if not self._ready:
                self._initialise(connection)
            yield connection
        finally:
            connection.close()

    def _initialise(self, connection: sqlite3.Connection) -> None:
        """WAL mode and the schema, once per store object.

        Switching a new database to WAL needs it to itself, and SQLite reports "database is
        locked" at once instead of waiting when another connection is opening it too (many
        threads or processes submitting their first job together): serialise the threads of
        this process, and retry for other processes.
        """
        with _INITIALISING:
            if self._ready:
                return
            for attempt in range(100):
                try:
                    connection.execute("PRAGMA journal_mode = WAL")
                    connection.executescript(_SCHEMA)
                    _add_missing_columns(connection)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.05)
            os.chmod(self.path, 0o600)
            self._ready = True

    def add(self, record: JobRecord) -> None:
        values = asdict(record)
        for name in _JSON_COLUMNS:
            values[name] = json.dumps(values[name])
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        with self._connect() as connection:
            connection.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", values)

    def update(self, job_id: str, **changes: Any) -> bool:
        """Change a job's record; whether it was changed.

        A final state is never replaced: several processes may watch one job, and the first
        to learn how it ended writes it down. A change of ``state`` to a job already in a
        final state changes nothing (returns False); other changes always apply.
        """
        changes["updated"] = time.time()
        for name in _JSON_COLUMNS:
            if name in changes:
                changes[name] = json.dumps(changes[name])
        assignments = ", ".join(f"{name} = :{name}" for name in changes)
        condition = "job_id = :job_id"
        if "state" in changes:
            condition += f" AND state NOT IN ({', '.join(repr(s) for s in FINAL_STATES)})"
        with self._connect() as connection:
            cursor = connection.execute(
                f"UPDATE jobs SET {assignments} WHERE {condition}",
                {**changes, "job_id": job_id},
            )
            return cursor.rowcount > 0

    def add_submission(self, job_id: str, submission: Mapping[str, Any]) -> None:
        """Append a submission atomically (concurrent retries must not lose one another)."""
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute(
                "SELECT submissions FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            submissions = json.loads(row["submissions"]) if row else []
            submissions.append(dict(submission))
            connection.execute(
                "UPDATE jobs SET submissions = ?, updated = ? WHERE job_id = ?",
                (json.dumps(submissions), time.time(), job_id),
            )
            connection.execute("COMMIT")

    def get(self, job_id: str) -> JobRecord | None:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def find(self, prefix: str) -> list[JobRecord]:
        """Jobs whose id starts with ``prefix`` (ids are long; people type the start)."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT * FROM jobs WHERE job_id LIKE ? ESCAPE '\\' ORDER BY created",
                (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
        return [_record(row) for row in rows]

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        older_than: float | None = None,
        limit: int | None = None,
    ) -> list[JobRecord]:
        """Newest first, optionally filtered by state and by age in seconds."""
        query, parameters = "SELECT * FROM jobs WHERE 1=1", []
        if states:
            states = list(states)
            query += f" AND state IN ({', '.join('?' for _ in states)})"
            parameters += states
        if older_than is not None:
            query += " AND created < ?"
            parameters.append(time.time() - older_than)
        query += " ORDER BY created DESC"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self._connect() as connection:
            rows = connection.execute(query, parameters).fetchall()
        return [_record(row) for row in rows]

    def dependents(self, job_id: str) -> list[str]:
        """Ids of the jobs that take values from ``job_id`` (read its folder)."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT job_id, depends_on FROM jobs WHERE instr(depends_on, ?) > 0",
                (json.dumps(job_id),),
            ).fetchall()
        return [row["job_id"] for row in rows if job_id in json.loads(row["depends_on"])]

    def delete(self, job_ids: Iterable[str]) -> None:
        with self._connect() as connection:
            connection.executemany("DELETE FROM jobs WHERE job_id = ?", [(i,) for i in job_ids])

    # ------------------------------------------------------------------ pools

    def add_pool(self, record: PoolRecord) -> None:
        values = asdict(record)
        for name in _POOL_JSON_COLUMNS:
            values[name] = json.dumps(values[name])
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        with self._connect() as connection:
            connection.execute(f"INSERT INTO pools ({columns}) VALUES ({marks})", values)

    def update_pool(self, pool_id: str, **changes: Any) -> bool:
        """Change a pool's record; a STOPPED pool keeps that state. Whether it changed."""
        changes["updated"] = time.time()
        for name in _POOL_JSON_COLUMNS:
            if name in changes:
                changes[name] = json.dumps(changes[name])
        assignments = ", ".join(f"{name} = :{name}" for name in changes)
        condition = "pool_id = :pool_id"
        if "state" in changes:
            condition += " AND state != 'STOPPED'"
        with self._connect() as connection:
            cursor = connection.execute(
                f"UPDATE pools SET {assignments} WHERE {condition}", {**changes, "pool_id": pool_id}
            )
            return cursor.rowcount > 0

    def get_pool(self, pool_id: str) -> PoolRecord | None:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM pools WHERE pool_id = ?", (pool_id,)).fetchone()
        return _pool_record(row) if row else None

    def pools(self, *, states: Iterable[str] | None = None) -> list[PoolRecord]:
        """Newest first, optionally only those in ``states``."""
        query, parameters = "SELECT * FROM pools", []
        if states:
            states = list(states)
            query += f" WHERE state IN ({', '.join('?' for _ in states)})"
            parameters += states
        with self._connect() as connection:
            rows = connection.execute(query + " ORDER BY created DESC", parameters).fetchall()
        return [_pool_record(row) for row in rows]


def _pool_record(row: sqlite3.Row) -> PoolRecord:
    values = dict(row)
    for name in _POOL_JSON_COLUMNS:
        values[name] = json.loads(values[name])
    return PoolRecord(**values)


def _record(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    for name in _JSON_COLUMNS:
        values[name] = json.loads(values[name])
    return JobRecord(**values)


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    """Bring a store made by an older version up to the current columns."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
    for name, definition in _ADDED_COLUMNS.items():
        if name not in present:
            try:
                connection.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise
