"""One thread per cluster that checks on every pending job with one command per interval.

The command asks the scheduler about all jobs at once and brings back, in the same output,
the results and logs of tasks that finished (small ones inline, as base64 of a tar), so that
collecting a short call costs no extra round trip. When to check next is decided in one
place, ``next_check``.
"""

from __future__ import annotations

import atexit
import base64
import logging
import shlex
import threading
import time
from collections.abc import Callable

from .. import layout
from ..schedulers import Scheduler
from ..transport.base import Transport
from .archive import untar
from .job import ClusterJob, Findings, Submission, Task, index_ranges

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
# collect FOLDER JOB_ID "FIRST-LAST ...": the tasks with a result. Those too large to inline
# get a line "MARK JOB_ID large TASK" each; the others one line "MARK JOB_ID inline TASK..."
# followed by their results, non-empty logs and attempts (a job that requeues itself) as ONE
# base64 tar (a tar per task costs a few processes each: seconds, when a hundred tasks finish
# at once).
_COLLECT_FUNCTION = (
    'collect() { found=""; for range in $3; do for t in $(seq ${range%-*} ${range#*-}); do '
    f'[ -e "$1/{_RESULT}" ] && found="$found $t"; done; done; '
    '[ -n "$found" ] || return 0; '
    f'large=" $(find "$1" -maxdepth 1 -name \'{layout.result_file("*")}\' '
    f"-size +{_INLINE_LIMIT}c -printf '%f ' 2>/dev/null)\"; "
    'small=""; files=""; for t in $found; do case "$large" in '
    f'*" {_RESULT} "*) echo "{_MARK} $2 large $t";; '
    f'*) small="$small $t"; files="$files {_RESULT}"; '
    f'[ -s "$1/{layout.stdout_file("$t")}" ] && files="$files {layout.stdout_file("$t")}"; '
    f'[ -s "$1/{layout.stderr_file("$t")}" ] && files="$files {layout.stderr_file("$t")}"; '
    f'[ -s "$1/{layout.attempts_file("$t")}" ] && files="$files {layout.attempts_file("$t")}";; '
    "esac; done; "
    '[ -n "$small" ] || return 0; '
    f'echo "{_MARK} $2 inline$small"; '
    "printf '%s\\n' $files | tar -c -f - -C \"$1\" --ignore-failed-read -T - 2>/dev/null "
    "| base64 -w0; echo; }"
)

_TAKEN_MARK = "--clustrix-taken--"
# taken-<task>-by-<taker>.pkl, cut where the shell finds the task and the taker.
_TAKEN_PREFIX, _, _TAKEN_REST = layout.TAKEN_TEMPLATE.partition("{task}")
_TAKEN_BY, _, _TAKEN_SUFFIX = _TAKEN_REST.partition("{taker}")
# taken FOLDER JOB_ID: for each task whose calls another task's runner took and whose result
# is not written yet, "MARK JOB_ID TASK TAKER". One glob over the folder, not a look per task.
_TAKEN_FUNCTION = (
    f'taken() {{ for f in "$1"/{layout.taken_file("*", "*")}; do [ -e "$f" ] || continue; '
    f"n=${{f##*/{_TAKEN_PREFIX}}}; n=${{n%{_TAKEN_SUFFIX}}}; t=${{n%%{_TAKEN_BY}*}}; "
    f'u=${{n##*{_TAKEN_BY}}}; [ "$t" = "$u" ] && continue; '
    f'[ -e "$1/{layout.result_file("$t")}" ] || echo "{_TAKEN_MARK} $2 $t $u"; done; }}'
)

