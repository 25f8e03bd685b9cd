"""Pools seen from any process: listing live pools with their figures, and stopping one
(``clustrix pools``, ``clustrix pool stop``). Everything here starts from the job store."""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from ..config import ClusterConfig
from ..errors import JobNotFoundError
from ..remote.backend import cluster_backend
from ..store import JobStore, PoolRecord, process_gone
from . import files
from .cluster import summarise

LIVE_STATES = ("STARTING", "RUNNING")


def _backend(record: PoolRecord, config: ClusterConfig, store: JobStore) -> Any:
    return cluster_backend(config.replace(**record.connection, job_store=str(store.path)))


def owner_gone(record: PoolRecord) -> bool:
    """Whether the process that opened the pool has ended (a day: another host's owner)."""
    return process_gone(record.owner, record.created, stale_after=86400.0)


def live_pools(store: JobStore, config: ClusterConfig) -> list[dict[str, Any]]:
    """Each live pool's record and figures, newest first: ``{"record", "workers", "busy",
    "idle", "time_left" (s or None), "calls_done", "owner_alive"}``.

    The figures come from the workers' heartbeats in the pool's folder (one command per
    pool). A pool whose owner is gone and whose workers have all left is recorded STOPPED
    and not listed.
    """
    found = []
    for record in store.pools(states=LIVE_STATES):
        statuses = heartbeats(record, config, store)
        figures = summarise(statuses, calls_done=sum(s.get("calls", 0) for s in statuses))
        owner_alive = not owner_gone(record)
        if not owner_alive and figures["workers"] == 0:
            store.update_pool(record.pool_id, state="STOPPED", finished=time.time())
            continue
        found.append({"record": record, **figures, "owner_alive": owner_alive})
    return found


def heartbeats(record: PoolRecord, config: ClusterConfig, store: JobStore) -> list[dict[str, Any]]:
    """The heartbeat of every worker the pool has had (``clustrix.pools.worker``)."""
    folder = shlex.quote(f"{record.remote_folder}/{files.WORKERS}")
    command = f'for f in {folder}/*.json; do [ -e "$f" ] && cat "$f" && echo; done; true'
    output = _backend(record, config, store).transport.run(command, check=False).stdout
    statuses = []
    for line in output.splitlines():
        if line.strip():
            try:
                statuses.append(json.loads(line))
            except ValueError:
                continue  # written while read: the next look sees it whole
    return statuses


def stop_pool(pool_id: str, store: JobStore, config: ClusterConfig) -> PoolRecord:
    """Stop a pool from any process: its workers leave, their jobs are cancelled.

    The process that opened the pool (if it still runs) learns of it from its relay: the
    calls it still waits for fail with ``BackendUnavailableError``. Raises
    ``JobNotFoundError`` for an id that names no pool.
    """
    record = find_pool(pool_id, store)
    backend = _backend(record, config, store)
    folder = shlex.quote(record.remote_folder)
    backend.transport.run(f"[ -d {folder} ] && touch {folder}/{files.STOP}; true", check=False)
    connected = config.replace(**record.connection, job_store=str(store.path))
    for job_id in record.worker_jobs:
        job_record = store.get(job_id)
        if job_record is not None:
            backend.cancel_job(backend.attach(job_record, connected))
    if owner_gone(record):
        backend.remove_folder(record.remote_folder)
    store.update_pool(record.pool_id, state="STOPPED", finished=time.time(), message="stopped")
    return record


def find_pool(pool_id: str, store: JobStore) -> PoolRecord:
    """The pool ``pool_id`` names (its start is enough when it names one pool)."""
    record = store.get_pool(pool_id)
    if record is not None:
        return record
    matches = [r for r in store.pools() if r.pool_id.startswith(pool_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise JobNotFoundError(f"no pool {pool_id!r} in the job store {store.path}")
    raise JobNotFoundError(
        f"{pool_id!r} names {len(matches)} pools: {', '.join(r.pool_id for r in matches)}"
    )
