"""Waiting for many futures: results in input order, with a progress bar for long waits.

The bar (tqdm; a widget in notebooks) shows how many calls are done, failed and running.
It appears only where someone can see it (a terminal or a notebook) unless asked for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from typing import Any

from .futures import add_note

# Seconds between redraws of the bar at least: counting ten thousand futures is not free.
_BAR_INTERVAL = 0.1


def wanted(setting: str | bool | None) -> bool:
    """Resolve ``progress`` (on, off, auto, True, False, None=auto) for this process."""
    if isinstance(setting, bool):
        return setting
    if setting in ("on", "off"):
        return setting == "on"
    in_notebook = "ipykernel" in sys.modules
    return in_notebook or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def gather(
    futures: Sequence[Future],
    *,
    return_exceptions: bool,
    progress: bool,
    description: str,
    counts: Callable[[], dict[str, int]] | None = None,
    on_error: str = "",
) -> list[Any]:
    """Results in input order. Without ``return_exceptions``, the first failure in input
    order is raised as soon as every item before it has succeeded; ``on_error`` is added
    to its notes (say, how to fetch the other results)."""
    bar = _bar(len(futures), description) if progress else None
    try:
        next_index = 0
        shown = time.monotonic()
        while True:
            while next_index < len(futures) and futures[next_index].done():
                future = futures[next_index]
                if not return_exceptions and (future.cancelled() or future.exception()):
                    error = future.exception() if not future.cancelled() else None
                    if error is None:
                        future.result()  # raises CancelledError
                    add_note(error, f"(raised by item {next_index} of the map{on_error})")
                    raise error
                next_index += 1
            if next_index == len(futures):
                break
            # The next future in input order is the one that matters. Waiting on every
            # pending one takes a lock and installs a waiter per future at each wake-up:
            # with ten thousand calls ending together, that competes with the thread
            # settling them for tenths of a second.
            wait([futures[next_index]], timeout=0.5)
            if bar is not None and time.monotonic() - shown >= _BAR_INTERVAL:
                _update(bar, futures, counts)
                shown = time.monotonic()
    finally:
        if bar is not None:
            _update(bar, futures, counts)
            bar.close()
    return [_outcome(future) for future in futures]


def _outcome(future: Future) -> Any:
    if future.cancelled():
        from concurrent.futures import CancelledError

        return CancelledError()
    error = future.exception()
    return error if error is not None else future.result()


def _bar(total: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="call", leave=True, dynamic_ncols=True)


def _update(
    bar: Any, futures: Sequence[Future], counts: Callable[[], dict[str, int]] | None
) -> None:
    if counts is not None:
        numbers = counts()
    else:
        finished = [f for f in futures if f.done()]
        failed = sum(1 for f in finished if f.cancelled() or f.exception() is not None)
        numbers = {"done": len(finished) - failed, "failed": failed}
    bar.n = numbers.get("done", 0) + numbers.get("failed", 0)
    bar.set_postfix({k: v for k, v in numbers.items() if k != "pending"}, refresh=False)
    bar.refresh()
