"""Runs pickled calls and packs their outcomes into a result batch.

This file is the part of Clustrix that executes user code, wherever that happens: in a local
worker process, or (shipped as a single file) on a compute node. It therefore depends on the
standard library and cloudpickle only, and must never import the rest of ``clustrix``, but
for two standalone modules that run inside calls, from the runtime zip shipped with the job:
``clustrix.checkpointing`` when a payload uses it (``_call_places``) and ``clustrix.requeue``
for a job that requeues itself (``_watch_for_requeue``).

A result batch is plain data, so that both sides can read it without sharing classes::

    {"host": str, "pid": int, "started": float, "finished": float,
     "outcomes": [(True, value), (False, failure), ...],    # one per call, in call order
     "not_run": int}    # calls failed by their upstream (a pipeline) without running

    failure = {"exception": pickled exception | None, "type": "module.Name",
               "message": str, "traceback": str, "exit_code": int | None}

Exceptions are pickled on their own so that, if a class cannot be rebuilt on the caller's
side, its name, message and traceback still arrive.

On a cluster this file is run as ``python runner.py JOB_DIR [TASK]``. The job folder holds
``job.json`` (the client's versions, the file names, the task's time limit), ``function.pkl``
and ``calls-TASK.pkl``. The runner claims its calls by renaming them to
``taken-TASK-by-TASK.pkl`` and writes ``result-TASK.pkl``; if they were short, it goes on with
the calls of tasks not started yet (``take_others``), claimed as ``taken-OTHER-by-TASK.pkl``,
writing ``result-OTHER.pkl`` and OTHER's logs. A task whose calls another runner took exits
with status 0 and writes nothing. Then, in a child process (``runner.py --follow``), it goes
on with the ready calls of the later pipeline stages listed in ``followers`` (``follow``),
claimed as ``taken-OTHER-by-JOB.TASK.pkl``; their own elements wait for those results
(``wait_for_borrower``). Versions are compared before anything is unpickled, so a mismatch
is reported as such instead of as an obscure unpickling error.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import cloudpickle
except ImportError:  # reported by main() as an environment problem, with the interpreter used
    cloudpickle = None  # type: ignore[assignment]


def _describe_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _pickled_or_none(exc: BaseException) -> bytes | None:
    try:
        return cloudpickle.dumps(exc)
    except Exception:
        return None


def _failure(exc: BaseException, exit_code: int | None = None) -> dict[str, Any]:
    # Start the traceback at the user's function: the runner's own frame is noise.
    trace = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return {
        "exception": _pickled_or_none(exc),
        "type": _describe_type(exc),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, trace)),
        "exit_code": exit_code,
    }


#: The attribute of a ``types.SimpleNamespace`` that stands, in a call's arguments, for the
#: value of a call of another job (a pipeline): ``{"job_id", "folder", "result", "position",
#: "item"}``, the upstream job, its folder, the result file of the task that ran the call and
#: the call's place in that file's batch and in its job. A stdlib type, so that the node
#: needs no Clustrix class to unpickle it; the client writes it (clustrix.remote.dependencies).
UPSTREAM_KEY = "clustrix_upstream"


class UpstreamFailed(Exception):
    """A call's upstream value is not there: the call fails with this failure instead."""

    def __init__(self, failure: dict[str, Any]) -> None:
        super().__init__(failure["message"])
        self.failure = failure


def _upstream_failure(reference: dict[str, Any], error: str) -> UpstreamFailed:
    item = reference.get("item")
    return UpstreamFailed(
        {
            "exception": None,
            "type": "clustrix.DependencyFailedError",
            "message": f"upstream job {reference['job_id']} (item {item}) {error}",
            "traceback": "",
            "exit_code": None,
            "upstream": {"job_id": reference["job_id"], "item": item, "error": error},
        }
    )


def _upstream_value(reference: dict[str, Any], batches: dict[str, Any]) -> Any:
    """The value of an upstream call, read from its job's result file (each file once)."""
    path = os.path.join(reference["folder"], reference["result"])
    if path not in batches:
        _wait_for_taken_result(reference["folder"], reference["result"], path)
        try:
            with open(path, "rb") as handle:
                batches[path] = cloudpickle.load(handle)
        except OSError as exc:
            raise _upstream_failure(reference, f"left no result ({exc.strerror})") from None
    ok, value = batches[path]["outcomes"][reference["position"]]
    if not ok:
        raise _upstream_failure(reference, f"failed: {value['type']}: {value['message']}")
    return value


