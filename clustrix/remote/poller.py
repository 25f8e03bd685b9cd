"""One thread per cluster that checks on every pending job with one command per interval.

The command asks the scheduler about all jobs at once and brings back, in the same output,
the results and logs of tasks that finished (small ones inline, as base64 of a tar), so that
collecting a short call costs no extra round trip. When to check next is decided in one
place, ``next_check``.
"""

from __future__ import annotations

import base64
import logging
import shlex
import threading
import time
from collections.abc import Callable, Mapping

from .. import layout
from ..schedulers import JobStatus, Scheduler
from ..transport.base import Transport
from .archive import untar
from .job import ClusterJob, index_ranges

logger = logging.getLogger("clustrix.remote")

# A status check takes a second or two; one hanging far longer is on a connection that died
# without closing (a laptop that slept, a dropped VPN), and the retry reconnects.
POLL_TIMEOUT = 120.0
# The shortest wait between checks, in the first seconds after a submission.
_FIRST_INTERVAL = 0.1
# The wait while a task that ended is looked at again for its result.
_RECHECK_INTERVAL = 0.5
_SECTION = "--clustrix-results--"
_MARK = "--clustrix-task--"
_INLINE_LIMIT = 4 * 1024 * 1024
_RESULT = layout.result_file("$t")
# collect FOLDER JOB_ID "FIRST-LAST ...": for each task with a result, a marker line and (if
# small) its result and logs as a base64 tar on the next line.
_COLLECT_FUNCTION = (
    "collect() { for range in $3; do for t in $(seq ${range%-*} ${range#*-}); do "
    f'[ -e "$1/{_RESULT}" ] || continue; '
    f'if [ "$(stat -c %s "$1/{_RESULT}")" -le {_INLINE_LIMIT} ]; then '
    f'echo "{_MARK} $2 $t inline"; '
    f'tar -c -f - -C "$1" --ignore-failed-read "{_RESULT}" '
    f'"{layout.stdout_file("$t")}" "{layout.stderr_file("$t")}" '
    "2>/dev/null | base64 -w0; echo; "
    f'else echo "{_MARK} $2 $t large"; fi; done; done; }}'
)

#: ``on_check(job, statuses, collected)``: what the backend does with one check's findings.
CheckHandler = Callable[
    [ClusterJob, Mapping[str, JobStatus], Mapping[tuple[str, int], "dict[str, bytes] | None"]],
    None,
]
#: ``on_give_up(job, error)``: checks of ``job`` failed for longer than its patience.
GiveUpHandler = Callable[[ClusterJob, Exception, float], None]


def next_check(job: ClusterJob, now: float, *, failures: int = 0) -> float:
    """When to check ``job`` again: the one place that decides how often to ask.

    Often in the first seconds, when short calls end, then backing off to the job's poll
    interval; every half second while a task that ended is looked at again for its result;
    after failed checks, sooner the fewer have failed.
    """
    if failures:
        return now + min(job.poll_interval, _RECHECK_INTERVAL * failures)
    if any(task.missing_result_checks for task in job.pending_tasks()):
        return now + _RECHECK_INTERVAL
    age = now - job.submitted
    return now + min(job.poll_interval, max(_FIRST_INTERVAL, (age - 1.5) * 0.25))


