"""How a job's tasks are cut into submissions, and what each submission's script is told.

A large map may be several job arrays (a scheduler caps an array's size); each is a
``ScriptContext`` naming the tasks it runs. Plain functions of the settings, shared by the
first submission (``staging``) and the job store's records of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..config import ClusterConfig
from ..resources import Resources
from ..schedulers import ScriptContext
from ..schedulers.base import ArraySpec
from .job import index_ranges


def plan_parts(
    tasks: int, largest: int, max_parallel_jobs: int, context: ScriptContext
) -> list[ScriptContext]:
    """Contexts of the submissions running tasks ``0 .. tasks-1``: arrays of at most
    ``largest`` elements (1: a job per task).

    When a map needs several arrays, they share ``max_parallel_jobs`` between them (at
    least one running task each), so splitting does not multiply the tasks running at once.
    """
    spans = [(start, min(largest, tasks - start)) for start in range(0, tasks, largest)]
    arrays = sum(1 for _, count in spans if count > 1)
    share = max(1, max_parallel_jobs // max(1, arrays))
    return [
        replace(context, array=ArraySpec(start, count, min(share, count)))
        if count > 1
        else replace(context, array=None, task=start)
        for start, count in spans
    ]


def part_fields(part: ScriptContext) -> dict[str, Any]:
    """The tasks one submission runs, as the job store records them."""
    if part.array is None:
        return {"offset": part.task, "count": 1, "is_array": False}
    return {"offset": part.array.offset, "count": part.array.count, "is_array": True}


def calls_per_task(calls: int, chunksize: int | None, config: ClusterConfig) -> int:
    """Calls each array task runs: ``chunksize``, or few enough tasks for max_parallel_jobs."""
    return chunksize or max(1, math.ceil(calls / config.max_parallel_jobs))


def resources_per_task(resources: Resources, per_task: int) -> Resources:
    """A task running ``per_task`` calls one after the other needs that many times the time."""
    if per_task > 1 and resources.time_seconds is not None:
        return replace(resources, time_seconds=resources.time_seconds * per_task)
    return resources


def script_context(
    config: ClusterConfig,
    job_name: str,
    job_dir: str,
    python_command: str,
    options: Mapping[str, Any],
    array: ArraySpec | None = None,
) -> ScriptContext:
    """What a job script needs from the configuration, besides the resources."""
    return ScriptContext(
        job_name=job_name,
        job_dir=job_dir,
        python_command=python_command,
        module_loads=config.module_loads,
        environment_variables=config.environment_variables,
        pre_execution_commands=config.pre_execution_commands,
        account=config.account,
        qos=config.qos,
        options=options,
        array=array,
    )


def index_text(indices: list[int]) -> str:
    """``0-3, 7`` for [0, 1, 2, 3, 7]."""
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in index_ranges(indices))