# How long a call waits for an upstream result that another task of the upstream job took
# on (see take_others): that task writes it once it has run those calls, which it took only
# because they were short.
TAKEN_RESULT_PATIENCE = 1800.0


def _wait_for_taken_result(folder: str, result: str, path: str) -> None:
    """Wait while the upstream task's calls are being run by another task of its job.

    The upstream element of a task whose calls were taken ends at once, so the scheduler
    starts this job before the taker has written that task's result.
    """
    prefix, suffix = _DEFAULT_FILES["result"].split("{task}")
    task = result[len(prefix) : len(result) - len(suffix)] if result.startswith(prefix) else ""
    taken_prefix = _DEFAULT_FILES["taken"].split("{task}")[0] + f"{task}-by-"
    # Its own element's claim does not count: that element ended, with or without a result.
    own = _DEFAULT_FILES["taken"].format(task=task, taker=task)
    deadline = time.monotonic() + TAKEN_RESULT_PATIENCE
    while not os.path.exists(path) and time.monotonic() < deadline:
        try:
            taken = any(
                name.startswith(taken_prefix) and name != own for name in os.listdir(folder)
            )
        except OSError:
            return
        if not taken:
            return
        time.sleep(0.2)


def resolve_upstream(value: Any, batches: dict[str, Any]) -> Any:
    """``value`` with every upstream reference replaced by its value, also inside lists,
    tuples and dicts (their exact types: subclasses are the user's and kept as they are).
    Raises UpstreamFailed for a reference whose call failed or left no result."""
    if type(value) is types.SimpleNamespace and hasattr(value, UPSTREAM_KEY):
        return _upstream_value(getattr(value, UPSTREAM_KEY), batches)
    if type(value) is list:
        return [resolve_upstream(item, batches) for item in value]
    if type(value) is tuple:
        return tuple(resolve_upstream(item, batches) for item in value)
    if type(value) is dict:
        return {key: resolve_upstream(item, batches) for key, item in value.items()}
    return value


def run_calls(
    func: Any,
    calls: list[tuple[tuple, dict]],
    upstream: bool = False,
    checkpoints: str | None = None,
) -> dict[str, Any]:
    """Run calls in order; whatever happens, describe each outcome instead of raising.

    ``upstream``: the arguments may hold upstream references (``resolve_upstream``); a call
    whose upstream failed fails with that, without running. ``checkpoints``: the path of
    each call's checkpoint file, with ``{position}`` for the call's place in ``calls``
    (``clustrix.checkpoint``); None: calls have no checkpoint.
    """
    started = time.time()
    outcomes: list[tuple[bool, Any]] = []
    batches: dict[str, Any] = {}
    not_run = 0
    places = _call_places(checkpoints)
    with places or contextlib.nullcontext():
        for args, kwargs in calls if places is None else places.each(calls):
            try:
                if upstream:
                    args, kwargs = resolve_upstream((args, kwargs), batches)
                outcomes.append((True, func(*args, **kwargs)))
            except UpstreamFailed as exc:
                outcomes.append((False, exc.failure))
                not_run += 1
            except SystemExit as exc:
                # Re-raising SystemExit on the client would end the caller's program; report.
                code = exc.code if isinstance(exc.code, int) else 1
                outcomes.append((False, _failure(exc, exit_code=code)))
            except BaseException as exc:
                # KeyboardInterrupt, asyncio.CancelledError, GeneratorExit...: the failure of
                # this one call, raised again by the caller; the batch's other calls still
                # run and keep their results.
                outcomes.append((False, _failure(exc)))
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "finished": time.time(),
        "outcomes": outcomes,
        # Calls failed by their upstream without running: they say nothing of the pace.
        "not_run": not_run,
    }


_NOT_LOADED: Any = object()
_checkpointing: Any = _NOT_LOADED


