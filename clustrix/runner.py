"""Runs pickled calls and packs their outcomes into a result batch.

This file is the part of Clustrix that executes user code, wherever that happens: in a local
worker process, or (shipped as a single file) on a compute node. It therefore depends on the
standard library and cloudpickle only, and must never import the rest of ``clustrix``.

A result batch is plain data, so that both sides can read it without sharing classes::

    {"host": str, "pid": int, "started": float, "finished": float,
     "outcomes": [(True, value), (False, failure), ...]}    # one per call, in call order

    failure = {"exception": pickled exception | None, "type": "module.Name",
               "message": str, "traceback": str, "exit_code": int | None}

Exceptions are pickled on their own so that, if a class cannot be rebuilt on the caller's
side, its name, message and traceback still arrive.

On a cluster this file is run as ``python runner.py JOB_DIR [TASK]``. The job folder holds
``job.json`` (the client's versions), ``function.pkl`` and ``calls-TASK.pkl``; the runner
writes ``result-TASK.pkl``. Versions are compared before anything is unpickled, so a mismatch
is reported as such instead of as an obscure unpickling error.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import time
import traceback
import types
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
        try:
            with open(path, "rb") as handle:
                batches[path] = cloudpickle.load(handle)
        except OSError as exc:
            raise _upstream_failure(reference, f"left no result ({exc.strerror})") from None
    ok, value = batches[path]["outcomes"][reference["position"]]
    if not ok:
        raise _upstream_failure(reference, f"failed: {value['type']}: {value['message']}")
    return value


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


def run_calls(func: Any, calls: list[tuple[tuple, dict]], upstream: bool = False) -> dict[str, Any]:
    """Run calls in order; whatever happens, describe each outcome instead of raising.

    ``upstream``: the arguments may hold upstream references (``resolve_upstream``); a call
    whose upstream failed fails with that, without running.
    """
    started = time.time()
    outcomes: list[tuple[bool, Any]] = []
    batches: dict[str, Any] = {}
    for args, kwargs in calls:
        try:
            if upstream:
                args, kwargs = resolve_upstream((args, kwargs), batches)
            outcomes.append((True, func(*args, **kwargs)))
        except UpstreamFailed as exc:
            outcomes.append((False, exc.failure))
        except SystemExit as exc:
            # Re-raising SystemExit on the client would end the caller's program; report it.
            code = exc.code if isinstance(exc.code, int) else 1
            outcomes.append((False, _failure(exc, exit_code=code)))
        except BaseException as exc:
            # KeyboardInterrupt, asyncio.CancelledError, GeneratorExit...: the failure of
            # this one call, raised again by the caller; the batch's other calls still run
            # and keep their results.
            outcomes.append((False, _failure(exc)))
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "finished": time.time(),
        "outcomes": outcomes,
    }


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


def run_pickled_batch(function_bytes: bytes, calls_bytes: bytes) -> bytes:
    """Run a batch of ``(args, kwargs)`` pairs with one function; return the pickled batch.

    Batching lets thousands of tiny calls share one round trip to a worker.
    """
    # Only payloads that name the marker can hold upstream references: others skip the walk.
    upstream = UPSTREAM_KEY.encode() in calls_bytes
    calls = cloudpickle.loads(calls_bytes)
    return dump_batch(run_calls(_load_function(function_bytes), calls, upstream))


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
    "result": "result-{task}.pkl",
    "runtime": "clustrix-runtime.zip",
}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: runner.py JOB_DIR [TASK]", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    task = int(argv[1]) if len(argv) == 2 else 0
    metadata = json.loads((job_dir / "job.json").read_text())
    # The client names the folder's files (clustrix.layout); these are the defaults.
    names = {**_DEFAULT_FILES, **metadata.get("files", {})}
    result_path = job_dir / names["result"].format(task=task)
    expected = metadata["versions"]
    problem = version_problem(expected)
    if problem is not None:
        _write_atomically(result_path, _setup_failure(problem, "clustrix.VersionMismatchError"))
        print(f"clustrix runner: {problem}", file=sys.stderr)
        return 3
    os.environ["CLUSTRIX_IN_JOB"] = "1"
    shipped = job_dir / names["runtime"]  # Clustrix's code, when the payload needs it
    if shipped.is_file():
        sys.path.insert(0, str(shipped))
    function_bytes = (job_dir / names["function"]).read_bytes()
    calls_bytes = (job_dir / names["calls"].format(task=task)).read_bytes()
    try:
        data = run_pickled_batch(function_bytes, calls_bytes)
    except BaseException as exc:  # unpickling failed: a module missing here, say
        message = f"could not load the function or its arguments: {type(exc).__name__}: {exc}"
        data = _setup_failure(message, "clustrix.PayloadError", traceback.format_exc())
        print(f"clustrix runner: {message}", file=sys.stderr)
        _write_atomically(result_path, data)
        return 4
    # The client reads the logs together with the result: what the call printed must be in
    # them before the result appears, not when the interpreter exits.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _write_atomically(result_path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
