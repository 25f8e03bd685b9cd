"""Everything until the scheduler has accepted a job, and what to do if that was cut short.

A submission pickles the calls into tasks, plans the job's Python environment, renders one
script per submission (a large map may be several arrays), writes the job to the store, and
then stages the folder and submits every part in ONE command fed with a tar stream. Each
part's scheduler id is written to ``submitted-N`` in the folder as the scheduler answers, so
that a submission whose connection drops, or whose client dies, can still be read back.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .. import layout
from ..calls import CallArgs, CallSpec
from ..config import ClusterConfig
from ..environment import modules_named_in_pickle, plan_environment, prepare_local_modules
from ..errors import ClustrixError, ConnectionFailedError
from ..job_runtime import shipped_runtime
from ..payload import function_name, pickle_calls, pickle_function, pickling_for_remote_job
from ..schedulers import JobState, Scheduler, ScriptContext
from ..store import JobRecord, JobStore, this_process
from ..transport.base import Transport
from .archive import job_files, tar_bytes
from .dependencies import Pipeline, find_upstream
from .environments import Environments, python_command
from .job import ClusterJob, Submission, Task, new_job_id
from .parts import (
    calls_per_task,
    index_text,
    part_fields,
    plan_parts,
    resources_per_task,
    script_context,
)
from .requeues import requeue_settings

logger = logging.getLogger("clustrix.remote")

# How long a submission whose connection dropped is given to report on the login node: a
# short grace once its shell has ended, a longer patience while the shell still runs (a
# scheduler slow to answer).
SUBMISSION_GRACE = 15.0
SUBMISSION_PATIENCE = 120.0

#: Makes the tracked job for a submission: (job id, folder, name, function, task sizes,
#: config, retries) -> ClusterJob with its futures wired to the backend.
JobFactory = Callable[[str, str, str, Any, list[int], ClusterConfig, int], ClusterJob]


@dataclass(frozen=True)
class Prepared:
    """A job ready to stage: its tracked form, its files and its submissions."""

    job: ClusterJob
    record: JobRecord
    files: dict[str, tuple[bytes, int]]
    parts: list[ScriptContext]
    #: The upstream calls its calls take values from (None: not part of a pipeline), and
    #: the calls each task runs.
    pipeline: Pipeline | None = None
    per_task: int = 1
    #: The folders of upstream jobs whose runners may run its calls (``Pipeline.followed``).
    follows: tuple[str, ...] = ()


class Stager:
    """Stages and submits the jobs of one cluster (one transport, one scheduler)."""

    def __init__(
        self,
        transport: Transport,
        scheduler: Scheduler,
        environments: Environments,
        connection: Mapping[str, Any],
    ) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.environments = environments
        self.connection = dict(connection)

    # ------------------------------------------------------------------ preparing

    def prepare(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
        *,
        work_dir: str,
        max_array: int,
        new_job: JobFactory,
    ) -> Prepared:
        """Pickle, plan and render a submission of ``calls``; nothing reaches the cluster
        yet except the Python environment, which is built here if it does not exist."""
        if not calls:
            raise ValueError("nothing to submit")
        options = dict(spec.options)
        job_name = spec.job_name or str(
            options.pop("job_name", f"clustrix-{getattr(func, '__name__', 'call')}")
        )
        options.pop("job_name", None)
        self.scheduler.check_options(options)
        # Futures of other jobs among the arguments: references, and what to wait for.
        backend = f"{self.scheduler.name}:{self.transport.where}"
        pipeline = find_upstream(calls, backend, self.scheduler)
        try:
            return self._prepared(
                func, calls, spec, config, job_name, options, pipeline, work_dir, max_array, new_job
            )
        except BaseException:
            if pipeline is not None:  # never recorded: its upstream elements are free
                pipeline.held.recorded()
            raise

    def _prepared(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        spec: CallSpec,
        config: ClusterConfig,
        job_name: str,
        options: dict[str, Any],
        pipeline: Pipeline | None,
        work_dir: str,
        max_array: int,
        new_job: JobFactory,
    ) -> Prepared:
        """``prepare``'s work once the upstream calls are found."""
        aligned = None
        if pipeline is not None:
            calls, aligned = pipeline.calls, pipeline.per_task(spec.chunksize)
        requeue = requeue_settings(config, self.scheduler, spec.resources, options)
        # A call that may be requeued runs alone in its task: a task's calls restart together.
        per_task = 1 if requeue else aligned or calls_per_task(len(calls), spec.chunksize, config)
        chunks = [list(calls[i : i + per_task]) for i in range(0, len(calls), per_task)]
        function_bytes, payloads, modules, plan = self._payload(func, calls, chunks, spec, config)
        report = self.environments.ensure(plan, work_dir, config)
        job_id = new_job_id()
        folder = f"{work_dir}/{job_id}"
        name = function_name(func)
        job = new_job(job_id, folder, name, func, [len(c) for c in chunks], config, spec.retries)
        job.retry_on = spec.retry_on
        job.set_environment(report)
        context = script_context(config, job_name, folder, python_command(plan, report), options)
        if requeue:
            context = replace(context, requeue_grace=config.requeue_grace)
            job.requeue = requeue
        job.context = context
        job.resources = resources_per_task(spec.resources, per_task)
        parts = plan_parts(len(chunks), max_array, config.max_parallel_jobs, context)
        follows: tuple[str, ...] = ()
        if pipeline is not None:
            parts = pipeline.wire(parts, per_task, self.scheduler)
            job.depends_on = pipeline.job_ids
            follows = tuple(pipeline.followed(job))
        scripts = [self.scheduler.render_script(job.resources, part) for part in parts]
        files = job_files(
            job_id=job_id,
            name=name,
            function_bytes=function_bytes,
            tasks=payloads,
            scripts={layout.script_file(n): text for n, text in enumerate(scripts)},
            extra=shipped_runtime(modules, always=bool(requeue)),
            calls_per_task=per_task,
            time_limit=job.resources.time_seconds,
            needs=None if pipeline is None else pipeline.needs(per_task),  # taken once ready
            requeue=requeue,
        )
        record = self._record(job, len(calls), parts)
        return Prepared(job, record, files, parts, pipeline, per_task, follows)

    def _payload(
        self,
        func: Callable[..., Any],
        calls: Sequence[CallArgs],
        chunks: list[list[CallArgs]],
        spec: CallSpec,
        config: ClusterConfig,
    ) -> tuple[bytes, list[bytes], set[str], Any]:
        """The pickled function and tasks, the modules they name, the environment plan."""
        # First: the user's own modules that cannot be installed must pickle by value.
        modules = prepare_local_modules(func, _some_values(calls))
        function_bytes, payloads, payload_modules = _pickled(func, chunks)
        plan = plan_environment(
            func,
            spec.environment,
            python_executable=config.python_executable,
            conda_env_name=config.conda_env_name,
            payload_modules=payload_modules,
            modules=modules,
        )
        return function_bytes, payloads, payload_modules, plan

    def _record(self, job: ClusterJob, calls: int, parts: list[ScriptContext]) -> JobRecord:
        """The job store's record of a job about to be submitted."""
        return JobRecord(
            job_id=job.job_id,
            function=job.name,
            cluster_type=self.scheduler.name,
            host=self.transport.where,
            remote_folder=job.folder,
            state="SUBMITTING",
            items=calls,
            task_sizes=[len(task.futures) for task in job.tasks],
            connection=self.connection,
            parts=[part_fields(part) for part in parts],
            submitter=this_process(),
            depends_on=list(job.depends_on),
            requeue=job.requeue,
        )

    # ------------------------------------------------------------------ submitting

    def submit(self, prepared: Prepared, work_dir: str) -> list[str]:
        """Stage the folder and submit every part in one round trip; the scheduler ids.

        The job is in the store (SUBMITTING, with its planned parts) before anything reaches
        the cluster. A connection that drops meanwhile is recovered from ``submitted-N``.
        """
        job, parts = prepared.job, prepared.parts
        store = job.store
        store.add(prepared.record)
        folder = shlex.quote(job.folder)
        quoted_work = shlex.quote(work_dir)
        submits = " && ".join(
            f"[ ! -e {layout.ABANDONED} ] && "
            f"{{ {self.scheduler.submit_command(layout.script_file(n), part)}; }} "
            f"> {layout.submitted_file(n)}"
            for n, part in enumerate(parts)
        )
        answers = " ".join(layout.submitted_file(n) for n in range(len(parts)))
        # Once submitted, the job is offered to the runners of its upstream jobs: one that
        # has ended, or whose folder is gone, leaves it to the job's own elements.
        offers = "".join(
            f"printf '%s\\n' {folder} 2>/dev/null "
            f">> {shlex.quote(f'{upstream}/{layout.FOLLOWERS}')}; "
            for upstream in prepared.follows
        )
        command = (
            f"mkdir -p {quoted_work} && chmod 700 {quoted_work} && mkdir -m 700 {folder} "
            f"&& cd {folder} && echo $$ > {layout.SUBMITTING_PID} && tar -x -f - && "
            f"{submits} && {{ {offers}true; }} && cat {answers}"
        )
        try:
            try:
                output = self.transport.run(command, stdin=tar_bytes(prepared.files)).stdout
                lines = output.strip().splitlines()[-len(parts) :]
            except ConnectionFailedError:
                lines = self._submitted_after_drop(job.folder, len(parts))
        except Exception as exc:
            store.update(job.job_id, state="FAILED", finished=time.time(), message=str(exc)[:2000])
            raise
        ids = [self.scheduler.parse_job_id(line) for line in lines]
        for part, scheduler_id in zip(parts, ids, strict=True):
            record_submission(job, Submission(scheduler_id, **part_fields(part)))
        store.update(job.job_id, state="PENDING")
        return ids

    def resubmit(self, job: ClusterJob, task: Task) -> None:
        """Submit one task again (a node failure, preemption, ``retry_on``) in its folder."""
        assert job.context is not None and job.resources is not None
        task.attempts += 1
        logger.warning(
            "resubmitting task %d of %s (attempt %d)", task.index, job.job_id, task.attempts
        )
        part = replace(job.context, array=None, task=task.index)
        name = layout.retry_script(task.index, task.attempts)
        script = self.scheduler.render_script(job.resources, part)
        # The previous attempt's result, if any, must not be collected as this one's; its
        # calls, claimed by the runner that ran them (this task's own, another task's, or
        # one of an earlier pipeline stage's), are given back their unclaimed name so that
        # the new attempt finds them.
        calls = shlex.quote(layout.calls_file(task.index))
        claims = layout.taken_file(task.index, "*")  # an int and a glob: nothing to quote
        give_back = f'for f in {claims}; do if [ -e "$f" ]; then mv -f "$f" {calls}; fi; done;'
        output = self.transport.run(
            f"cd {shlex.quote(job.folder)} && rm -f {layout.result_file(task.index)} && "
            f"{{ {give_back} }} && cat > {name} && chmod 700 {name} && "
            f"{{ {self.scheduler.submit_command(name, part)}; }}",
            stdin=script.encode(),
        ).stdout
        scheduler_id = self.scheduler.parse_job_id(output)
        if task.submission is not None:
            task.earlier.append(task.submission)
        task.taken_by = None
        record_submission(job, Submission(scheduler_id, **part_fields(part)))
        for future in task.futures:
            future.attempts = task.attempts

    # ------------------------------------------------------------------ when cut short

    def report(self, folder: str, parts: int) -> tuple[bool, list[str]]:
        """What a submission left in its job folder: whether its shell still runs, and a
        line per part it reached: the scheduler's answer, or "-" while there is none.

        No line at all when the folder does not exist (the submission never began).
        """
        files = " ".join(layout.submitted_file(n) for n in range(parts))
        command = (
            f"cd {shlex.quote(folder)} 2>/dev/null || {{ echo ended; exit 0; }}; "
            f'if kill -0 "$(cat {layout.SUBMITTING_PID} 2>/dev/null)" 2>/dev/null; '
            "then echo running; else echo ended; fi; "
            f'for f in {files}; do if [ -s "$f" ]; then tail -n 1 "$f"; else echo -; fi; done'
        )
        answer = self.transport.run(command, check=False).stdout.splitlines()
        return answer[:1] == ["running"], answer[1:]

    def _submitted_after_drop(self, folder: str, parts: int) -> list[str]:
        """The id lines of a submission whose connection dropped, read back from its folder.

        The submitting shell goes on without the connection, so its parts are given a moment
        to finish. If some never report, the submission is abandoned: parts not yet started
        will not start, and those the scheduler accepted are cancelled, so that nothing runs
        untracked. Raises ConnectionFailedError then, saying so.
        """
        started = time.monotonic()
        lines: list[str] = []
        answered = running = False
        while True:
            with contextlib.suppress(ClustrixError, OSError):
                running, lines = self.report(folder, parts)
                answered = True
            if len(lines) == parts and "-" not in lines:
                logger.warning(
                    "the connection to %s dropped during a submission; the scheduler had "
                    "accepted it, and it is tracked as usual",
                    self.transport.where,
                )
                return lines
            waited = time.monotonic() - started
            if waited > SUBMISSION_PATIENCE or (waited > SUBMISSION_GRACE and not running):
                break
            time.sleep(1.0)
        raise self._abandon(folder, lines, answered=answered, running=running)

    def _abandon(
        self, folder: str, lines: list[str], *, answered: bool, running: bool
    ) -> ConnectionFailedError:
        """Stop a submission that could not be read back; the error that says what was done."""
        lost = f"the connection to {self.transport.where} dropped during a submission"
        if not answered:
            return ConnectionFailedError(
                f"{lost} and could not be reopened, so whether the scheduler accepted it is "
                f"unknown: look in the queue (its job folder is {folder})"
            )
        quoted = shlex.quote(folder)
        accepted = [self.scheduler.parse_job_id(line) for line in lines if line != "-"]
        cancel = self.scheduler.cancel_command(accepted) if accepted else "true"
        abandoned = False
        with contextlib.suppress(ClustrixError, OSError):
            # The folder existing also stops a submission that has not even started.
            self.transport.run(
                f"mkdir -p -m 700 {quoted} && touch {quoted}/{layout.ABANDONED}; {cancel}",
                check=False,
            )
            abandoned = True
        if not accepted:
            outcome = "no part of it had been accepted"
        elif abandoned:
            outcome = f"the parts it had accepted ({', '.join(accepted)}) were cancelled"
        else:
            outcome = f"cancel the parts it had accepted yourself: {cancel}"
        late = (
            f" (a part still being submitted after {SUBMISSION_PATIENCE:g} s may yet start: "
            "look in the queue)"
            if running
            else ""
        )
        return ConnectionFailedError(
            f"{lost}, and not every part's answer could be read back from {folder}; {outcome}{late}"
        )

    def adopt(self, record: JobRecord, store: JobStore) -> bool:
        """Take over a job whose submitting process died while submitting it.

        What the scheduler accepted is read back from the job folder (each part's id is
        written there as the scheduler answers) and recorded, so that the job can be
        watched, listed and cancelled like any other. Parts that were never submitted are
        abandoned, so they can never start untracked. Returns False, changing nothing, while
        the submitting shell still runs on the cluster, or for a record without its planned
        parts (written by an older version).
        """
        parts = record.parts
        if not parts:
            return False
        running, lines = self.report(record.remote_folder, len(parts))
        if running:
            return False
        lines += ["-"] * (len(parts) - len(lines))
        accepted: list[str] = []
        for part, line in zip(parts, lines, strict=True):
            if line != "-":
                submission = Submission(self.scheduler.parse_job_id(line), **part)
                store.add_submission(record.job_id, asdict(submission))
                accepted.append(submission.scheduler_id)
        never = [
            part["offset"] + n
            for part, line in zip(parts, lines, strict=True)
            if line == "-"
            for n in range(part["count"])
        ]
        if never:
            quoted = shlex.quote(record.remote_folder)
            self.transport.run(f"mkdir -p -m 700 {quoted} && touch {quoted}/{layout.ABANDONED}")
        message = _adoption_message(record, accepted, never)
        logger.warning("job %s %s", record.job_id, message)
        store.update(
            record.job_id,
            state="PENDING" if accepted else "FAILED",
            message=message,
            finished=None if accepted else time.time(),
        )
        return True