def _call_places(template: str | None) -> Any:
    """``clustrix.checkpointing.call_places(template)``, or None when calls have no place:
    no template, or a payload that does not use Clustrix (then no call reads one).

    The one module of Clustrix the runner may import: it is standalone, and reachable
    whenever a payload uses ``clustrix.checkpoint`` (installed locally; in a job, from the
    runtime zip shipped with any payload naming Clustrix). Looked up once per process.
    """
    global _checkpointing
    if template is None:
        return None
    if _checkpointing is _NOT_LOADED:
        try:
            from clustrix import checkpointing as module
        except ImportError:
            module = None  # type: ignore[assignment]
        _checkpointing = module
    return None if _checkpointing is None else _checkpointing.call_places(template)


def dump_batch(batch: dict[str, Any]) -> bytes:
    """Pickle a result batch; a return value that will not pickle becomes a failure."""
    try:
        return cloudpickle.dumps(batch)
    except Exception:
        batch = dict(batch, outcomes=[_picklable_outcome(o) for o in batch["outcomes"]])
        return cloudpickle.dumps(batch)


def _picklable_outcome(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    ok, value = outcome
    if not ok:
        return outcome
    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        return False, {
            "exception": None,
            "type": "clustrix.SerializationError",
            "message": f"the function's return value ({type(value).__name__}) could not be "
            f"pickled: {exc}",
            "traceback": "",
            "exit_code": None,
        }
    return outcome


_function_cache: dict[bytes, Any] = {}


def _load_function(function_bytes: bytes) -> Any:
    """Unpickle a function once per worker, however many batches it arrives with."""
    func = _function_cache.get(function_bytes)
    if func is None:
        if len(_function_cache) > 32:
            _function_cache.clear()
        func = cloudpickle.loads(function_bytes)
        _function_cache[function_bytes] = func
    return func


def run_pickled_batch(
    function_bytes: bytes, calls_bytes: bytes, checkpoints: str | None = None
) -> bytes:
    """Run a batch of ``(args, kwargs)`` pairs with one function; return the pickled batch.

    Batching lets thousands of tiny calls share one round trip to a worker.
    ``checkpoints``: each call's checkpoint file, with ``{position}`` for its place in the
    batch (see ``run_calls``); None: the calls have none. The checkpoints of the calls that
    succeed are removed; a failed call's stays, so that a retry resumes from it.
    """
    # Only payloads that name the marker can hold upstream references: others skip the walk.
    upstream = UPSTREAM_KEY.encode() in calls_bytes
    calls = cloudpickle.loads(calls_bytes)
    batch = run_calls(_load_function(function_bytes), calls, upstream, checkpoints)
    if checkpoints is not None and _checkpointing is not None:  # run_calls looked it up
        _checkpointing.remove_succeeded(checkpoints, (ok for ok, _ in batch["outcomes"]))
    return dump_batch(batch)


# --------------------------------------------------------------------------- as a script


def version_problem(expected: dict[str, str]) -> str | None:
    """Why this interpreter cannot run a payload pickled by the client, or None if it can.

    Functions travel as bytecode, which changes between Python minor versions; cloudpickle's
    format may change between its minor versions.
    """
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if cloudpickle is None:
        return (
            f"cloudpickle is not installed for {sys.executable} (Python {here}); the client "
            f"uses cloudpickle {expected['cloudpickle']}"
        )
    if expected["python"] != here:
        return (
            f"the client runs Python {expected['python']} but the job runs Python {here} "
            f"({sys.executable}); functions can only be sent between equal minor versions"
        )
    ours = ".".join(cloudpickle.__version__.split(".")[:2])
    theirs = ".".join(expected["cloudpickle"].split(".")[:2])
    if ours != theirs:
        return (
            f"the client uses cloudpickle {expected['cloudpickle']} but the job has "
            f"cloudpickle {cloudpickle.__version__} ({sys.executable})"
        )
    return None


def _setup_failure(message: str, kind: str, trace: str = "") -> bytes:
    failure = {
        "exception": None,
        "type": kind,
        "message": message,
        "traceback": trace,
        "exit_code": None,
    }
    batch = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "finished": time.time(),
        "outcomes": [(False, failure)],
    }
    return pickle.dumps(batch, protocol=4)  # plain data: readable without cloudpickle


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