#: ``on_check(job, findings)``: what the backend does with one check's findings.
CheckHandler = Callable[[ClusterJob, Findings], None]
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
        # Commands to run in front of the next status check (cancels that need no answer).
        self._piggyback: list[str] = []
        # Commands to run once the current check has handed every job its findings; held
        # while they run, so that the process's exit waits for them (``run_after_check``).
        self._after: list[str] = []
        self._running_after = threading.Lock()
        atexit.register(self._run_after)

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

    def run_with_next_check(self, command: str) -> None:
        """Start ``command`` (output and status ignored) in the background with the next
        status check, instead of a round trip of its own; it is lost if that check fails."""
        with self._lock:
            self._piggyback.append(command)

    def run_after_check(self, commands: list[str]) -> None:
        """Run ``commands`` (in order; output and status ignored) once the check under way
        has handed every job its findings, in one round trip with those of other jobs:
        the futures of every job are settled before any of them waits for the cluster. A
        process that exits as soon as its results arrived runs them on its way out."""
        with self._lock:
            self._after += commands

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
            found = self._ask(jobs)
            now = time.monotonic()
            try:
                for job in jobs:
                    self._on_check(job, found)
                    with self._lock:
                        job.next_check = next_check(job, now)
            finally:
                self._run_after()

    def _run_after(self) -> None:
        """The commands handed to ``run_after_check`` so far, in one round trip."""
        with self._running_after:
            with self._lock:
                commands, self._after = self._after, []
            if not commands:
                return
            try:
                joined = "; ".join(f"{{ {c}; }}" for c in commands)
                self.transport.run(joined, check=False, timeout=POLL_TIMEOUT)
            except Exception as exc:  # the connection: tried again after the next check
                where = self.transport.where
                logger.warning("commands after a status check on %s failed: %s", where, exc)
                with self._lock:
                    self._after[:0] = commands

    def _ask(self, jobs: list[ClusterJob]) -> Findings:
        # The runners that took pending tasks' calls are asked about too: their own tasks
        # may be settled, their submissions no longer pending.
        submissions = {
            submission.scheduler_id: job.folder
            for job in jobs
            for task in job.pending_tasks()
            for submission in _watched_submissions(job, task)
        }
        detailed = any(t.missing_result_checks for job in jobs for t in job.pending_tasks())
        status_command = self.scheduler.status_command(submissions, detailed=detailed)
        # Taken tasks are listed before results are looked for: a task whose taker writes
        # its result in between is then reported with that result, never with neither.
        look = "; ".join(
            (
                f"taken {shlex.quote(job.folder)} {shlex.quote(job.job_id)}; "
                if len(job.tasks) > 1
                else ""
            )
            + f"collect {shlex.quote(job.folder)} {shlex.quote(job.job_id)} "
            + shlex.quote(
                " ".join(
                    f"{a}-{b}"
                    for a, b in index_ranges([task.index for task in job.pending_tasks()])
                )
            )
            for job in jobs
        )
        with self._lock:
            # In the background: a cancel must not hold up the check it travels with.
            before = "".join(
                f"{{ {command}; }} </dev/null >/dev/null 2>&1 & " for command in self._piggyback
            )
            self._piggyback.clear()
        output = self.transport.run(
            f"{before}{_COLLECT_FUNCTION}; {_TAKEN_FUNCTION}; {status_command}; "
            f"echo {_SECTION}; {look}; true",
            check=False,
            timeout=POLL_TIMEOUT,
        ).stdout
        status_part, _, result_part = output.partition(_SECTION)
        results, taken = _parse_collected(result_part)
        return Findings(self.scheduler.parse_status(status_part, list(submissions)), results, taken)


def _watched_submissions(job: ClusterJob, task: Task) -> list[Submission]:
    """The submissions whose state decides a pending task's: its own, and every submission
    of the task whose runner took its calls."""
    watched = [task.submission] if task.submission is not None else []
    if task.taken_by is not None and 0 <= task.taken_by < len(job.tasks):
        watched += job.tasks[task.taken_by].submissions()
    return watched


def _parse_collected(
    text: str,
) -> tuple[dict[tuple[str, int], dict[str, bytes] | None], dict[tuple[str, int], int]]:
    """``{(job id, task): files}`` (None marks a result too large to inline), and
    ``{(job id, task): the task whose runner took its calls}``."""
    collected: dict[tuple[str, int], dict[str, bytes] | None] = {}
    taken: dict[tuple[str, int], int] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith(_TAKEN_MARK):
            _, job_id, task, taker = line.split()
            if task.isdigit() and taker.isdigit():
                taken[(job_id, int(task))] = int(taker)
            continue
        if not line.startswith(_MARK):
            continue
        _, job_id, how, *tasks = line.split()
        if how == "large":
            collected.update({(job_id, int(task)): None for task in tasks})
            continue
        files = untar(base64.b64decode(next(lines, "")))
        for task in tasks:
            names = [layout.result_file(task), *layout.logs(task), layout.attempts_file(task)]
            collected[(job_id, int(task))] = {name: files[name] for name in names if name in files}
    return collected, taken