class Poller:
    """Watches the pending jobs of one cluster."""

    def __init__(
        self,
        transport: Transport,
        scheduler: Scheduler,
        on_check: CheckHandler,
        on_give_up: GiveUpHandler,
    ) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self._on_check = on_check
        self._on_give_up = on_give_up
        self._lock = threading.Condition()
        self._pending: dict[str, ClusterJob] = {}
        self._thread: threading.Thread | None = None
        # One status check at a time: the thread's and a caller's (``refresh``).
        self._checking = threading.Lock()

    def watched(self, job_id: str) -> ClusterJob | None:
        with self._lock:
            return self._pending.get(job_id)

    def track(self, job: ClusterJob) -> None:
        """Check on ``job`` until ``forget``; starts the thread on first use."""
        with self._lock:
            job.next_check = next_check(job, time.monotonic())
            self._pending[job.job_id] = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"clustrix-poll-{self.transport.where}", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def forget(self, job: ClusterJob) -> None:
        with self._lock:
            self._pending.pop(job.job_id, None)

    def _run(self) -> None:
        failures = 0
        while True:
            jobs = self._due()
            try:
                self.check(jobs)
                failures = 0
                for job in jobs:
                    job.failing_since = None
            except Exception as exc:  # the connection, mostly: keep every job, try again
                failures += 1
                logger.warning(
                    "status check of %d job(s) on %s failed (%s); retrying",
                    len(jobs),
                    self.transport.where,
                    exc,
                )
                self._after_failed_check(jobs, exc, failures)

    def _due(self) -> list[ClusterJob]:
        """Wait until a job is due; then every pending job (the same one command)."""
        with self._lock:
            while True:
                while not self._pending:
                    self._lock.wait()
                now = time.monotonic()
                soonest = min(job.next_check for job in self._pending.values())
                if soonest <= now:
                    return list(self._pending.values())
                self._lock.wait(timeout=soonest - now)

    def _after_failed_check(self, jobs: list[ClusterJob], error: Exception, failures: int) -> None:
        """Retry soon, backing off; a job whose checks have failed for longer than its
        ``status_check_patience`` is handed to ``on_give_up``, so that nothing waits forever
        on a scheduler that never answers."""
        now = time.monotonic()
        for job in jobs:
            if job.failing_since is None:
                job.failing_since = now
            if now - job.failing_since < job.status_patience:
                with self._lock:
                    job.next_check = next_check(job, now, failures=failures)
                continue
            self.forget(job)
            self._on_give_up(job, error, now - job.failing_since)

    def refresh(self, job: ClusterJob) -> None:
        """Bring ``job`` up to date with the scheduler now, for a caller asking its status.

        A task that ended without a result is looked at a few times before it is declared
        failed; this waits for those looks, so that the answer is how the job stands, not a
        step behind.
        """
        deadline = time.monotonic() + 30
        self.check([job])
        while (
            any(task.missing_result_checks for task in job.pending_tasks())
            and time.monotonic() < deadline
        ):
            time.sleep(_RECHECK_INTERVAL)
            self.check([job])

    def check(self, jobs: list[ClusterJob]) -> None:
        """One round trip: the scheduler's view of every job, and finished tasks' results."""
        with self._checking:
            statuses, collected = self._ask(jobs)
            now = time.monotonic()
            for job in jobs:
                self._on_check(job, statuses, collected)
                with self._lock:
                    job.next_check = next_check(job, now)

    def _ask(
        self, jobs: list[ClusterJob]
    ) -> tuple[dict[str, JobStatus], dict[tuple[str, int], dict[str, bytes] | None]]:
        submissions = {
            task.submission.scheduler_id: job.folder
            for job in jobs
            for task in job.pending_tasks()
            if task.submission is not None
        }
        detailed = any(t.missing_result_checks for job in jobs for t in job.pending_tasks())
        status_command = self.scheduler.status_command(submissions, detailed=detailed)
        collect = "; ".join(
            f"collect {shlex.quote(job.folder)} {shlex.quote(job.job_id)} "
            + shlex.quote(
                " ".join(
                    f"{a}-{b}"
                    for a, b in index_ranges([task.index for task in job.pending_tasks()])
                )
            )
            for job in jobs
        )
        output = self.transport.run(
            f"{_COLLECT_FUNCTION}; {status_command}; echo {_SECTION}; {collect}; true",
            check=False,
            timeout=POLL_TIMEOUT,
        ).stdout
        status_part, _, result_part = output.partition(_SECTION)
        return self.scheduler.parse_status(status_part, list(submissions)), _parse_collected(
            result_part
        )


def _parse_collected(text: str) -> dict[tuple[str, int], dict[str, bytes] | None]:
    """``{(job id, task): files}``; None marks a result too large to inline."""
    collected: dict[tuple[str, int], dict[str, bytes] | None] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if not line.startswith(_MARK):
            continue
        _, job_id, task, how = line.split()
        files = untar(base64.b64decode(next(lines, ""))) if how == "inline" else None
        collected[(job_id, int(task))] = files
    return collected
