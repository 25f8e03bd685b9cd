"""``clustrix.checkpoint``, ``restore`` and ``on_requeue`` themselves, and how a call's place
is set (``call_place``, ``call_places``) by whatever runs it."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

import clustrix
from clustrix import checkpointing, runner
from clustrix.checkpointing import (
    CHECKPOINT_ENV,
    call_place,
    call_places,
    current_place,
    remove_saved,
    remove_succeeded,
    run_requeue_callbacks,
    saved_info,
)


def test_outside_a_call_checkpoint_does_nothing_and_restore_returns_the_default(tmp_path):
    assert current_place() is None
    clustrix.checkpoint({"step": 3})
    assert clustrix.restore() is None
    assert clustrix.restore({"step": 0}) == {"step": 0}
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "home", tmp_path / "work"]
    callback = clustrix.on_requeue(lambda: None)
    assert callable(callback) and run_requeue_callbacks() == []


def test_a_checkpoint_is_restored_with_its_size_and_time(tmp_path):
    place = tmp_path / "c.pkl"
    before = time.time()
    with call_place(place):
        assert clustrix.restore("nothing yet") == "nothing yet"
        clustrix.checkpoint({"step": 1})
        clustrix.checkpoint({"step": 2})  # the last one wins
        assert clustrix.restore() == {"step": 2}
    assert cloudpickle.loads(place.read_bytes()) == {"step": 2}
    info = saved_info(str(place))
    assert info == json.loads(Path(f"{place}.json").read_text())
    assert info["size"] == place.stat().st_size
    assert before <= info["saved"] <= time.time()
    assert stat.S_IMODE(place.stat().st_mode) == 0o600
    assert saved_info(str(tmp_path / "other.pkl")) is None


def test_a_checkpoint_replaces_the_last_atomically(tmp_path, monkeypatch):
    place = tmp_path / "c.pkl"
    renames = []
    real_replace = os.replace

    def spying(source, target):
        renames.append((Path(source).parent, Path(target)))
        return real_replace(source, target)

    monkeypatch.setattr(checkpointing.os, "replace", spying)
    with call_place(place):
        clustrix.checkpoint("first")
        assert renames == [(tmp_path, place), (tmp_path, Path(f"{place}.json"))]

        def interrupted(source, target):
            raise KeyboardInterrupt  # the job stopped between writing and renaming

        monkeypatch.setattr(checkpointing.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            clustrix.checkpoint("second")
        monkeypatch.setattr(checkpointing.os, "replace", real_replace)
        assert clustrix.restore() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pkl", "c.pkl.json", "home", "work"]


def test_a_state_that_does_not_pickle_raises_and_keeps_the_last_checkpoint(tmp_path):
    with call_place(tmp_path / "c.pkl"):
        clustrix.checkpoint(1)
        with pytest.raises(TypeError):
            clustrix.checkpoint(threading.Lock())
        assert clustrix.restore() == 1


def test_the_folder_of_a_place_is_made_private_when_a_call_first_checkpoints(tmp_path):
    place = tmp_path / "a" / "b" / "c.pkl"
    with call_place(place):
        assert not (tmp_path / "a").exists(), "naming a place makes nothing"
        clustrix.checkpoint("state")
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert place.exists()


def test_requeue_callbacks_run_in_order_and_a_failing_one_does_not_stop_the_others(tmp_path):
    ran = []
    with call_place(tmp_path / "c.pkl"):
        clustrix.on_requeue(lambda: ran.append("first"))

        @clustrix.on_requeue
        def failing():
            ran.append("failing")
            raise RuntimeError("disk full")

        clustrix.on_requeue(lambda: ran.append("last"))
        errors = run_requeue_callbacks()
        assert ran == ["first", "failing", "last"]
        assert [type(e) for e in errors] == [RuntimeError] and str(errors[0]) == "disk full"
        assert callable(failing)
    # Forgotten when the call ended, even by a later call at the same place.
    with call_place(tmp_path / "c.pkl"):
        assert run_requeue_callbacks() == []
    assert ran == ["first", "failing", "last"]


def test_each_call_of_a_batch_has_its_own_callbacks(tmp_path):
    ran = []
    with call_places(str(tmp_path / "{position}.pkl")) as places:
        for position in places.each(range(3)):
            clustrix.on_requeue(lambda position=position: ran.append(position))
            assert run_requeue_callbacks() == []
    assert ran == [0, 1, 2]


def test_the_environment_holds_the_place_once_a_call_uses_it(tmp_path):
    place = str(tmp_path / "c.pkl")
    assert CHECKPOINT_ENV not in os.environ
    with call_place(place):
        assert CHECKPOINT_ENV not in os.environ, "naming a place costs no environment change"
        clustrix.restore()
        assert os.environ[CHECKPOINT_ENV] == place
        seen = []
        # A thread the call starts (without copying its context) finds the place there.
        thread = threading.Thread(target=lambda: seen.append(current_place()))
        thread.start()
        thread.join()
        assert seen == [place]
    assert CHECKPOINT_ENV not in os.environ


def test_a_call_in_another_thread_leaves_the_environment_alone(tmp_path):
    seen = []

    def call(name):
        with call_place(tmp_path / name):
            clustrix.checkpoint(name)
            seen.append((current_place(), os.environ.get(CHECKPOINT_ENV)))

    threads = [threading.Thread(target=call, args=(f"{n}.pkl",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == [(str(tmp_path / f"{n}.pkl"), None) for n in range(4)]


def test_no_place_hides_the_place_of_an_enclosing_call(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "from-env.pkl"))
    assert current_place() == str(tmp_path / "from-env.pkl")
    with call_place(tmp_path / "outer.pkl"):
        clustrix.checkpoint("outer")
        with call_place(None):  # a nested call run without checkpoints
            assert current_place() is None
            clustrix.checkpoint("inner")
            assert clustrix.restore("none") == "none"
        assert clustrix.restore() == "outer"
    assert os.environ[CHECKPOINT_ENV] == str(tmp_path / "from-env.pkl")
    assert not (tmp_path / "from-env.pkl").exists()


def test_places_of_a_batch_are_named_by_position_when_asked_for(tmp_path):
    template = str(tmp_path / "{{odd}}-{position}.pkl")
    seen = []
    with call_places(template) as places:
        for item in places.each(["a", "b", "c"]):
            seen.append(current_place())
            if item != "b":
                clustrix.checkpoint(item)
    assert seen == [str(tmp_path / f"{{odd}}-{n}.pkl") for n in range(3)]
    assert current_place() is None
    remove_succeeded(template, [True, True, False])
    assert sorted(p.name for p in tmp_path.glob("*.pkl")) == ["{odd}-2.pkl"]


def test_only_checkpoints_this_process_saved_or_restored_are_removed(tmp_path):
    saved, restored, foreign = (str(tmp_path / f"{n}.pkl") for n in ("s", "r", "f"))
    Path(restored).write_bytes(cloudpickle.dumps("earlier attempt"))
    Path(foreign).write_bytes(cloudpickle.dumps("not ours"))
    with call_place(saved):
        clustrix.checkpoint("mine")
    with call_place(restored):
        assert clustrix.restore() == "earlier attempt"
    assert remove_saved(saved) and remove_saved(restored)
    assert not remove_saved(foreign) and not remove_saved(saved)
    assert [p.name for p in tmp_path.glob("*.pkl*")] == ["f.pkl"]


def test_the_runner_gives_each_call_its_place_and_removes_those_that_succeeded(tmp_path):
    def step(n):
        state = clustrix.restore({"n": n, "seen": 0})
        clustrix.checkpoint({**state, "seen": state["seen"] + 1})
        if n == 1:
            raise ValueError("fails after checkpointing")
        return current_place()

    template = str(tmp_path / "checkpoint-0-{position}.pkl")
    batch = runner.run_calls(step, [((n,), {}) for n in range(3)], checkpoints=template)
    assert [ok for ok, _ in batch["outcomes"]] == [True, False, True]
    assert batch["outcomes"][2][1] == str(tmp_path / "checkpoint-0-2.pkl")
    remove_succeeded(template, (ok for ok, _ in batch["outcomes"]))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-0-1.pkl",
        "checkpoint-0-1.pkl.json",
    ]
    # Without a template the calls have no place.
    batch = runner.run_calls(lambda: current_place(), [((), {})])
    assert batch["outcomes"] == [(True, None)]
