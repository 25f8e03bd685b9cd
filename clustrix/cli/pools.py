"""``clustrix pools`` and ``clustrix pool stop``: live worker pools, from any process."""

from __future__ import annotations

import click

from ..config import ClusterConfig, resolve_config
from ..pools.control import live_pools, stop_pool
from ..store import JobStore
from .commands import main


def _store_and_config() -> tuple[JobStore, ClusterConfig]:
    config = resolve_config().config
    return JobStore(config.job_store), config


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@main.command("pools")
def pools_command() -> None:
    """List live worker pools: workers, busy, idle, calls done, walltime left."""
    store, config = _store_and_config()
    found = live_pools(store, config)
    if not found:
        click.echo("no live pools")
        return
    rows = [("POOL ID", "WORKERS", "BUSY", "IDLE", "CALLS DONE", "TIME LEFT", "HOST", "OWNER")]
    for pool in found:
        record = pool["record"]
        rows.append(
            (
                record.pool_id,
                f"{pool['workers']}/{record.workers}",
                str(pool["busy"]),
                str(pool["idle"]),
                str(pool["calls_done"]),
                _duration(pool["time_left"]),
                f"{record.cluster_type} {record.host}",
                f"pid {record.owner.get('pid', '?')}" if pool["owner_alive"] else "gone",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@main.group("pool")
def pool_group() -> None:
    """Act on one worker pool."""


@pool_group.command("stop")
@click.argument("pool_id")
def pool_stop(pool_id: str) -> None:
    """Stop a pool: its workers leave and their jobs are cancelled."""
    store, config = _store_and_config()
    record = stop_pool(pool_id, store, config)
    click.echo(f"stopped pool {record.pool_id} ({len(record.worker_jobs)} worker job(s))")
