"""The result cache on the local backend: hits, misses, what the key covers, the folder, the CLI."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import clustrix
from clustrix import cluster
from clustrix.cache import CacheDir
from clustrix.cli import main


def _runs(log: str) -> int:
    return len(Path(log).read_text().splitlines()) if os.path.exists(log) else 0


def _record(log: str, line: str) -> None:
    with open(log, "a") as stream:
        stream.write(line + "\n")


@cluster(cache=True)
def square(x, log):
    _record(log, repr(x))
    return x * x


@cluster(cache=True)
def total(array, log):
    _record(log, "total")
    return float(np.asarray(array).sum())


@cluster(cache=True)
def fails(x, log):
    _record(log, "fails")
    raise ValueError(f"bad {x}")


@cluster(cache=True, executor="inline")
def keywords(a, b=2, **options):
    return (a, b, sorted(options.items()))


@cluster
def plain(x, log):
    _record(log, "plain")
    return x + 1


@pytest.fixture
def log(tmp_path: Path) -> str:
    return str(tmp_path / "runs.log")


def _entries() -> list:
    return CacheDir(clustrix.get_config().cache_dir).entries()


def test_a_second_identical_call_returns_the_stored_value_without_running(log):
    assert square(3, log) == 9
    assert square(3, log) == 9
    assert _runs(log) == 1
    assert square(4, log) == 16  # other arguments: a miss
    assert _runs(log) == 2
    assert len(_entries()) == 2


def test_submit_of_a_stored_call_is_a_finished_future(log):
    assert square(5, log) == 25
    future = square.submit(5, log)
    assert future.done() and future.result() == 25 and future.backend == "cache"
    assert _runs(log) == 1


def test_a_map_runs_only_the_calls_not_stored(log):
    assert square.map(range(6), [log] * 6) == [x * x for x in range(6)]
    assert _runs(log) == 6
    assert square.map(range(10), [log] * 10) == [x * x for x in range(10)]
    assert _runs(log) == 10  # the 6 stored calls were not run again
    futures = square.submit_map(range(12), [log] * 12)
    assert [f.result() for f in futures] == [x * x for x in range(12)]
    assert [f.backend for f in futures[:10]] == ["cache"] * 10
    assert _runs(log) == 12


def test_executor_map_uses_the_cache_too(log):
    with clustrix.Executor(cache=True) as executor:
        assert list(executor.map(square.__wrapped__, range(4), [log] * 4)) == [0, 1, 4, 9]
        assert list(executor.map(square.__wrapped__, range(5), [log] * 5)) == [0, 1, 4, 9, 16]
    assert _runs(log) == 5


def test_numpy_arrays_count_by_content(log):
    assert total(np.arange(1000), log) == 499500.0
    assert total(np.arange(1000).copy(), log) == 499500.0  # another array, the same content
    assert _runs(log) == 1
    changed = np.arange(1000)
    changed[500] = 0
    assert total(changed, log) == 499000.0
    assert _runs(log) == 2


def test_exceptions_are_not_stored(log):
    for _ in range(2):
        with pytest.raises(ValueError, match="bad 1"):
            fails(1, log)
    assert _runs(log) == 2
    assert fails.map([1, 2], [log] * 2, return_exceptions=True)[0].args == ("bad 1",)
    assert _runs(log) == 4
    assert _entries() == []


def test_keyword_order_and_defaults_do_not_count():
    assert keywords(1, x=1, y=2) == keywords(1, y=2, x=1) == keywords(a=1, b=2, y=2, x=1)
    assert len(_entries()) == 1
    keywords(1, b=3)
    assert len(_entries()) == 2


def test_the_cache_setting_turns_it_on_for_every_function(log):
    assert plain(1, log) == plain(1, log) == 2
    assert _runs(log) == 2  # off by default
    clustrix.configure(cache=True)
    assert plain(1, log) == plain(1, log) == 2
    assert _runs(log) == 3


def test_a_future_argument_is_never_cached():
    future = clustrix.Executor().submit(int, "7")
    future.result()
    assert keywords(future) == (future, 2, [])
    assert _entries() == []


_MODULE = """
from clustrix import cluster

