"""Calls with a timeout: in a process of their own, which is stopped when time is up.

A pool's worker cannot be stopped without breaking the pool for every other call, so a call
with a timeout gets a process of its own. A thread cannot be stopped at all: its future only
fails when time is up.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import JobTimeoutError, WorkerCrashedError
from ..futures import ClusterFuture, settle
from ..payload import batch_outcomes, function_name
from .lifetime import start_from_spawner
from .pools import process_context
from .worker import child_main

WHERE = "a local worker process"


def timeout_error(name: str, timeout: float, consequence: str) -> JobTimeoutError:
    return JobTimeoutError(
        f"{name!r} did not finish within its timeout of {timeout:g} s; {consequence}",
        state="TIMEOUT",
        host=os.uname().nodename,
    )


def expire_after(future: ClusterFuture, timeout: float, consequence: str) -> None:
    """Fail ``future`` with a timeout error unless it finished within ``timeout`` seconds."""
    timer = threading.Timer(
        timeout,
        lambda: settle(future, False, timeout_error(future.name, timeout, consequence)),
    )
    timer.daemon = True
    timer.start()
    future.add_done_callback(lambda _: timer.cancel())


def submit_with_deadline(
    func: Callable[..., Any],
    function_bytes: bytes,
    calls_bytes: bytes,
    timeout: float,
    checkpoints: str | None = None,
) -> ClusterFuture:
    """Run one pickled call in a process of its own, stopped after ``timeout`` seconds.

    ``checkpoints`` is the call's checkpoint template (``runner.run_pickled_batch``), or None.
    """
    name = function_name(func)
    future = ClusterFuture(name, "local:process")
    context = process_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=child_main,
        args=(sender, function_bytes, calls_bytes, os.getpid(), checkpoints),
        daemon=True,
    )

    def watch() -> None:
        ready, data = _wait_for_outcome(process, receiver, timeout)
        if not future.cancelled():
            _settle_from_process(future, func, timeout, ready, data, process.exitcode)

    def cancel_job() -> bool:
        process.terminate()
        return True

    start_from_spawner(process.start)
    sender.close()
    future.bind_cancel(cancel_job)
    threading.Thread(target=watch, name=f"clustrix-deadline-{name}", daemon=True).start()
    return future


def _wait_for_outcome(process: Any, receiver: Any, timeout: float) -> tuple[bool, bytes | None]:
    """Whether the process ended or wrote within ``timeout``, and what it wrote; then stop it."""
    ready = False
    try:
        ready = receiver.poll(timeout)
        data = receiver.recv_bytes() if ready else None
    except EOFError:
        data = None
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        receiver.close()
    return ready, data


def _settle_from_process(
    future: ClusterFuture,
    func: Callable[..., Any],
    timeout: float,
    ready: bool,
    data: bytes | None,
    exit_code: int | None,
) -> None:
    if data is not None:
        (outcome,) = batch_outcomes(data, where=WHERE, func=func)
        settle(future, *outcome)
    elif not ready:
        settle(future, False, timeout_error(future.name, timeout, "its process was stopped"))
    else:
        settle(
            future,
            False,
            WorkerCrashedError(
                f"the process running {future.name!r} exited with code "
                f"{exit_code} before returning a result",
                state="CRASHED",
                exit_code=exit_code,
            ),
        )
