"""Running a rewritten loop: the original loop, or a probe in the caller then worker processes.

The rewritten function calls the loop's :class:`LoopRunner` with the iterable (or the parts of an
``enumerate``/``zip``/``reversed`` call), the values the body reads and the objects its effects
write. The runner answers with a :class:`Plan`:

* **sequential** (one core, a tiny or unknown iterable, a cost model that says it cannot pay, or
  types it cannot vouch for): the plan is empty and the function runs its *original* loop
  statement over the very object the plain function would iterate, in the caller's thread.
* **probe**: the first iterations run as the original body in the caller, timed. A watchdog
  launches the rest while a slow first iteration is still running; a trivial loop is handed
  back to the original loop statement after one or two iterations.
* **drain**: the remaining iterations run in chunks on the worker processes, a bounded window
  of chunks at a time. Each iteration's recorded values (and its output: prints, warnings) are
  replayed by the caller in order. If an iteration fails in a worker, or meets a value whose
  type was only assumed, the caller cancels what is left and runs the original loop from that
  iteration on: the exception (any ``BaseException``) is raised by the original code, with the
  partial state of a plain run.
"""

from __future__ import annotations

import builtins
import collections
import decimal
import fractions
import inspect
import io
import itertools
import math
import sys
import threading
import time
import types
import warnings
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
from . import purity

__all__ = ["LoopRunner", "Plan", "Source", "Unverified"]

_STARTUP: dict[int, float] = {}  # measured seconds to start a pool of n workers
_WARM: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
_POOL_LOCK = threading.Lock()
_WORKER_CACHE: dict[str, Any] = {}
DISPATCH_COST = 0.002  # seconds per chunk round trip, a conservative default
# seconds the caller spends per iteration that ran in a worker: pickling its item, unpickling
# and replaying its events; refined by what each parallel run measures
SHIP_COST = 4e-6
EVENT_COST = 3e-6
REACH_BUDGET = 2_000_000  # objects walked to prove that effects alias nothing the loop reads


_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


def _fast_switching(on: bool) -> None:
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


def _pool(workers: int) -> ProcessPoolExecutor:
    """The worker processes decorated calls use too, started in full before the first chunk."""
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
    pool = shared_executor(workers, "auto").started_pool()
    return pool is not None and (pool in _WARM or len(getattr(pool, "_processes", {})) >= workers)


def _forget_pool(workers: int, pool: ProcessPoolExecutor | None) -> None:
    if pool is not None:
        shared_executor(workers, "auto").discard_pool(pool)


# --------------------------------------------------------------------------- run-time checks


class Unverified(BaseException):
    """A value the analysis relied on the type of has another type: run this part in order."""


_IMMUTABLE: set[type] = {
    int,
    float,
    complex,
    bool,
    str,
    bytes,
    tuple,
    frozenset,
    type(None),
    range,
    decimal.Decimal,
    fractions.Fraction,
}
try:
    import numpy as _np

    _NP_GENERIC: type | None = _np.generic
    _NDARRAY: type | None = _np.ndarray
except ImportError:  # pragma: no cover
    _np = None  # type: ignore[assignment]
    _NP_GENERIC = _NDARRAY = None


def check_method(receiver: Any, name: str) -> Any:
    """``receiver.name`` if it is a vetted pure method of the receiver's type."""
    if purity.method_allowed(receiver, name):
        return getattr(receiver, name)
    raise Unverified(f"`.{name}()` on a {type(receiver).__name__}")


def check_immutable(value: Any) -> None:
    """Raise unless an in-place operator on ``value`` can only rebind the name."""
    kind = type(value)
    if kind in _IMMUTABLE or (_NP_GENERIC is not None and isinstance(value, _NP_GENERIC)):
        if kind is tuple and not all(type(v) in _IMMUTABLE for v in value):
            return  # `t += (x,)` builds a new tuple whatever the items are
        return
    raise Unverified(f"an in-place operator on a {kind.__name__}")


def _atom(value: Any) -> bool:
    kind = type(value)
    return (kind in _IMMUTABLE and kind is not tuple) or (
        _NP_GENERIC is not None and isinstance(value, _NP_GENERIC)
    )


