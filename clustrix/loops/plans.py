"""Plans: what the rewritten loop iterates at one run, sequential or over the workers.

:class:`Plan` is the sequential answer (and the base the others share: replaying an
iteration's output). :class:`ParallelPlan` runs the probe in the caller, launches the rest on the
workers when the cost model says it pays, and drains their results in order.
"""

from __future__ import annotations

import itertools
import sys
import time
import warnings
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import cloudpickle

from ..errors import WorkerCrashedError
from .checks import Reach, containers_ok, is_atom
from .costs import SHIP_COST, CostModel
from .launch import Launch, Probe
from .pools import forget_pool, watchdogs, worker_pool
from .worker import thread_state

if TYPE_CHECKING:
    from .execute import LoopRunner

__all__ = ["ParallelPlan", "Plan"]


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


class ParallelPlan(Plan):
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
        self.model = CostModel(workers, runner.threshold, runner.ship)
        self.state = "probe"
        self.done = 0
        self.first = 0.0
        self.elapsed = 0.0
        self.mark = 0.0
        self.probe: Probe | None = None
        self.launch: Launch | None = None
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
                self.probe = Probe()
                watchdogs().submit(self._watch, self.probe)
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

    def _watch(self, probe: Probe) -> None:
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

    def _launch(self, start: int, per_item: float, first_wave: int | None) -> Launch | None:
        """Check what the loop writes against what it reads, then send the first chunks."""
        runner = self.runner
        if not containers_ok(self.targets, runner.target_names, runner.containers):
            runner.last_decision = "sequential (an effect's target is not a builtin container)"
            return None
        mutable_targets = [t for t in self.targets if not is_atom(t)]
        if mutable_targets:
            written = Reach().add(mutable_targets)
            read = Reach().add([*self.ro, *self.leaves])
            if written.meets(read):
                runner.last_decision = (
                    "sequential (what the loop writes may be reachable from what it reads)"
                )
                return None
        elif Reach().add([*self.ro, *self.leaves]).opaque:
            runner.last_decision = "sequential (the loop reads an iterator or too much to check)"
            return None
        try:
            pool = worker_pool(self.workers)
            payload = cloudpickle.dumps(
                (runner.chunk, self.ro, thread_state(), runner.snapshot_values())
            )
        except BrokenProcessPool:
            runner.last_decision = "sequential (the worker processes are not available)"
            return None
        except Exception:  # unpicklable values: stay in order
            runner.last_decision = "sequential (values could not be sent to workers)"
            return None
        remaining = self.total - start
        size = self.model.chunk_size(remaining, per_item)
        launch = Launch(pool, self.workers, payload, self.it, size, 2 * self.workers)
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
                forget_pool(self.workers, self.launch.pool)
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