_DEFAULT_FILES = {
    "function": "function.pkl",
    "calls": "calls-{task}.pkl",
    "taken": "taken-{task}-by-{taker}.pkl",
    "result": "result-{task}.pkl",
    "stdout": "stdout-{task}",
    "stderr": "stderr-{task}",
    "runtime": "clustrix-runtime.zip",
    "checkpoint": "checkpoint-{task}-{position}.pkl",
    "attempts": "attempts-{task}.json",
    "followers": "followers",
}


def main(argv: list[str]) -> int:
    """Run task ``argv[1]`` of job folder ``argv[0]``, then the calls of tasks not yet started
    while they are short (see ``take_others``), then those of the pipeline stages following
    this job (``follow``); the process's exit status."""
    started = time.monotonic()
    if argv[:1] == ["--follow"] and len(argv) == 4:
        return follow_main(Path(argv[1]), argv[2], float(argv[3]))
    if len(argv) not in (1, 2):
        print("usage: runner.py JOB_DIR [TASK]", file=sys.stderr)
        return 2
    task = int(argv[1]) if len(argv) == 2 else 0
    folder = JobFolder.load(Path(argv[0]))
    metadata = folder.metadata
    claimed = folder.claim(task, task)
    if claimed is None:
        borrowed = folder.borrowed(task)
        if borrowed is not None:  # a runner of an earlier stage runs them, or ran them
            claimed = wait_for_borrower(folder, task, borrowed)
            if claimed is None:
                return 0
        elif folder.claimed_by_another(task):
            return 0  # another task's runner took these calls: it writes their result
    problem, kind = version_problem(metadata["versions"]), "clustrix.VersionMismatchError"
    if problem is None and claimed is None:
        problem = f"the calls of task {task} are missing from {folder.path}"
        kind = "clustrix.PayloadError"
    if problem is not None:
        _write_atomically(folder.file("result", task), _setup_failure(problem, kind))
        print(f"clustrix runner: {problem}", file=sys.stderr)
        return 3
    os.environ["CLUSTRIX_IN_JOB"] = "1"
    folder.use_runtime()
    function_bytes = folder.file("function", task).read_bytes()
    pace = Pace(started, metadata.get("time_limit"), metadata.get("calls_per_task"))
    attempts = _watch_for_requeue(folder, task, metadata.get("requeue"))
    loaded = run_task(folder, task, claimed, function_bytes, pace)
    if attempts is not None:
        attempts.end("finished")
        return 0 if loaded else 4  # its calls may run for hours: no other task's follow
    if not loaded:
        return 4
    take_others(folder, task, function_bytes, pace, metadata.get("needs") or {})
    label = f"{metadata.get('job_id', 'job')}.{task}"
    follow_apart(folder, label, started, metadata.get("time_limit"))
    return 0


def _watch_for_requeue(folder: JobFolder, task: int, settings: dict[str, Any] | None) -> Any:
    """For a job that requeues itself (``@cluster(requeue=N)``): the task's attempts, with
    the scheduler's signals handled (``clustrix.requeue``, from the runtime zip); else None."""
    if not settings:
        return None
    from clustrix.requeue import Attempts, watch

    attempts = Attempts(folder.file("attempts", task), settings)
    record = attempts.begin()
    if record["attempt"] > 1:  # each attempt's output follows the last one's in the logs
        banner = f"--- clustrix: attempt {record['attempt']} on {record['host']} ---"
        print(banner, flush=True)
        print(banner, file=sys.stderr, flush=True)
    watch(attempts)
    return attempts


# --------------------------------------------------------------------------- taking work
#
# A map's calls are cut into array tasks before anyone knows how long a call takes. When
# they turn out to be short, starting a job per task costs far more than the calls: so a
# runner that has finished its own task goes on with the calls of tasks whose array elements
# have not started yet. Every runner claims calls by renaming their file (atomic, on network
# file systems too), so a task's calls run once, by whichever runner renamed them first; the
# element of a taken task finds them gone and exits at once, or is cancelled by the client
# while still queued.

