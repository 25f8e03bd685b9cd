"""Launches: the chunks of a loop on the workers, a window at a time, and the probe's race.

A :class:`Launch` keeps a bounded window of chunks in flight, topped up as the caller replays
them. A :class:`Probe` settles the race between the caller finishing its first iteration and
the watchdog launching the rest meanwhile (with a shorter thread switch interval while both run).
"""

from __future__ import annotations

import collections
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import cloudpickle

from .worker import run_chunk

__all__ = ["Launch", "Probe", "fast_switching"]


_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


def fast_switching(on: bool) -> None:
    """Shorten the interpreter's thread switch interval while workers start next to a probe.

    The workers are launched by a watchdog thread while the caller's thread runs a CPU-bound
    first iteration. Both, and the pool's own feeder thread, need the GIL, which a busy thread
    hands over only every switch interval (5 ms by default). The previous interval is restored
    when the caller's first iteration ends, or the loop ends in any way.
    """
    global _switch_users, _switch_saved
    with _switch_lock:
        if on:
            if _switch_users == 0:
                _switch_saved = sys.getswitchinterval()
                sys.setswitchinterval(min(_switch_saved, 0.0002))
            _switch_users += 1
        else:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


class Launch:
    """Chunks on the workers: a window of futures, topped up as the caller consumes them."""

    def __init__(
        self,
        pool: ProcessPoolExecutor,
        workers: int,
        payload: bytes,
        it: Iterator[Any],
        size: int,
        window: int,
    ) -> None:
        self.pool, self.workers, self.payload = pool, workers, payload
        self.it, self.size, self.window = it, size, window
        self.chunks: collections.deque[tuple[list, Future | None]] = collections.deque()
        self.exhausted = False
        self.sent = 0
        self.cancelled = False

    def fill(self, limit: int | None = None) -> None:
        limit = self.window if limit is None else limit
        while not self.exhausted and not self.cancelled and len(self.chunks) < limit:
            part = list(itertools.islice(self.it, self.size))
            if not part:
                self.exhausted = True
                break
            try:
                future: Future | None = self.pool.submit(
                    run_chunk, self.payload, cloudpickle.dumps(part)
                )
            except Exception:  # a broken pool or unpicklable items: the caller runs it
                future = None
            self.chunks.append((part, future))
            self.sent += 1

    def cancel(self) -> list[Any]:
        """Cancel every chunk not yet consumed; their items, in order."""
        self.cancelled = True
        items: list[Any] = []
        for part, future in self.chunks:
            if future is not None:
                future.cancel()
            items.extend(part)
        self.chunks.clear()
        return items


class Probe:
    """The first iteration's race between the caller finishing it and the watchdog launching."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._claimed = False
        self._launch: Launch | None = None
        self._ready = threading.Event()

    def claim(self) -> bool:
        with self._lock:
            if self.finished.is_set():
                return False
            self._claimed = True
            fast_switching(True)
            return True

    def launched(self, launch: Launch | None) -> None:
        self._launch = launch
        self._ready.set()

    def finish(self, failed: bool = False) -> Launch | None:
        with self._lock:
            if self.finished.is_set():
                return None
            self.finished.set()
            claimed = self._claimed
        if not claimed:
            return None
        fast_switching(False)
        self._ready.wait()
        if self._launch is not None and failed:
            self._launch.cancel()
            return None
        return self._launch
