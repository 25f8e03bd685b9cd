"""What pooled calls travel as: the pickled function (once per function), the calls cut into
tasks, and the interpreter of the environment they need (built once per module set, exactly
as for a job: ``environment="auto"`` follows what the calls use)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..calls import CallArgs, CallSpec
from ..config import ClusterConfig
from ..environment import modules_named_in_pickle, plan_environment, prepare_local_modules
from ..payload import pickle_function
from ..remote.environments import Environments, python_command

# Calls per task at most, and tasks per worker a map is cut into.
MOST_PER_TASK = 1000
TASKS_PER_WORKER = 4


@dataclass
class Prepared:
    """A function as it travels: its pickle, an id for it, and the modules it uses."""

    func: Callable[..., Any]
    fid: str
    function_bytes: bytes
    modules: set[str]
    pythons: dict[frozenset[str], str] = field(default_factory=dict)


class Payloads:
    """Pickles functions once and finds the Python their calls need, for one pool."""

    def __init__(self, environments: Environments, work_dir: str, config: ClusterConfig) -> None:
        self.environments = environments
        self.work_dir = work_dir
        self.config = config
        self._prepared: dict[tuple[int, str], Prepared] = {}

    def prepare(self, func: Callable[..., Any], calls: Sequence[CallArgs]) -> Prepared:
        """The pickled function, made once per function; call inside
        ``pickling_for_remote_job()``, like the calls' own pickling."""
        key = (id(func), getattr(func, "__qualname__", ""))
        prepared = self._prepared.get(key)
        if prepared is None or prepared.func is not func:
            values = [v for args, kwargs in calls[:100] for v in (*args, *kwargs.values())]
            modules = prepare_local_modules(func, values)
            function_bytes = pickle_function(func)
            fid = hashlib.sha256(function_bytes).hexdigest()[:20]
            prepared = Prepared(func, fid, function_bytes, modules)
            self._prepared[key] = prepared
        return prepared

    def known(self, fid: str) -> Prepared | None:
        return next((p for p in self._prepared.values() if p.fid == fid), None)

    def python(self, prepared: Prepared, spec: CallSpec, payloads: list[bytes]) -> str:
        """The interpreter command (quoted for the shell) of the environment the calls need."""
        named = modules_named_in_pickle(prepared.function_bytes).union(
            *(modules_named_in_pickle(p) for p in payloads[:3])
        )
        key = frozenset(named)
        python = prepared.pythons.get(key)
        if python is None:
            plan = plan_environment(
                prepared.func,
                spec.environment,
                python_executable=self.config.python_executable,
                conda_env_name=self.config.conda_env_name,
                payload_modules=named,
                modules=prepared.modules,
            )
            report = self.environments.ensure(plan, self.work_dir, self.config)
            python = prepared.pythons[key] = python_command(plan, report)
        return python


def calls_per_task(count: int, spec: CallSpec, workers: int) -> int:
    """How many calls travel together: a few tasks per worker, so that they share a map
    evenly; one, for calls with a ``timeout`` (their process is stopped when time is up).

    Walltime does not limit it: a worker checks each call's ``time`` before starting it,
    and hands back the calls it has no time left for.
    """
    if spec.timeout is not None:
        return 1
    if spec.chunksize:
        return spec.chunksize
    return max(1, min(MOST_PER_TASK, math.ceil(count / (workers * TASKS_PER_WORKER))))


def needed_seconds(spec: CallSpec) -> int | None:
    """The walltime one call asked for itself (a default from the settings does not count)."""
    return spec.resources.time_seconds if "time" in spec.requested else None
