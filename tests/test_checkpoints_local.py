"""Checkpoints of calls on the local backend: each call has a place that stays the same
across its retries, removed once the call has succeeded, for every kind of local worker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cloudpickle
import pytest

import clustrix
from clustrix import LocalExecutor, cluster
from clustrix.checkpointing import current_place
from clustrix.local import checkpoints


class Interrupted(Exception):
    """Stands for a crash where crashing the worker would take the test down (threads)."""


def resume_after_crash(n):
    state = clustrix.restore()
    if state is None:
        clustrix.checkpoint({"done": n * 10})
        os._exit(1)  # the first attempt dies with its worker process
    return state["done"] + 1


def resume_after_error(n):
    state = clustrix.restore()
    if state is None:
        clustrix.checkpoint({"done": n * 10})
        raise Interrupted(f"attempt 1 of {n}")
    return state["done"] + 1


def checkpoint_and_return(n):
    clustrix.checkpoint({"n": n})
    assert clustrix.restore() == {"n": n}
    return current_place()


def place_and_restore(n):
    clustrix.checkpoint({"n": n})
    return current_place(), clustrix.restore("nothing")


def checkpoint_and_fail(n):
    clustrix.checkpoint({"n": n})
    raise ValueError(f"item {n} fails")


# (executor, extra @cluster arguments): how each kind of local worker is asked for.
KINDS = {
    "processes": ("processes", {}),
    "own process": ("processes", {"timeout": 60}),
    "threads": ("threads", {"retry_on": Interrupted}),
    "inline": ("inline", {"retry_on": Interrupted}),
}


def _left(wait: float = 5.0) -> list[str]:
    """The files under the local checkpoint folder, and its empty folders, once they are gone
    or ``wait`` seconds have passed (a submission's folder goes once its futures are done,
    at the next submission or when the process exits: ``tidy`` stands for those)."""
    root = Path(checkpoints.root_folder())
    deadline = time.monotonic() + wait
    while True:
        checkpoints.tidy()
        left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
        left += sorted(p.name for p in root.glob("*") if p.is_dir() and not any(p.iterdir()))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def local():
    clustrix.configure(cluster_type="local")


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_retried_call_resumes_from_the_checkpoint_of_the_attempt_that_crashed(kind):
    executor, extra = KINDS[kind]
    body = resume_after_crash if executor == "processes" else resume_after_error
    flaky = cluster(executor=executor, retries=1, **extra)(body)
    future = flaky.submit(4)
    assert future.result(timeout=60) == 41
    assert future.attempts == 2
    # A crash fails the calls running beside it in the pool too: each may need three runs.
    flaky = cluster(executor=executor, retries=3, **extra)(body)
    assert flaky.map([1, 2, 3]) == [11, 21, 31]
    assert _left() == [], "the checkpoints of calls that succeeded are removed"


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_call_that_succeeded_leaves_no_checkpoint_behind(kind):
    executor, extra = KINDS[kind]
    plain = cluster(executor=executor, **{k: v for k, v in extra.items() if k == "timeout"})
    saving = plain(checkpoint_and_return)
    places = saving.map(range(6))
    assert len(set(places)) == 6 and all(place for place in places)
    assert Path(saving(7)).name == "0-0.pkl"
    assert _left() == []


def test_places_live_in_a_folder_per_submission_under_the_clustrix_folder():
    saving = cluster(executor="processes")(checkpoint_and_return)
    first, second = saving.map(range(2)), saving.map(range(2))
    root = Path(checkpoints.root_folder())
    assert root == Path.home() / ".clustrix" / "checkpoints"
    folders = {Path(place).parent for place in first + second}
    assert len(folders) == 2 and {folder.parent for folder in folders} == {root}
    # A submission of futures: its folder, made by a call that checkpointed, goes once its
    # calls have ended and the next submission starts.
    place = Path(cluster(executor="processes", retries=1)(checkpoint_and_return).submit(1).result())
    deadline = time.monotonic() + 10
    while place.parent.exists() and time.monotonic() < deadline:
        cluster(executor="inline")(len)("a next submission")
    assert not place.parent.exists()


def test_a_call_that_failed_keeps_its_checkpoint():
    failing = cluster(executor="processes")(checkpoint_and_fail)
    outcomes = failing.map([1, 2], return_exceptions=True)
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    kept = [name for name in _left(wait=0) if name.endswith(".pkl")]
    assert len(kept) == 2
    root = Path(checkpoints.root_folder())
    states = sorted(cloudpickle.loads((root / name).read_bytes())["n"] for name in kept)
    assert states == [1, 2]


def test_a_bare_local_executor_gives_calls_no_place():
    for kind in ("processes", "threads", "inline"):
        with LocalExecutor(max_workers=2, kind=kind) as executor:
            assert executor.map(place_and_restore, range(3)) == [(None, "nothing")] * 3
            future = executor.submit(place_and_restore, 1)
            assert future.result(timeout=60) == (None, "nothing")
    assert _left() == []


def test_a_nested_decorated_call_has_no_place_of_its_own():
    @cluster(executor="inline")
    def inner():
        clustrix.checkpoint("inner")  # no place: must not overwrite the outer call's
        return current_place()

    @cluster(executor="inline", retries=1, retry_on=Interrupted)
    def outer():
        state = clustrix.restore()
        if state is None:
            clustrix.checkpoint("outer")
            assert inner() is None
            raise Interrupted("first attempt")
        return state

    assert outer() == "outer"


def test_each_call_of_a_chunk_of_executor_map_has_its_own_place():
    with clustrix.Executor(executor="processes") as executor:
        places = list(executor.map(checkpoint_and_return, range(6), chunksize=3))
    assert len(set(places)) == 6
    assert _left() == []


def test_old_checkpoint_folders_are_pruned():
    root = Path(checkpoints.root_folder())
    old, recent = root / "old", root / "recent"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "0-0.pkl").write_bytes(b"state")
    past = time.time() - checkpoints.KEEP_SECONDS - 60
    os.utime(old, (past, past))
    assert checkpoints.prune(str(root)) == [str(old)]
    assert not old.exists() and recent.exists()