#: Calls are short when the next task's are projected to take at most this (seconds): about
#: what starting a job costs. Longer tasks are left to their own array elements, which may
#: run them in parallel.
SHORT_TASK_SECONDS = 5.0
#: Of a known time limit, the share a runner fills by taking work; without one, the time
#: after which it takes no more (seconds).
LIMIT_SHARE = 0.5
UNLIMITED_BUDGET = 180.0
#: A projection is a mean: the next task is assumed to take up to this many times as long.
PROJECTION_MARGIN = 2.0
#: A later pipeline stage's first task is taken untimed only while at most this share of
#: the time limit is used: however long its calls, they keep almost all of it.
TRUST_SHARE = 0.05


class JobFolder:
    """The files of a job folder, named as its ``job.json`` says."""

    def __init__(self, path: Path, names: dict[str, str], metadata: dict | None = None) -> None:
        self.path = path
        self.names = {**_DEFAULT_FILES, **names}
        self.metadata: dict[str, Any] = metadata or {}

    @classmethod
    def load(cls, path: Path) -> JobFolder:
        """The folder at ``path`` with its ``job.json`` read. Raises OSError and ValueError."""
        metadata = json.loads((path / "job.json").read_text())
        # The client names the folder's files (clustrix.layout); _DEFAULT_FILES are defaults.
        return cls(path, metadata.get("files", {}), metadata)

    def use_runtime(self) -> None:
        """Put Clustrix's code shipped with this job (when its payload needs it) on
        ``sys.path``, first."""
        global _checkpointing
        shipped = self.file("runtime", 0)
        if shipped.is_file() and str(shipped) not in sys.path:
            sys.path.insert(0, str(shipped))
            _checkpointing = _NOT_LOADED  # looked up again: it may be there now

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This folder as the working directory for the block, and its shipped runtime on
        ``sys.path`` (from then on): as the job's own script would have them."""
        before = os.getcwd()
        self.use_runtime()
        os.chdir(self.path)
        try:
            yield
        finally:
            os.chdir(before)

    def followers(self) -> list[Path]:
        """The folders of the later pipeline stages whose calls this job's runners may run
        (one per line, appended by the client when it submits them; see ``follow``)."""
        try:
            text = self.file("followers", 0).read_text()
        except OSError:
            return []
        # A line still being appended has no newline yet: it is read next time.
        return [Path(line) for line in text.split("\n")[:-1] if line.startswith("/")]

    def file(self, kind: str, task: int | str, taker: int | str = "") -> Path:
        """The file of ``kind`` (a key of ``_DEFAULT_FILES``) for ``task``."""
        return self.path / self.names[kind].format(task=task, taker=taker)

    def claim(self, task: int, taker: int | str) -> Path | None:
        """Rename the calls of ``task`` so that the runner of ``taker`` alone runs them; the
        renamed file, or None if another runner claimed them first."""
        claimed = self.file("taken", task, taker)
        try:
            os.rename(self.file("calls", task), claimed)
        except FileNotFoundError:
            # Ours already when this task runs a second time (a job the scheduler requeued),
            # or when a network file system resent a rename that had succeeded.
            return claimed if claimed.exists() else None
        return claimed

    def claimed_by_another(self, task: int) -> bool:
        """Whether a runner other than ``task``'s own claimed its calls."""
        return bool(self._claims(task))

    def borrowed(self, task: int) -> Path | None:
        """The claim on ``task``'s calls by a runner of another job (``follow``), if any."""
        prefix, _, suffix = self.names["taken"].format(task=task, taker="\0").partition("\0")
        for path in self._claims(task):
            if not path.name[len(prefix) : len(path.name) - len(suffix)].isdigit():
                return path
        return None

    def _claims(self, task: int) -> list[Path]:
        pattern = self.names["taken"].format(task=task, taker="*")
        own = self.file("taken", task, task)
        return [path for path in self.path.glob(pattern) if path != own]

    def unclaimed(self) -> list[int]:
        """The tasks whose calls no runner has claimed yet, highest index first: the array
        elements a scheduler starts last."""
        prefix, _, suffix = self.names["calls"].partition("{task}")
        found = []
        for name in os.listdir(self.path):
            if name.startswith(prefix) and name.endswith(suffix):
                index = name[len(prefix) : len(name) - len(suffix)]
                if index.isdigit():
                    found.append(int(index))
        return sorted(found, reverse=True)


