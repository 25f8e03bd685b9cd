"""Holding Ctrl-C back while the scheduler's answer to a submission is being recorded."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts_held() -> Iterator[list[int]]:
    """Hold back SIGINT (Ctrl-C, a notebook's interrupt) for the block; the list tells if one
    came. Only where it would raise KeyboardInterrupt: the main thread, default handler."""
    received: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield received
        return
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
