"""What ``clustrix jobs`` and ``clustrix job`` say about a job beyond its record's fields:
whether its submission settled, and what it waits for (a pipeline's upstream jobs)."""

from __future__ import annotations

import time
from typing import Any

import click

from ..store import JobRecord

# How far up a chain ``clustrix job`` follows upstream jobs (a chain is rarely long; a
# store edited by hand could even hold a loop).
_CHAIN_LIMIT = 50


def settle_submission(job: Any) -> None:
    """Resolve a job left SUBMITTING by a process that died (``Job.status`` adopts it); a
    cluster that cannot be reached now leaves the record as it is."""
    from ..errors import ClustrixError

    if job.record.state == "SUBMITTING":
        try:
            job.status()
        except ClustrixError as exc:
            click.echo(f"{job.job_id}: still recorded as submitting ({exc})", err=True)


def waits_for(record: JobRecord) -> str:
    """The upstream jobs of ``record``, comma-separated; "-" for none."""
    return ", ".join(record.depends_on) or "-"


def chain_details(job: Any) -> list[tuple[str, str]]:
    """``(label, text)`` lines for ``clustrix job``: the upstream jobs, nearest first, each
    with its function and recorded state, then the jobs waiting for this one."""
    store = job.store
    lines: list[tuple[str, str]] = []
    seen = {job.job_id}
    frontier = list(job.record.depends_on)
    while frontier and len(seen) < _CHAIN_LIMIT:
        job_id = frontier.pop(0)
        if job_id in seen:
            continue
        seen.add(job_id)
        upstream = store.get(job_id)
        if upstream is None:
            lines.append(("waits for", f"{job_id} (not in this job store)"))
            continue
        lines.append(("waits for", f"{job_id} {upstream.function} {upstream.state}"))
        frontier += upstream.depends_on
    dependents = store.dependents(job.job_id)
    if dependents:
        lines.append(("dependents", ", ".join(dependents)))
    return lines


def attempt_details(job: Any) -> list[tuple[str, str]]:
    """``(label, text)`` lines for ``clustrix job``: each run of a job that requeues itself
    (task, attempt, start, end, host, how it ended)."""
    lines = []
    for task, runs in job.attempts().items():
        for run in runs:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
            ended = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.ended))
                if run.ended
                else "now"
            )
            reason = run.reason or "running"
            lines.append(
                (
                    "attempt",
                    f"task {task} #{run.number}: {started}-{ended} on {run.host} "
                    f"(job {run.scheduler_id}): {reason}",
                )
            )
    return lines