class Pace:
    """How long this runner's tasks took, and whether another task's calls fit after them.

    Seconds are ``time.monotonic()`` ones; ``time_limit`` is the task's own limit in seconds
    and ``calls_per_task`` the size of the largest task of the job (None when unknown: then
    the largest task run so far).
    """

    def __init__(
        self,
        started: float,
        time_limit: float | None,
        calls_per_task: int | None,
        on_trust: bool = False,
    ) -> None:
        self.started = started
        self.time_limit = time_limit
        self.calls_per_task = calls_per_task
        #: Whether a first task may be taken before any was timed (see ``follow``).
        self.on_trust = on_trust
        self.seconds = 0.0
        self.calls = 0
        self.largest = 0

    def record(self, seconds: float, calls: int) -> None:
        """A task of ``calls`` calls took ``seconds``, loading and writing included."""
        self.seconds += seconds
        self.calls += calls
        self.largest = max(self.largest, calls)

    def projected(self) -> float:
        """Seconds a whole task's calls should take, at the mean pace so far."""
        return self.seconds / max(1, self.calls) * (self.calls_per_task or self.largest)

    def allows_another(self, now: float | None = None) -> bool:
        """Whether the calls of one more task are short and fit well within the budget.

        With ``on_trust`` and nothing timed yet: whether little of the time limit is used
        (``TRUST_SHARE``), so that a task turning out long still has most of it.
        """
        elapsed = (time.monotonic() if now is None else now) - self.started
        if self.calls == 0 and self.on_trust:
            limit = TRUST_SHARE * self.time_limit if self.time_limit else UNLIMITED_BUDGET
            return elapsed <= limit
        projected = self.projected()
        if self.calls == 0 or projected > SHORT_TASK_SECONDS:
            return False
        budget = LIMIT_SHARE * self.time_limit if self.time_limit else UNLIMITED_BUDGET
        return elapsed + PROJECTION_MARGIN * projected <= budget


def run_task(
    folder: JobFolder, task: int, claimed: Path, function_bytes: bytes, pace: Pace
) -> bool:
    """Run the claimed calls of ``task`` and write its result, timing them in ``pace``;
    False when they could not be loaded (their result is that failure)."""
    started = time.monotonic()
    try:
        calls_bytes = claimed.read_bytes()
        calls = cloudpickle.loads(calls_bytes)
        # Only payloads that name the marker can hold upstream references: others skip the walk.
        upstream = UPSTREAM_KEY.encode() in calls_bytes
        # Each call's checkpoint: checkpoint-TASK-POSITION.pkl ("{position}" filled per call).
        places = str(folder.path / folder.names["checkpoint"].replace("{task}", str(task)))
        batch = run_calls(_load_function(function_bytes), calls, upstream, places)
        data = dump_batch(batch)
    except BaseException as exc:  # unpickling failed: a module missing here, say
        message = f"could not load the function or its arguments: {type(exc).__name__}: {exc}"
        print(f"clustrix runner: {message}", file=sys.stderr)
        failure = _setup_failure(message, "clustrix.PayloadError", traceback.format_exc())
        _write_atomically(folder.file("result", task), failure)
        return False
    # The client reads the logs together with the result: what the calls printed must be in
    # them before the result appears, not when the interpreter exits.
    _flush_output()
    _write_atomically(folder.file("result", task), data)
    ran = len(calls) - batch["not_run"]
    if ran:  # calls that failed on their upstream at once would make the pace look short
        pace.record(time.monotonic() - started, ran)
    return True


def take_others(
    folder: JobFolder,
    taker: int | str,
    function_bytes: bytes,
    pace: Pace,
    needs: dict[str, list[str]] | None = None,
) -> list[int]:
    """Run the calls of tasks nobody has claimed while ``pace`` allows; the tasks taken.

    Each taken task's result and logs are written under its own index, as if its own array
    element had run it, so the client collects it as usual. ``needs`` (a pipeline's stage)
    names, per task, the upstream result files its calls read: a task is taken only once
    they all exist, since its own element would have waited for them. ``taker``: this
    runner's task, or ``JOB.TASK`` for a runner of another job (``follow``).
    """
    needs = needs or {}
    taken: list[int] = []
    candidates = folder.unclaimed()
    while candidates and pace.allows_another():
        task = candidates.pop(0)
        if not all(os.path.exists(path) for path in needs.get(str(task), ())):
            continue
        claimed = folder.claim(task, taker)
        if claimed is None:
            continue  # its own element, or another runner, was first
        taken.append(task)
        with output_to(folder.file("stdout", task), folder.file("stderr", task)):
            loaded = run_task(folder, task, claimed, function_bytes, pace)
        if not loaded:
            break
        if not candidates:  # a retried task's calls may have come back meanwhile
            candidates = folder.unclaimed()
    return taken