class _Reach:
    """Mutable objects (and arrays) reachable from some values, within a budget."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.arrays: list[Any] = []
        self.left = REACH_BUDGET
        self.opaque = False  # an iterator, or too much to walk: nothing can be proven

    def add(self, roots: Iterable[Any]) -> _Reach:
        stack = list(roots)
        keep: list[Any] = []  # keep walked objects alive, so that their ids stay unique
        while stack and not self.opaque:
            value = stack.pop()
            if _atom(value):
                continue
            self.left -= 1
            if self.left < 0:
                self.opaque = True
                break
            key = id(value)
            if key in self.ids:
                continue
            self.ids.add(key)
            keep.append(value)
            kind = type(value)
            if _NDARRAY is not None and isinstance(value, _NDARRAY):
                self.arrays.append(value)
                if value.dtype == object:
                    stack.extend(value.ravel().tolist())
                continue
            if isinstance(value, dict):
                stack.extend(value.keys())
                stack.extend(value.values())
            elif isinstance(value, (list, tuple, set, frozenset, collections.deque)):
                stack.extend(value)
            elif kind in (type({}.keys()), type({}.values()), type({}.items())):
                stack.append(value.mapping)
            elif isinstance(value, (types.FunctionType, types.ModuleType, type)):
                continue
            elif hasattr(value, "__next__") or isinstance(value, types.GeneratorType):
                self.opaque = True
            elif hasattr(value, "__dict__"):
                stack.extend(vars(value).values())
        self._keep = keep
        return self

    def meets(self, other: _Reach) -> bool:
        if self.opaque or other.opaque or self.ids & other.ids:
            return True
        if self.arrays and other.arrays and _np is not None:
            return any(_np.may_share_memory(a, b) for a in self.arrays for b in other.arrays)
        return False


def _containers_ok(targets: Sequence[Any], names: Sequence[str], containers: set[str]) -> bool:
    for name, value in zip(names, targets, strict=False):
        if name in containers and not (
            type(value) in purity.OWNED_TYPES or (_NDARRAY is not None and type(value) is _NDARRAY)
        ):
            return False
    return True


# --------------------------------------------------------------------------- the iterable


class Source:
    """``enumerate``/``zip``/``reversed`` of parts, built only when the loop needs it."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def _iterables(self) -> list[Any]:
        return list(self.args) if self.fn is zip else list(self.args[:1])

    def build(self) -> Any:
        args = [a.build() if isinstance(a, Source) else a for a in self.args]
        return self.fn(*args, **self.kwargs)

    def leaves(self) -> list[Any]:
        out: list[Any] = []
        for part in self._iterables():
            out.extend(part.leaves() if isinstance(part, Source) else [part])
        return out

    def length(self) -> int:
        sizes = [p.length() if isinstance(p, Source) else len(p) for p in self._iterables()]
        return min(sizes) if sizes else 0


def _vouched(leaves: list[Any]) -> bool:
    return all(type(leaf) in purity.SEQUENCE_TYPES for leaf in leaves)


# --------------------------------------------------------------------------- the worker side


class _Output(io.TextIOBase):
    def __init__(self, events: list, sid: int) -> None:
        self.events, self.sid = events, sid

    def write(self, text: str) -> int:
        if self.events:
            self.events[-1].append((self.sid, text))
        return len(text)

    def writable(self) -> bool:
        return True


def _thread_state() -> dict[str, Any]:
    """The caller's per-thread settings an iteration may depend on, sent with its chunks."""
    state: dict[str, Any] = {
        "decimal": decimal.getcontext().copy(),
        "warnings": [
            (
                "always" if action in ("default", "module", "once") else action,
                getattr(message, "pattern", message) or "",
                category,
                getattr(module, "pattern", module) or "",
                lineno,
            )
            for action, message, category, module, lineno in warnings.filters
        ],
    }
    if "numpy" in sys.modules:
        state["numpy"] = sys.modules["numpy"].geterr()
    return state


