"""What travels between the caller and wherever the function runs.

The caller pickles the function once and the arguments per call, and finds out *before*
anything runs which argument cannot be pickled. Coming back, a result envelope (see
``runner``) is turned into the value, or into the original exception with the remote traceback
attached as its cause.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cloudpickle

from .errors import (
    RUNNER_FAILURES,
    DependencyFailedError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerCrashedError,
)
from .tracebacks import code_files, restore_locations

CallArgs = tuple[tuple[Any, ...], dict[str, Any]]

_pickling = threading.local()


@contextlib.contextmanager
def pickling_for_remote_job() -> Iterator[None]:
    """While active, decorated functions pickle as their plain function.

    Inside a job, nested decorated calls run inline anyway; pickling them plainly means the
    remote side never needs Clustrix itself installed.
    """
    _pickling.remote = True
    try:
        yield
    finally:
        _pickling.remote = False


def pickling_for_remote() -> bool:
    return getattr(_pickling, "remote", False)


def function_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def pickle_function(func: Callable[..., Any]) -> bytes:
    try:
        return cloudpickle.dumps(func)
    except Exception as exc:
        raise SerializationError(
            f"function {function_name(func)!r} cannot be pickled: {exc}. Functions must be "
            "picklable to run in another process; use executor='threads' to run in this one",
            argument=None,
        ) from exc


def _argument_label(func: Callable[..., Any], position: int | None, keyword: str | None) -> str:
    if keyword is not None:
        return keyword
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    for index, parameter in enumerate(parameters):
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return f"*{parameter.name}[{position - index}]"
        if index == position and parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            return parameter.name
    return f"#{position}"


def find_unpicklable_argument(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[str, Exception] | None:
    """Name the first argument that cannot be pickled, with the pickling error."""
    candidates = [(i, None, value) for i, value in enumerate(args)]
    candidates += [(None, key, value) for key, value in kwargs.items()]
    for position, keyword, value in candidates:
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            return _argument_label(func, position, keyword), exc
    return None


def pickle_calls(func: Callable[..., Any], calls: Sequence[CallArgs]) -> bytes:
    """Pickle a batch of argument sets; an unpicklable argument is named in the error."""
    try:
        return cloudpickle.dumps(list(calls))
    except Exception as exc:
        for args, kwargs in calls:
            culprit = find_unpicklable_argument(func, args, kwargs)
            if culprit is not None:
                label, error = culprit
                raise SerializationError(
                    f"argument {label!r} of {function_name(func)!r} cannot be pickled: {error}. "
                    "Pass data that can be pickled, or use executor='threads' for local runs",
                    argument=label,
                ) from error
        raise SerializationError(
            f"arguments of {function_name(func)!r} cannot be pickled: {exc}"
        ) from exc


def is_picklable_call(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> str | None:
    """None when the call pickles; otherwise the reason, for logging why threads were chosen."""
    try:
        cloudpickle.dumps(func)
    except Exception as exc:
        return f"the function cannot be pickled ({exc})"
    culprit = find_unpicklable_argument(func, args, kwargs)
    if culprit is not None:
        return f"argument {culprit[0]!r} cannot be pickled ({culprit[1]})"
    return None


def batch_outcomes(
    batch_bytes: bytes, *, where: str, func: Callable[..., Any] | None = None
) -> list[tuple[bool, Any]]:
    """Decode a result batch into ``(True, value)`` or ``(False, exception_to_raise)`` pairs."""
    batch = cloudpickle.loads(batch_bytes)
    host = batch.get("host", "?")
    return [
        (True, value)
        if ok
        else (False, exception_from_failure(value, host=host, where=where, func=func))
        for ok, value in batch["outcomes"]
    ]


def exception_from_failure(
    failure: dict[str, Any], *, host: str, where: str, func: Callable[..., Any] | None = None
) -> BaseException:
    """The exception to raise for a failed call, with the remote traceback as its cause."""
    text = failure["traceback"].rstrip()
    if func is not None and "<dynamic-code>" in text:
        text = restore_locations(text, code_files(func))
    remote_traceback = RemoteTraceback(f"{text}\n(raised on {host}, {where})")
    exc = _load_exception(failure.get("exception"))
    if isinstance(exc, SystemExit):
        error: BaseException = WorkerCrashedError(
            f"the function called sys.exit({exc.code!r}) in {where}",
            exit_code=failure.get("exit_code"),
            host=host,
        )
    elif exc is None:
        if failure["type"] == "clustrix.DependencyFailedError":
            upstream = failure.get("upstream") or {}
            error = DependencyFailedError(
                f"{failure['message']} (in {where})",
                upstream_job_id=upstream.get("job_id"),
                item=upstream.get("item"),
                upstream_error=upstream.get("error", ""),
                state="FAILED",
                host=host,
            )
        elif failure["type"] == "clustrix.SerializationError":
            error = SerializationError(f"{failure['message']} (in {where})")
        elif failure["type"] in RUNNER_FAILURES:
            error = RUNNER_FAILURES[failure["type"]](
                f"{failure['message']} (in {where})", state="FAILED", host=host
            )
        else:
            error = RemoteError(failure["type"], failure["message"])
    else:
        error = exc
    error.__cause__ = remote_traceback
    return error


def _load_exception(pickled: bytes | None) -> BaseException | None:
    if pickled is None:
        return None
    try:
        exc = cloudpickle.loads(pickled)
    except Exception:
        # Typically an exception class whose constructor pickle cannot replay.
        return None
    return exc if isinstance(exc, BaseException) else None
