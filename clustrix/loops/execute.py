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

The pieces: :mod:`.plans` (the plans), :mod:`.launch` (chunks in flight and the probe's race),
:mod:`.worker` (what a worker process runs), :mod:`.costs` (the cost model), :mod:`.pools` (the
processes and threads), :mod:`.checks` (run-time checks) and :mod:`.iterables` (the iterable).
"""

from __future__ import annotations

import builtins
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any

from ..local.executor import available_cores, in_local_worker
from .checks import Unverified
from .checks import check_immutable as check_immutable
from .checks import check_method as check_method
from .costs import EVENT_COST, SHIP_COST, CostModel
from .iterables import Source, vouched
from .plans import ParallelPlan, Plan

__all__ = ["LoopRunner", "Plan", "Source", "Unverified"]


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

    def __getstate__(self) -> dict[str, Any]:
        # A function whose loops run in a cluster job travels with its runner. The guards
        # hold module namespaces, which must not travel whole (a module's globals may hold
        # anything, open files included): each goes as its module's name, found again
        # where the job runs if that module is importable there.
        state = dict(self.__dict__)
        state["guards"] = [
            (namespace.get("__name__"), name, obj) for namespace, name, obj in self.guards
        ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        guards = []
        for module_name, name, obj in state["guards"]:
            module = sys.modules.get(module_name) if module_name else None
            if module is not None:
                guards.append((vars(module), name, obj))
            # else: the module travelled by value; no one can bind its names anew there
        self.__dict__.update(state, guards=guards)

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
        if not vouched(leaves):
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
        model = CostModel(workers, self.threshold, self.ship)
        if self.per_item is not None and self.calls % 16 and not model.worth(total, self.per_item):
            self.last_decision = f"sequential (about {self.per_item:.2e} s per iteration)"
            return Plan(obj)
        return ParallelPlan(self, obj, total, leaves, ro, targets, workers)


_MISSING = object()
