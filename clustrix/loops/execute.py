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
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import cloudpickle

from ..errors import WorkerCrashedError
from ..local import shared_executor
from ..local.executor import available_cores, in_local_worker

__all__ = ["LoopRunner", "Plan"]

_STARTUP: dict[int, float] = {}  # measured seconds to start a pool of n workers
_WARM: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
_POOL_LOCK = threading.Lock()
_WORKER_CACHE: dict[str, Any] = {}
DISPATCH_COST = 0.002  # seconds per chunk round trip, a conservative default


_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


def _fast_switching(on: bool) -> None:
    """Shorten the interpreter's thread switch interval while workers start next to a probe.

    The workers are launched by a watchdog thread while the caller's thread runs a CPU-bound
    first iteration. Both, and the pool's own feeder thread, need the GIL, which a busy thread
    hands over only every switch interval (5 ms by default); pickling, submitting and feeding
    the chunks takes dozens of hand-overs, so the workers would start a tenth of a second late.
    The previous interval is restored when the caller's first iteration ends.
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


def _pool(workers: int) -> ProcessPoolExecutor:
    """The worker processes decorated calls use too, started in full before the first chunk.

    Sharing them means a loop after a few ordinary calls finds its workers already running.
    """
    pool = shared_executor(workers, "auto").worker_pool()
    with _POOL_LOCK:
        if pool not in _WARM:
            start = time.perf_counter()
            for future in [pool.submit(int) for _ in range(workers)]:
                future.result()
            _STARTUP[workers] = time.perf_counter() - start
            _WARM.add(pool)
    return pool


def _pool_is_warm(workers: int) -> bool:
    """Whether the shared pool's workers are already running (their start is paid for)."""
    pool = shared_executor(workers, "auto").started_pool()
    return pool is not None and (pool in _WARM or len(getattr(pool, "_processes", {})) >= workers)


def _forget_pool(workers: int, pool: ProcessPoolExecutor | None) -> None:
    if pool is not None:
        shared_executor(workers, "auto").discard_pool(pool)


def _overhead(workers: int, chunks: int) -> float:
    startup = 0.0 if _pool_is_warm(workers) else _STARTUP.get(workers, 0.02 + 0.01 * workers)
    return startup + DISPATCH_COST * chunks / workers


def _run_chunk(payload: bytes, items: bytes) -> bytes | None:
    if _WORKER_CACHE.get("bytes") != payload:  # the same loop's chunks reuse the unpickled body
        _WORKER_CACHE.update(bytes=payload, value=cloudpickle.loads(payload))
    chunk, ro = _WORKER_CACHE["value"]
    events, exc = chunk(cloudpickle.loads(items), ro)
    try:
        return cloudpickle.dumps((events, exc))
    except Exception:  # an unpicklable value: the caller re-runs this chunk itself
        return None


@dataclass
class _Launch:
    """Chunks sent to ``pool``; ``release`` sends the ones held back while the caller probes."""

    chunks: list[tuple[Sequence[Any], Future | None]]
    release: Callable[[], None]
    pool: ProcessPoolExecutor
    workers: int

    def cancel_from(self, position: int) -> None:
        """Cancel the chunks from ``position`` on that have not started."""
        for _, future in self.chunks[position:]:
            if future is not None:
                future.cancel()


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
        launch: _Launch | None = None,
        chunk: Callable[..., Any] | None = None,
        ro: tuple = (),
    ) -> None:
        self.head = head
        self.rest = rest
        self._launch = launch
        self._chunks = launch.chunks if launch is not None else []
        self._chunk = chunk
        self._ro = ro

    def events(self) -> Iterator[tuple[int, Any]]:
        """Every event in iteration order; the first failing iteration's exception is raised."""
        for position, (items, future) in enumerate(self._chunks):
            try:
                data = future.result() if future is not None else None
            except BrokenProcessPool:
                assert self._launch is not None
                self._launch.cancel_from(position + 1)
                raise self._crashed(position) from None
            if data is None:
                assert self._chunk is not None
                events, exc = self._chunk(items, self._ro)
            else:
                events, exc = cloudpickle.loads(data)
            if exc is not None and self._launch is not None:
                self._launch.cancel_from(position + 1)
            yield from _replay(events, exc)

    def _crashed(self, position: int) -> WorkerCrashedError:
        """A worker died in a chunk: as in sequential code, nothing after it can be trusted."""
        assert self._launch is not None
        _forget_pool(self._launch.workers, self._launch.pool)
        return WorkerCrashedError(
            f"a worker process died while running chunk {position + 1} of "
            f"{len(self._chunks)} of a parallel loop (os._exit, a crash in native code, or the "
            "out-of-memory killer); the loop's results are lost, the caller is unaffected",
            state="CRASHED",
        )


