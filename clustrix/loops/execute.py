"""Running a rewritten loop: probe in the caller, then in order or on worker processes.

Why a probe: whether parallel pays off depends on the time of one iteration, which only running
it tells. The first iterations run in the caller (they count as done); a watchdog thread launches
the workers as soon as the time already spent proves the loop is worth it, so a slow first
iteration overlaps with the others. Trivial loops are decided sequential after a few iterations and
finish with the original loop statement, at full speed.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from ..local.executor import _IN_WORKER_ENV, _process_context, available_cores, in_local_worker

__all__ = ["LoopRunner", "Plan"]

_POOLS: dict[int, ProcessPoolExecutor] = {}
_STARTUP: dict[int, float] = {}
_POOL_LOCK = threading.Lock()
_WORKER_CACHE: dict[str, Any] = {}
DISPATCH_COST = 0.002  # seconds per chunk round trip, a conservative default


def _init_worker() -> None:
    os.environ[_IN_WORKER_ENV] = "local"


def _pool(workers: int) -> ProcessPoolExecutor:
    with _POOL_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            start = time.perf_counter()
            pool = ProcessPoolExecutor(
                workers, mp_context=_process_context(), initializer=_init_worker
            )
            for future in [pool.submit(int) for _ in range(workers)]:
                future.result()
            _STARTUP[workers] = time.perf_counter() - start
            _POOLS[workers] = pool
        return pool


def _overhead(workers: int, chunks: int) -> float:
    startup = 0.0 if workers in _POOLS else _STARTUP.get(workers, 0.02 + 0.01 * workers)
    return startup + DISPATCH_COST * chunks / workers


def _run_chunk(payload: bytes, items: bytes) -> bytes | None:
    if _WORKER_CACHE.get("key") is not payload and _WORKER_CACHE.get("bytes") != payload:
        _WORKER_CACHE.update(bytes=payload, value=cloudpickle.loads(payload))
    chunk, ro = _WORKER_CACHE["value"]
    events, exc = chunk(cloudpickle.loads(items), ro)
    try:
        return cloudpickle.dumps((events, exc))
    except Exception:  # an unpicklable value: the caller re-runs this chunk itself
        return None


def _replay(events: list, exc: BaseException | None) -> Iterator[tuple[int, Any]]:
    yield from events
    if exc is not None:
        raise exc


class Plan:
    """What the rewritten function does next: replay ``head``, then ``rest`` or ``events()``."""

    def __init__(
        self,
        head: Iterable[tuple[int, Any]],
        rest: Iterable[Any] | None,
        chunks: list[tuple[Sequence[Any], Future | None]] | None = None,
        chunk: Callable[..., Any] | None = None,
        ro: tuple = (),
    ) -> None:
        self.head = head
        self.rest = rest
        self.parallel = chunks is not None
        self._chunks = chunks or []
        self._chunk = chunk
        self._ro = ro

    def events(self) -> Iterator[tuple[int, Any]]:
        """Every event in iteration order; the first failing iteration's exception is raised."""
        for position, (items, future) in enumerate(self._chunks):
            data = future.result() if future is not None else None
            if data is None:
                assert self._chunk is not None
                events, exc = self._chunk(items, self._ro)
            else:
                events, exc = cloudpickle.loads(data)
            if exc is not None:
                for _, later in self._chunks[position + 1 :]:
                    if later is not None:
                        later.cancel()
            yield from _replay(events, exc)