def helper(x):
    return x + {step}

@cluster(cache=True, executor="inline")
def compute(x):
    return helper(x) * 2
"""

_MODULE_REFORMATTED = '''
"""The same code, commented and laid out differently."""
from clustrix import cluster


def helper(x):
    # one step up
    return (
        x + {step}
    )  # unchanged behaviour


@cluster(cache=True, executor="inline")
def compute(x):

    return helper(x) * 2  # twice
'''


def _load(folder: Path, source: str) -> object:
    """Import ``source`` as module ``cachedmod`` afresh, from a file of its own."""
    folder.mkdir()
    path = folder / "cachedmod.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location("cachedmod", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cachedmod"] = module  # the user's own module, as an import makes it
    spec.loader.exec_module(module)
    return module


def test_editing_a_called_helper_invalidates_and_editing_comments_does_not(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "cachedmod", raising=False)
    first = _load(tmp_path / "v1", _MODULE.format(step=1))
    assert first.compute(3) == 8
    assert len(_entries()) == 1
    reformatted = _load(tmp_path / "v2", _MODULE_REFORMATTED.format(step=1))
    assert reformatted.compute(3) == 8
    assert len(_entries()) == 1  # a hit: comments and layout do not count
    edited = _load(tmp_path / "v3", _MODULE.format(step=2))
    assert edited.compute(3) == 10  # the helper changed: not the stored 8
    assert len(_entries()) == 2


def test_the_folder_is_private_and_files_are_written_whole(log, tmp_path):
    folder = tmp_path / "private" / "cache"
    clustrix.configure(cache_dir=str(folder))
    old = os.umask(0)
    try:
        square(2, log)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pkl"  # no temporary file left behind
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_a_damaged_entry_is_a_miss(log):
    square(6, log)
    (entry,) = _entries()
    entry.path.write_bytes(b"clustrix-cache 1\n{}\nnot a pickle")
    assert square(6, log) == 36
    assert _runs(log) == 2


def test_cli_lists_and_clears_the_cache(log):
    runner = CliRunner()
    assert "no cached values" in runner.invoke(main, ["cache", "list"]).output
    square.map(range(3), [log] * 3)
    listed = runner.invoke(main, ["cache", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("test_cache.square") == 3
    assert "total: 3 value(s)" in listed.output
    old = _entries()[0].path
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    cleared = runner.invoke(main, ["cache", "clear", "--older-than", "7d"])
    assert "removed 1 cached value(s)" in cleared.output
    assert not old.exists() and len(_entries()) == 2
    assert runner.invoke(main, ["cache", "clear", "--older-than", "soon"]).exit_code != 0
    assert "removed 2 cached value(s)" in runner.invoke(main, ["cache", "clear"]).output
    assert _entries() == []


def test_another_version_of_a_package_the_call_uses_is_a_miss(log, monkeypatch):
    assert total(np.ones(3), log) == 3.0
    assert total(np.ones(3), log) == 3.0
    assert _runs(log) == 1
    version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.0.1" if name == "numpy" else version(name),
    )
    assert total(np.ones(3), log) == 3.0
    assert _runs(log) == 2


def test_a_hook_added_after_the_value_was_set_runs_at_once():
    # A short call may succeed before its submission has registered the cache's hook.
    from clustrix.futures import ClusterFuture

    seen = []
    done = ClusterFuture("f", "local")
    done.set_result(3)
    done.before_result(seen.append)
    failed = ClusterFuture("f", "local")
    failed.set_exception(ValueError("no"))
    failed.before_result(seen.append)
    pending = ClusterFuture("f", "local")
    pending.before_result(seen.append)
    pending.set_result(4)
    assert seen == [3, 4]