def _pickled(
    func: Callable[..., Any], chunks: list[list[CallArgs]]
) -> tuple[bytes, list[bytes], set[str]]:
    """The pickled function, each task's pickled calls, and the modules the pickles name
    (read once from their opcodes, for the environment and the shipped runtime)."""
    with pickling_for_remote_job():
        function_bytes = pickle_function(func)
        payloads = [pickle_calls(func, chunk) for chunk in chunks]
    named = set().union(*(modules_named_in_pickle(p) for p in [function_bytes, *payloads[:3]]))
    return function_bytes, payloads, named


def _some_values(calls: Sequence[CallArgs]) -> list[Any]:
    """Argument values of the first calls, where the user's own modules may show up."""
    return [value for args, kwargs in calls[:100] for value in (*args, *kwargs.values())]


def _adoption_message(record: JobRecord, accepted: list[str], never: list[int]) -> str:
    submitter = record.submitter
    return (
        f"adopted: its submitting process ({submitter.get('host', '?')}, pid "
        f"{submitter.get('pid', '?')}) stopped while submitting; the scheduler had "
        f"accepted {len(accepted)} of {len(record.parts)} submission(s)"
        + (f" ({', '.join(accepted)})" if accepted else "")
        + (f"; task(s) {index_text(never)} were never submitted" if never else "")
    )


def record_submission(job: ClusterJob, submission: Submission) -> None:
    """An accepted submission: its tasks are pending under its id, in memory and store."""
    for task in job.tasks[submission.offset : submission.offset + submission.count]:
        task.submission = submission
        task.state = JobState.PENDING
        task.missing_result_checks = 0
        task.cancelled_element = None
        for future in task.futures:
            future.scheduler_id = submission.scheduler_id
    job.store.add_submission(job.job_id, asdict(submission))