# --------------------------------------------------------------------------- pipelines
#
# A pipeline's later stage waits on the scheduler for the elements of the earlier one, and
# each of its elements is started (about a second each, several seconds for a stage) even
# when its calls take milliseconds. So the runner of an earlier stage, once done with its
# own job, goes on with the calls of later stages whose upstream results are all there: the
# client lists those stages in its folder's ``followers`` when it submits them, and only
# stages that ask for the same resources, environment and settings. They run in a process
# of their own (``follow_apart``): however they end (a crash, a time limit), this job's
# element ends well, so that the scheduler does not remove the stages that depend on it,
# and calls left unfinished are given back to their own elements. Those stay queued as a
# fallback: one started while another job's runner holds its calls waits for that result,
# and takes the calls back if their claim stops being touched (its runner is gone).

#: How often the runner of an earlier stage touches the claims of the calls it runs, and how
#: long their own element waits for a touch before taking the calls back (seconds). Long: a
#: network file system may show a file's modification time a minute late.
LEASE_TOUCH_SECONDS = 30.0
LEASE_SECONDS = 300.0
#: How often the own element of a borrowed task looks for its result (seconds).
BORROWED_POLL_SECONDS = 0.5
#: Of a time limit, what the calls of later stages leave unused: time to stop them and give
#: back their claims before the scheduler ends this job (the larger of the two).
FOLLOW_MARGIN_SECONDS = 60.0
FOLLOW_MARGIN_SHARE = 0.05


def follow_apart(
    folder: JobFolder, label: str, started: float, time_limit: float | None
) -> int | None:
    """Run ``follow`` in a child process (``runner.py --follow``) while this one keeps the
    child's claims fresh; the child's exit status (None: stopped at the time limit's margin,
    or not started because nothing is offered or no time is left).

    Claims the child leaves without a result (it crashed, or was stopped) are given back:
    their calls become unclaimed again, for their own elements.
    """
    deadline = None
    if time_limit:
        margin = max(FOLLOW_MARGIN_SECONDS, FOLLOW_MARGIN_SHARE * time_limit)
        deadline = started + time_limit - margin
    if not folder.followers() or (deadline is not None and time.monotonic() >= deadline):
        return None
    _flush_output()
    elapsed = f"{time.monotonic() - started:.3f}"
    command = [sys.executable, os.path.abspath(__file__), "--follow", str(folder.path), label]
    child = subprocess.Popen([*command, elapsed], stdin=subprocess.DEVNULL)
    code: int | None = None
    while code is None:
        wait = LEASE_TOUCH_SECONDS
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        try:
            code = child.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                child.kill()
                child.wait()
                break
            for claim in claims_of(folder, label):
                with contextlib.suppress(OSError):
                    os.utime(claim[1])
    if code != 0:
        for follower, claim, task in claims_of(folder, label):
            with contextlib.suppress(OSError):
                os.rename(claim, follower.file("calls", task))
    return code


def claims_of(folder: JobFolder, label: str) -> list[tuple[JobFolder, Path, int]]:
    """The claims ``label`` holds on calls of the stages following ``folder``'s job (and
    those following them) whose result is not written: ``(stage, claim, task)``."""
    found = []
    seen, waiting = {folder.path}, folder.followers()
    while waiting:
        path = waiting.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            stage = JobFolder.load(path)
        except (OSError, ValueError):
            continue
        waiting += stage.followers()
        prefix, _, suffix = stage.names["taken"].format(task="\0", taker=label).partition("\0")
        for claim in stage.path.glob(stage.names["taken"].format(task="*", taker=label)):
            task = claim.name[len(prefix) : len(claim.name) - len(suffix)]
            if task.isdigit() and not stage.file("result", task).exists():
                found.append((stage, claim, int(task)))
    return found