class _Probe:
    """The first iteration's race between the caller finishing it and the watchdog launching.

    Exactly one side wins: either the watchdog claims the launch before the caller finishes
    (the caller then waits for the chunks), or the caller finishes first and nothing launches.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._claimed = False
        self._launch: _Launch | None = None
        self._ready = threading.Event()

    def claim(self) -> bool:
        with self._lock:
            if self.finished.is_set():
                return False
            self._claimed = True
            _fast_switching(True)  # until the caller's first iteration ends (finish)
            return True

    def launched(self, launch: _Launch | None) -> None:
        self._launch = launch
        self._ready.set()

    def finish(self, failed: bool = False) -> _Launch | None:
        """Called by the caller after the first iteration: the launch, if there was one.

        The chunks held back start now, unless the first iteration ``failed``: then the
        launched ones are cancelled, since sequential code would not have run them.
        """
        with self._lock:
            self.finished.set()
            claimed = self._claimed
        if not claimed:
            return None
        _fast_switching(False)
        self._ready.wait()
        if self._launch is None:
            return None
        if failed:
            self._launch.cancel_from(0)
        else:
            self._launch.release()  # the caller's core is free again: start the held chunks
        return self._launch


_watchdog_pool: ThreadPoolExecutor | None = None


def _watchdogs() -> ThreadPoolExecutor:
    """Long-lived watchdog threads: starting a thread per loop costs more than a tiny loop."""
    global _watchdog_pool
    with _POOL_LOCK:
        if _watchdog_pool is None:
            _watchdog_pool = ThreadPoolExecutor(4, thread_name_prefix="clustrix-loop-probe")
        return _watchdog_pool


@dataclass(frozen=True)
class _CostModel:
    """Whether the rest of a loop pays on ``workers`` processes, and how to cut it in chunks."""

    workers: int
    threshold: float

    def worth(self, remaining: int, per_item: float) -> bool:
        chunks = self.chunks_needed(remaining, per_item)
        saving = remaining * per_item * (1 - 1 / self.workers)
        return saving - _overhead(self.workers, chunks) > self.threshold

    def chunk_size(self, remaining: int, per_item: float) -> int:
        target = max(0.01, min(0.25, remaining * per_item / (self.workers * 8)))
        size = max(1, round(target / max(per_item, 1e-9)))
        return min(size, max(1, math.ceil(remaining / self.workers)))

    def chunks_needed(self, remaining: int, per_item: float) -> int:
        return math.ceil(remaining / self.chunk_size(remaining, per_item))


class LoopRunner:
    """Called by the rewritten function with the loop's iterable and its read-only values.

    One runner serves every call of the function, from any thread: what a call decides lives
    in that call, except ``last_decision``, kept for ``explain`` and tests.
    """

    def __init__(
        self,
        chunk: Callable[..., Any],
        workers: int | None = None,
        threshold: float = 0.1,
        probe: float = 0.01,
    ) -> None:
        self.chunk = chunk
        self.wanted_workers = workers
        self.threshold = threshold
        self.probe = probe
        self.last_decision = ""

    def _launch(
        self,
        model: _CostModel,
        items: Sequence[Any],
        start: int,
        ro: tuple,
        per_item: float,
        first_wave: int = 0,
    ) -> _Launch | None:
        """Chunks of ``items[start:]`` sent to the workers; ``None`` if they cannot be sent.

        With ``first_wave``, only that many chunks start now and the others wait for the
        release: while the caller still runs its first iteration, a worker per remaining core
        is all the machine can run at full speed.
        """
        pool = None
        try:
            payload = cloudpickle.dumps((self.chunk, ro))
            pool = _pool(model.workers)
            size = model.chunk_size(len(items) - start, per_item)
            parts = [items[begin : begin + size] for begin in range(start, len(items), size)]
            chunks: list[tuple[Sequence[Any], Future | None]] = [
                (part, pool.submit(_run_chunk, payload, cloudpickle.dumps(part)))
                for part in parts[: first_wave or len(parts)]
            ]
        except BrokenProcessPool:
            _forget_pool(model.workers, pool)
            return None
        except Exception:  # unpicklable read-only values or items: stay sequential
            return None
        held = parts[len(chunks) :]

        def release() -> None:
            for part in held:
                try:
                    future: Future | None = pool.submit(
                        _run_chunk, payload, cloudpickle.dumps(part)
                    )
                except Exception:  # a broken pool: the caller runs this chunk itself
                    future = None
                chunks.append((part, future))

        return _Launch(chunks, release, pool, model.workers)

    def _watch(self, model: _CostModel, probe: _Probe, items: Sequence[Any], ro: tuple) -> None:
        """Launch the remaining iterations once the first has run long enough to pay."""
        wait = 0.02
        while not probe.finished.wait(wait):
            lower = time.perf_counter() - probe.start
            if model.worth(len(items) - 1, lower):
                if probe.claim():
                    launch = None
                    try:
                        launch = self._launch(
                            model, items, 1, ro, lower, first_wave=model.workers - 1
                        )
                    finally:  # the caller waits for this, whatever happens
                        probe.launched(launch)
                return
            wait *= 2

    def __call__(self, iterable: Iterable[Any], ro: tuple) -> Plan:
        items: Sequence[Any] = (
            iterable if isinstance(iterable, (range, list, tuple)) else list(iterable)
        )
        total = len(items)
        # Counted where the loop runs: a cluster job may have fewer cores than requested.
        workers = min(self.wanted_workers or available_cores(), available_cores())
        if workers < 2 or total < 2 or in_local_worker():
            self.last_decision = "sequential (one worker, fewer than 2 iterations, or nested)"
            return Plan((), items)
        # First iteration, with a watchdog that launches the rest if it is slow enough.
        probe = _Probe()
        model = _CostModel(workers, self.threshold)
        _watchdogs().submit(self._watch, model, probe, items, ro)
        start = probe.start = time.perf_counter()
        events, exc = self.chunk(items[0:1], ro)
        elapsed = time.perf_counter() - start
        launch = probe.finish(failed=exc is not None)
        done = 1
        head: list = list(events)
        if exc is not None:
            return Plan(_replay(head, exc), None)
        if launch is not None:
            self.last_decision = "parallel (launched during the first iteration)"
            return Plan(head, None, launch, self.chunk, ro)
        batch, per_item = 1, elapsed
        while done < total:
            if not model.worth(total - done, per_item):
                self.last_decision = f"sequential (about {per_item:.2e} s per iteration)"
                rest = itertools.islice(items, done, None)
                return Plan(head, rest)
            if elapsed >= self.probe:
                launch = self._launch(model, items, done, ro, per_item)
                if launch is None:
                    self.last_decision = "sequential (values could not be sent to workers)"
                    return Plan(head, itertools.islice(items, done, None))
                self.last_decision = f"parallel ({len(launch.chunks)} chunks)"
                return Plan(head, None, launch, self.chunk, ro)
            batch = min(batch * 2, total - done)
            t0 = time.perf_counter()
            events, exc = self.chunk(items[done : done + batch], ro)
            took = time.perf_counter() - t0
            # The latest batch's rate: the first iteration also paid for cold caches.
            per_item, elapsed, done = took / batch, elapsed + took, done + batch
            head.extend(events)
            if exc is not None:
                return Plan(_replay(head, exc), None)
        self.last_decision = "sequential (all iterations ran during the probe)"
        return Plan(head, None)