class LoopRunner:
    """Called by the rewritten function with the loop's iterable and its read-only values."""

    def __init__(
        self,
        chunk: Callable[..., Any],
        workers: int | None = None,
        threshold: float = 0.1,
        probe: float = 0.01,
    ) -> None:
        self.chunk = chunk
        self.wanted_workers = workers
        self.workers = 0  # set per call, where the loop runs
        self.threshold = threshold
        self.probe = probe
        self.last_decision = ""

    def _worth(self, remaining: int, per_item: float) -> bool:
        chunks = self._chunks_needed(remaining, per_item)
        saving = remaining * per_item * (1 - 1 / self.workers)
        return saving - _overhead(self.workers, chunks) > self.threshold

    def _chunk_size(self, remaining: int, per_item: float) -> int:
        target = max(0.01, min(0.25, remaining * per_item / (self.workers * 8)))
        size = max(1, round(target / max(per_item, 1e-9)))
        return min(size, max(1, math.ceil(remaining / self.workers)))

    def _chunks_needed(self, remaining: int, per_item: float) -> int:
        return math.ceil(remaining / self._chunk_size(remaining, per_item))

    def _launch(
        self, items: Sequence[Any], start: int, ro: tuple, per_item: float
    ) -> list[tuple[Sequence[Any], Future | None]] | None:
        try:
            payload = cloudpickle.dumps((self.chunk, ro))
            pool = _pool(self.workers)
            size = self._chunk_size(len(items) - start, per_item)
            chunks: list[tuple[Sequence[Any], Future | None]] = []
            for begin in range(start, len(items), size):
                part = items[begin : begin + size]
                chunks.append((part, pool.submit(_run_chunk, payload, cloudpickle.dumps(part))))
            return chunks
        except BrokenProcessPool:
            with _POOL_LOCK:
                _POOLS.pop(self.workers, None)
            return None
        except Exception:  # unpicklable read-only values or items: stay sequential
            return None

    def __call__(self, iterable: Iterable[Any], ro: tuple) -> Plan:
        items: Sequence[Any] = (
            iterable if isinstance(iterable, (range, list, tuple)) else list(iterable)
        )
        total = len(items)
        # Counted where the loop runs: a cluster job may have fewer cores than requested.
        self.workers = min(self.wanted_workers or available_cores(), available_cores())
        if self.workers < 2 or total < 2 or in_local_worker():
            self.last_decision = "sequential (one worker, fewer than 2 iterations, or nested)"
            return Plan((), items)
        # First iteration, with a watchdog that launches the rest if it is slow enough.
        launched: dict[str, Any] = {}
        finished = threading.Event()
        start = time.perf_counter()

        def watchdog() -> None:
            wait = 0.02
            while not finished.wait(wait):
                lower = time.perf_counter() - start
                if self._worth(total - 1, lower):
                    launched["chunks"] = self._launch(items, 1, ro, lower)
                    return
                wait *= 2

        thread = threading.Thread(target=watchdog, daemon=True)
        thread.start()
        events, exc = self.chunk(items[0:1], ro)
        finished.set()
        thread.join()
        done, elapsed = 1, time.perf_counter() - start
        head: list = list(events)
        if exc is not None or launched.get("chunks") is not None:
            self.last_decision = "parallel (launched during the first iteration)"
            return Plan(_replay(head, exc), None, launched.get("chunks"), self.chunk, ro)
        batch = 1
        while done < total:
            per_item = elapsed / done
            if not self._worth(total - done, per_item):
                self.last_decision = f"sequential (about {per_item:.2e} s per iteration)"
                rest = itertools.islice(items, done, None)
                return Plan(head, rest)
            if elapsed >= self.probe:
                chunks = self._launch(items, done, ro, per_item)
                if chunks is None:
                    self.last_decision = "sequential (values could not be sent to workers)"
                    return Plan(head, itertools.islice(items, done, None))
                self.last_decision = f"parallel ({len(chunks)} chunks)"
                return Plan(head, None, chunks, self.chunk, ro)
            batch = min(batch * 2, total - done)
            t0 = time.perf_counter()
            events, exc = self.chunk(items[done : done + batch], ro)
            elapsed += time.perf_counter() - t0
            done += batch
            head.extend(events)
            if exc is not None:
                return Plan(_replay(head, exc), None, [], self.chunk, ro)
        self.last_decision = "sequential (all iterations ran during the probe)"
        return Plan(head, None, [], self.chunk, ro)