def _run_chunk(payload: bytes, items: bytes) -> bytes:
    """In a worker: run a chunk, answer (events per iteration, failing position, why)."""
    if _WORKER_CACHE.get("bytes") != payload:  # the same loop's chunks reuse the unpickled body
        chunk, ro, state, snapshots = cloudpickle.loads(payload)
        for func, values in snapshots:
            func.__globals__.update(values)
        _WORKER_CACHE.update(bytes=payload, value=(chunk, ro, state))
    chunk, ro, state = _WORKER_CACHE["value"]
    out: list[list] = []
    failed: int | None = None
    why = ""
    saved = (sys.stdout, sys.stderr, decimal.getcontext())
    numpy_saved = None
    if "numpy" in state and "numpy" in sys.modules:
        numpy_saved = sys.modules["numpy"].seterr(**state["numpy"])
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, message, category, module, lineno in reversed(state["warnings"]):
            warnings.filterwarnings(action, message, category, module, lineno)

        def record(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
            if out:
                out[-1].append((-3, (message, category, filename, lineno)))

        warnings.showwarning = record
        sys.stdout, sys.stderr = _Output(out, -1), _Output(out, -2)
        decimal.setcontext(state["decimal"])
        try:
            chunk(cloudpickle.loads(items), ro, check_method, check_immutable, out)
        except BaseException as exc:
            failed = max(len(out) - 1, 0)
            why = "unverified" if isinstance(exc, Unverified) else "raised"
        finally:
            sys.stdout, sys.stderr = saved[0], saved[1]
            decimal.setcontext(saved[2])
            if numpy_saved is not None:
                sys.modules["numpy"].seterr(**numpy_saved)
    events = out if failed is None else out[:failed]
    try:
        return cloudpickle.dumps((events, failed, why))
    except Exception:  # an unpicklable value: the caller runs this chunk itself, in order
        return cloudpickle.dumps(([], 0, "unpicklable"))


# --------------------------------------------------------------------------- the caller side


@dataclass
class _CostModel:
    """Whether the rest of a loop pays on ``workers`` processes, and how to cut it in chunks."""

    workers: int
    threshold: float
    ship: float = SHIP_COST  # caller seconds per iteration sent to a worker and replayed

    def worth(self, remaining: int, per_item: float) -> bool:
        chunks = self.chunks_needed(remaining, per_item)
        saving = remaining * per_item * (1 - 1 / self.workers)
        cost = _overhead(self.workers, chunks) + remaining * self.ship
        return saving - cost > self.threshold

    def chunk_size(self, remaining: int, per_item: float) -> int:
        target = max(0.01, min(0.25, remaining * per_item / (self.workers * 8)))
        size = max(1, round(target / max(per_item, 1e-9)))
        return min(size, max(1, math.ceil(remaining / self.workers)))

    def chunks_needed(self, remaining: int, per_item: float) -> int:
        return math.ceil(remaining / self.chunk_size(remaining, per_item))


def _overhead(workers: int, chunks: int) -> float:
    startup = 0.0 if _pool_is_warm(workers) else _STARTUP.get(workers, 0.02 + 0.01 * workers)
    return startup + DISPATCH_COST * chunks / workers


_watchdog_pool: ThreadPoolExecutor | None = None


def _watchdogs() -> ThreadPoolExecutor:
    """Long-lived watchdog threads: starting a thread per loop costs more than a tiny loop."""
    global _watchdog_pool
    with _POOL_LOCK:
        if _watchdog_pool is None:
            _watchdog_pool = ThreadPoolExecutor(4, thread_name_prefix="clustrix-loop-probe")
        return _watchdog_pool


class _Launch:
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
                    _run_chunk, self.payload, cloudpickle.dumps(part)
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


class _Probe:
    """The first iteration's race between the caller finishing it and the watchdog launching."""

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
            _fast_switching(True)
            return True

    def launched(self, launch: _Launch | None) -> None:
        self._launch = launch
        self._ready.set()

    def finish(self, failed: bool = False) -> _Launch | None:
        with self._lock:
            if self.finished.is_set():
                return None
            self.finished.set()
            claimed = self._claimed
        if not claimed:
            return None
        _fast_switching(False)
        self._ready.wait()
        if self._launch is not None and failed:
            self._launch.cancel()
            return None
        return self._launch


class Plan:
    """What the rewritten loop does: iterate the plan (``(0, item)``: run the body here;
    ``(1, events)``: replay an iteration's events), then the original loop over ``rest``."""

    def __init__(self, rest: Iterable[Any] = ()) -> None:
        self.rest: Iterable[Any] = rest
        self.rebind = False
        self.last: Any = None
        self._done = True

    def __iter__(self) -> Plan:
        return self

    def __next__(self) -> tuple[int, Any]:
        raise StopIteration

    def output(self, sid: int, value: Any) -> None:
        """Replay an iteration's output: a write to stdout/stderr, or a warning."""
        if sid == -1:
            sys.stdout.write(value)
        elif sid == -2:
            sys.stderr.write(value)
        elif sid == -3:
            message, category, filename, lineno = value
            module = _module_for(filename)
            if module is None:
                warnings.warn_explicit(message, category, filename, lineno)
            else:
                warnings.warn_explicit(
                    message,
                    category,
                    filename,
                    lineno,
                    module=module.__name__,
                    registry=module.__dict__.setdefault("__warningregistry__", {}),
                    module_globals=module.__dict__,
                )

    def close(self) -> None:
        return None


_MODULES_BY_FILE: dict[str, Any] = {}


def _module_for(filename: str) -> Any:
    module = _MODULES_BY_FILE.get(filename)
    if module is not None and sys.modules.get(module.__name__) is module:
        return module
    for candidate in list(sys.modules.values()):
        if getattr(candidate, "__file__", None) == filename:
            _MODULES_BY_FILE[filename] = candidate
            return candidate
    return None


class _ParallelPlan(Plan):
    def __init__(
        self,
        runner: LoopRunner,
        obj: Any,
        total: int,
        leaves: list[Any],
        ro: tuple,
        targets: tuple,
        workers: int,
    ) -> None:
        super().__init__(())
        self.runner, self.total, self.leaves = runner, total, leaves
        self.ro, self.targets, self.workers = ro, targets, workers
        self.it = iter(obj)
        self.model = _CostModel(workers, runner.threshold, runner.ship)
        self.state = "probe"
        self.done = 0
        self.first = 0.0
        self.elapsed = 0.0
        self.mark = 0.0
        self.probe: _Probe | None = None
        self.launch: _Launch | None = None
        self.current: list | None = None
        self.position = 0
        self.replayed = 0
        self.replay_time = 0.0
        self.closed = False

    # ------------------------------------------------------------ probe

    def __next__(self) -> tuple[int, Any]:
        now = time.perf_counter()
        if self.state == "probe":
            return self._probe_step(now)
        if self.state == "drain":
            return self._drain_step(now)
        raise StopIteration

    def _probe_step(self, now: float) -> tuple[int, Any]:
        runner = self.runner
        if self.done == 0:
            item = next(self.it)  # total >= 2: there is one
            if runner.concurrent_probe:
                self.probe = _Probe()
                _watchdogs().submit(self._watch, self.probe)
            self.done = 1
            self.mark = time.perf_counter()
            return 0, item
        took = now - self.mark
        if self.done == 1:
            self.first = took
        self.elapsed += took
        if self.probe is not None:
            launch = self.probe.finish()
            self.probe = None
            if launch is not None:
                launch.fill()  # the caller's core is free again: send the held chunks
                self.launch = launch
                self.state = "drain"
                runner.last_decision = "parallel (launched during the first iteration)"
                return self._drain_step(time.perf_counter())
        per_item = (self.elapsed - self.first) / (self.done - 1) if self.done > 1 else took
        remaining = self.total - self.done
        runner.per_item = per_item
        if remaining <= 0:
            self.state = "done"
            runner.last_decision = "sequential (all iterations ran during the probe)"
            raise StopIteration
        if not self.model.worth(remaining, per_item):
            return self._sequential(f"sequential (about {per_item:.2e} s per iteration)")
        if self.elapsed >= runner.probe:
            launch = self._launch(self.done, per_item, first_wave=None)
            if launch is None:
                return self._sequential(self.runner.last_decision)
            self.launch = launch
            self.state = "drain"
            runner.last_decision = f"parallel (chunks of {launch.size})"
            return self._drain_step(time.perf_counter())
        item = next(self.it)
        self.done += 1
        self.mark = time.perf_counter()
        return 0, item

    def _sequential(self, why: str, items: Iterable[Any] = ()) -> tuple[int, Any]:
        self.runner.last_decision = why
        self.state = "done"
        self.rest = itertools.chain(items, self.it) if items else self.it
        raise StopIteration

    def _watch(self, probe: _Probe) -> None:
        """Launch the remaining iterations once the first has run long enough to pay."""
        wait = 0.02
        while not probe.finished.wait(wait):
            lower = time.perf_counter() - probe.start
            if self.model.worth(self.total - 1, lower):
                if probe.claim():
                    launch = None
                    try:
                        launch = self._launch(1, lower, first_wave=max(self.workers - 1, 1))
                    finally:  # the caller waits for this, whatever happens
                        probe.launched(launch)
                return
            wait *= 2

    def _launch(self, start: int, per_item: float, first_wave: int | None) -> _Launch | None:
        """Check what the loop writes against what it reads, then send the first chunks."""
        runner = self.runner
        if not _containers_ok(self.targets, runner.target_names, runner.containers):
            runner.last_decision = "sequential (an effect's target is not a builtin container)"
            return None
        mutable_targets = [t for t in self.targets if not _atom(t)]
        if mutable_targets:
            written = _Reach().add(mutable_targets)
            read = _Reach().add([*self.ro, *self.leaves])
            if written.meets(read):
                runner.last_decision = (
                    "sequential (what the loop writes may be reachable from what it reads)"
                )
                return None
        elif _Reach().add([*self.ro, *self.leaves]).opaque:
            runner.last_decision = "sequential (the loop reads an iterator or too much to check)"
            return None
        try:
            pool = _pool(self.workers)
            payload = cloudpickle.dumps(
                (runner.chunk, self.ro, _thread_state(), runner.snapshot_values())
            )
        except BrokenProcessPool:
            runner.last_decision = "sequential (the worker processes are not available)"
            return None
        except Exception:  # unpicklable values: stay in order
            runner.last_decision = "sequential (values could not be sent to workers)"
            return None
        remaining = self.total - start
        size = self.model.chunk_size(remaining, per_item)
        launch = _Launch(pool, self.workers, payload, self.it, size, 2 * self.workers)
        launch.fill(first_wave)
        return launch

    # ------------------------------------------------------------ drain

    def _drain_step(self, now: float) -> tuple[int, Any]:
        if self.current is not None and self.position > 0:
            self.replay_time += now - self.mark
        assert self.launch is not None
        while self.current is None or self.position >= len(self.current[1]):
            if self.current is not None and self.current[2] is not None:
                failed, why = self.current[2], self.current[3]
                if why == "unverified":
                    self.runner.unverified += 1
                left = self.current[0][failed:]
                self.current = None
                return self._sequential(
                    f"sequential from an iteration that {why} in a worker",
                    [*left, *self.launch.cancel()],
                )
            if not self.launch.chunks:
                self.launch.fill()
                if not self.launch.chunks:
                    self.state = "done"
                    raise StopIteration
            part, future = self.launch.chunks.popleft()
            try:
                data = future.result() if future is not None else None
            except BrokenProcessPool:
                self.launch.cancel()
                _forget_pool(self.workers, self.launch.pool)
                raise WorkerCrashedError(
                    f"a worker process died while running chunk {self.launch.sent} of a "
                    "parallel loop (os._exit, a crash in native code, or the out-of-memory "
                    "killer); the loop's results are lost, the caller is unaffected",
                    state="CRASHED",
                ) from None
            self.launch.fill()
            if data is None:
                events, failed, why = [], 0, "could not be sent"
            else:
                events, failed, why = cloudpickle.loads(data)
            self.current = [part, events, failed, why]
            self.position = 0
        part, events = self.current[0], self.current[1]
        self.last = part[self.position]
        self.rebind = True
        step = events[self.position]
        self.position += 1
        self.replayed += 1
        self.mark = time.perf_counter()
        return 1, step

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.probe is not None:
            self.probe.finish(failed=True)
            self.probe = None
        if self.launch is not None:
            self.launch.cancel()
        if self.replayed:
            per = self.replay_time / self.replayed
            self.runner.ship = max(SHIP_COST, per + SHIP_COST / 2)


class LoopRunner:
    """Called by the rewritten function at each run of one loop; answers with a :class:`Plan`.

    What a call decides lives in its plan; the runner keeps a memory of the measured costs
    (time per iteration, time to ship and replay one) for the next calls, and ``last_decision``
    for ``explain`` and tests.
    """

    def __init__(
        self,
        chunk: Callable[..., Any],
        workers: int | None = None,
        threshold: float = 0.1,
        probe: float = 0.01,
        info: Any = None,
    ) -> None:
        if info is None:
            from .transform import CHUNK_INFO

            info = CHUNK_INFO.get(chunk)
        self.chunk = chunk
        self.wanted_workers = workers
        self.threshold = threshold
        self.probe = probe
        self.last_decision = ""
        self.per_item: float | None = None
        self.ship = SHIP_COST + EVENT_COST * len(getattr(info, "effects", ()) or ())
        self.unverified = 0
        self.calls = 0
        self.target_names: tuple[str, ...] = tuple(
            sorted({e.name for e in getattr(info, "effects", ()) or ()})
        )
        self.containers = set(getattr(info, "container_targets", ()) or ())
        self.guards = list(getattr(info, "guards", ()) or ())
        self.snapshots = list(getattr(info, "snapshots", ()) or ())
        read_only = list(getattr(info, "read_only", ()) or ())
        self.method_guards = [
            (read_only.index(name), attr, fn)
            for name, attr, fn in getattr(info, "method_guards", ()) or ()
            if name in read_only
        ]
        # a probe iteration whose types are only checked in workers must finish before
        # anything is sent: it may change what the workers would read
        self.concurrent_probe = not getattr(info, "guarded", None)

    def combine(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Source:
        return Source(fn, args, kwargs)

    def snapshot_values(self) -> list[tuple[Any, dict[str, Any]]]:
        """Module state read by the functions the body calls, as the caller sees it now."""
        out = []
        for func, names in self.snapshots:
            g = func.__globals__
            values = {n: g[n] for n in names if n in g and not isinstance(g[n], types.ModuleType)}
            if values:
                out.append((func, values))
        return out

    def _globals_changed(self) -> bool:
        for namespace, name, obj in self.guards:
            current = namespace.get(name, _MISSING)
            if current is _MISSING:
                current = getattr(builtins, name, _MISSING)
            if current is not obj:
                return True
        return False

    def __call__(self, source: Any, ro: tuple = (), targets: tuple = ()) -> Plan:
        obj = source.build() if isinstance(source, Source) else source
        self.calls += 1
        workers = min(self.wanted_workers or available_cores(), available_cores())
        if workers < 2 or in_local_worker():
            self.last_decision = "sequential (one worker, or inside a worker)"
            return Plan(obj)
        leaves = source.leaves() if isinstance(source, Source) else [obj]
        if not _vouched(leaves):
            self.last_decision = "sequential (the iterable is not a list, tuple, range, ...)"
            return Plan(obj)
        total = source.length() if isinstance(source, Source) else len(obj)
        if total < 2:
            self.last_decision = "sequential (fewer than 2 iterations)"
            return Plan(obj)
        if self._globals_changed() or any(
            inspect.getattr_static(type(ro[i]), attr, None) is not fn
            for i, attr, fn in self.method_guards
        ):
            self.last_decision = "sequential (a name the analysis resolved is bound anew)"
            return Plan(obj)
        if self.unverified and self.calls % 16:
            self.last_decision = "sequential (types seen in an earlier call were not vouched for)"
            return Plan(obj)
        model = _CostModel(workers, self.threshold, self.ship)
        if self.per_item is not None and self.calls % 16 and not model.worth(total, self.per_item):
            self.last_decision = f"sequential (about {self.per_item:.2e} s per iteration)"
            return Plan(obj)
        return _ParallelPlan(self, obj, total, leaves, ro, targets, workers)


_MISSING = object()