def follow_main(path: Path, label: str, elapsed: float) -> int:
    """``runner.py --follow JOB_DIR LABEL ELAPSED``: ``follow`` for the runner of ``label``,
    which started ``elapsed`` seconds ago."""
    folder = JobFolder.load(path)
    follow(folder, label, time.monotonic() - elapsed, folder.metadata.get("time_limit"))
    return 0


def follow(folder: JobFolder, label: str, started: float, time_limit: float | None) -> list[Path]:
    """Run the ready calls of the pipeline stages following ``folder``'s job, and of those
    following them, while each stage's pace allows; the folders of the stages taken from.

    ``label`` names this runner in its claims (``JOB.TASK``); ``started`` (monotonic) and
    ``time_limit`` (seconds, None for none) are this runner's, which the followers share.
    A stage's first task is taken untimed while little of the time limit is used
    (``Pace.on_trust``); later ones only if they are short, as in ``take_others``. A
    follower that cannot be read, or is for another Python, is left to its own elements.
    The ``followers`` of every stage visited are read again until no new one appears: the
    client may submit a stage while this runner is at work on the one before.
    """
    seen = {folder.path}
    visited = [folder]
    took_from: list[Path] = []
    while True:
        new = [path for stage in visited for path in stage.followers() if path not in seen]
        if not new:
            return took_from
        for path in dict.fromkeys(new):
            seen.add(path)
            try:
                follower = JobFolder.load(path)
                if version_problem(follower.metadata["versions"]) is not None:
                    continue
                function_bytes = follower.file("function", 0).read_bytes()
            except (OSError, ValueError, KeyError):
                continue  # removed, or not written yet: its own elements run it
            visited.append(follower)
            calls_per_task = follower.metadata.get("calls_per_task")
            pace = Pace(started, time_limit, calls_per_task, on_trust=True)
            needs = follower.metadata.get("needs") or {}
            try:
                with follower.entered():
                    if take_others(follower, label, function_bytes, pace, needs):
                        took_from.append(path)
            except OSError as exc:  # its folder removed meanwhile: its own elements run it
                print(f"clustrix runner: left {path}: {exc}", file=sys.stderr, flush=True)


def wait_for_borrower(folder: JobFolder, task: int, claim: Path) -> Path | None:
    """Wait, as ``task``'s own runner, while a runner of another job runs its calls (its
    ``claim``); None once their result is written, or the calls reclaimed for this runner
    when that claim went untouched for ``LEASE_SECONDS`` (its runner is gone)."""
    result = folder.file("result", task)
    own = folder.file("taken", task, task)
    stamp, since = None, time.monotonic()
    while not result.exists():
        try:
            touched = os.stat(claim).st_mtime_ns
        except FileNotFoundError:
            # Given back (a resubmission) or taken back: claim the calls, or find who did.
            mine = folder.claim(task, task)
            if mine is not None:
                return mine
            found = folder.borrowed(task)
            if found is None:
                return None  # a runner of this job took them: it writes their result
            claim, stamp = found, None
            time.sleep(BORROWED_POLL_SECONDS)
            continue
        now = time.monotonic()
        if touched != stamp:
            stamp, since = touched, now
        elif now - since > LEASE_SECONDS:
            print(
                f"clustrix runner: {claim.name} was not touched for {LEASE_SECONDS:.0f} s; "
                f"running task {task} here",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(FileNotFoundError):
                os.rename(claim, own)
                return None if result.exists() else own
            time.sleep(BORROWED_POLL_SECONDS)
            continue
        time.sleep(BORROWED_POLL_SECONDS)
    return None


@contextlib.contextmanager
def output_to(stdout: Path, stderr: Path) -> Iterator[None]:
    """Append file descriptors 1 and 2 (Python's and child processes' output alike) to these
    files for the block, so that each task's output stays in its own logs."""
    _flush_output()
    saved = [os.dup(1), os.dup(2)]
    try:
        for descriptor, path in ((1, stdout), (2, stderr)):
            opened = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(opened, descriptor)
            os.close(opened)
        yield
    finally:
        _flush_output()
        for descriptor, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, descriptor)
            os.close(copy)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
