"""The "clustrix" joblib backend on the local default backend (worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import joblib
import pytest
from joblib import Parallel, delayed

import clustrix
from clustrix import ConfigError, RemoteTraceback
from clustrix.joblib_backend import ClustrixBackend

ROOT = Path(__file__).resolve().parent.parent


class TaskError(LookupError):
    """A user exception type that must come back as itself."""


def square(i: int) -> int:
    return i * i


def pid_of(_: int) -> int:
    return os.getpid()


def fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise TaskError(f"item {i} is bad")
    return i


def fail_first_or_sleep(i: int, folder: str) -> int:
    if i == 0:
        time.sleep(0.3)
        raise TaskError("the first call fails")
    Path(folder, f"started-{i}").touch()
    time.sleep(2.0)
    return i


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_import_clustrix_does_not_import_joblib_and_registers_when_joblib_arrives():
    code = (
        "import sys, clustrix\n"
        "assert 'joblib' not in sys.modules, 'import clustrix imported joblib'\n"
        "import joblib\n"
        "from joblib.parallel import BACKENDS\n"
        "assert 'clustrix' in BACKENDS, sorted(BACKENDS)\n"
        "with joblib.parallel_backend('clustrix', n_jobs=2):\n"
        "    print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(5)))\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 1, 2, 3, 4]"


def test_registered_when_joblib_was_imported_first():
    code = (
        "import joblib, clustrix\n"
        "from joblib.parallel import BACKENDS\n"
        "assert 'clustrix' in BACKENDS, sorted(BACKENDS)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr


def test_clustrix_imports_without_joblib():
    code = (
        "import sys\n"
        "sys.modules['joblib'] = None  # as if joblib were not installed\n"
        "import clustrix\n"
        "try:\n"
        "    clustrix.register_joblib()\n"
        "except ImportError:\n"
        "    print('no joblib')\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no joblib"


def test_parallel_equals_serial_and_runs_in_worker_processes():
    expected = [square(i) for i in range(50)]
    with joblib.parallel_backend("clustrix"):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(50)) == expected
        pids = Parallel(n_jobs=2, batch_size=1)(delayed(pid_of)(i) for i in range(8))
    assert os.getpid() not in pids


def test_backend_name_passed_to_parallel_directly():
    result = Parallel(n_jobs=2, backend="clustrix")(delayed(square)(i) for i in range(10))
    assert result == [square(i) for i in range(10)]


def test_generator_output():
    with joblib.parallel_backend("clustrix", n_jobs=2):
        results = Parallel(return_as="generator")(delayed(square)(i) for i in range(20))
        assert list(results) == [square(i) for i in range(20)]


def test_exception_comes_back_as_its_own_type_with_the_worker_traceback():
    with (
        joblib.parallel_backend("clustrix", n_jobs=2),
        pytest.raises(TaskError, match="item 7 is bad") as caught,
    ):
        Parallel()(delayed(fail_on)(i, 7) for i in range(30))
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "fail_on" in str(caught.value.__cause__)


def test_abort_cancels_batches_not_yet_running(tmp_path):
    started = time.monotonic()
    with joblib.parallel_backend("clustrix", n_jobs=2), pytest.raises(TaskError):
        Parallel(batch_size=1, pre_dispatch="all")(
            delayed(fail_first_or_sleep)(i, str(tmp_path)) for i in range(30)
        )
    elapsed = time.monotonic() - started
    # 29 calls of 2 s on 2 workers would take about 30 s; the failure ends the run at once.
    assert elapsed < 5, elapsed
    time.sleep(3)  # any call not cancelled would have started by now
    ran = sorted(p.name for p in tmp_path.glob("started-*"))
    # n_jobs=2: the call running beside the failing one, and perhaps one started in the
    # failing call's slot just before the failure arrived; the other 27 never start.
    assert len(ran) <= 2, ran


def test_abort_everything_cancels_queued_futures():
    backend = ClustrixBackend()
    backend.configure(n_jobs=2)
    futures = [backend.submit(delayed_batch(time.sleep, 1)) for _ in range(6)]
    backend.abort_everything(ensure_ready=True)
    assert all(f.cancelled() for f in futures)
    # The backend stays usable after an abort.
    again = backend.submit(delayed_batch(square, 4))
    assert again.result(timeout=60) == [16]


def delayed_batch(func, *args):
    from joblib._parallel_backends import SequentialBackend
    from joblib.parallel import BatchedCalls

    return BatchedCalls([(func, args, {})], (SequentialBackend(nesting_level=1), None))


def test_n_jobs_minus_one_means_local_cores_or_max_parallel_jobs():
    from clustrix.local import available_cores

    with joblib.parallel_backend("clustrix"):
        assert joblib.effective_n_jobs(-1) == min(available_cores(), 100)
        assert joblib.effective_n_jobs(3) == 3
    clustrix.configure(cluster_type="slurm", cluster_host="login.invalid", max_parallel_jobs=7)
    with joblib.parallel_backend("clustrix"):
        assert joblib.effective_n_jobs(-1) == 7
        assert joblib.effective_n_jobs(-2) == 6


def test_options_are_validated_when_the_backend_is_chosen():
    with (
        pytest.raises(ConfigError, match="memory"),
        joblib.parallel_backend("clustrix", memory="a lot"),
    ):
        pass
    with pytest.raises(ConfigError, match="batch_size"):
        ClustrixBackend(batch_size=0)
    assert ClustrixBackend(batch_size=5).compute_batch_size() == 5


@clustrix.cluster
def parallel_inside_a_call(n: int) -> list[int]:
    with joblib.parallel_backend("clustrix", n_jobs=2):
        return Parallel()(delayed(square)(i) for i in range(n))


def test_nested_parallel_inside_a_clustrix_call_runs_there():
    assert parallel_inside_a_call(6) == [square(i) for i in range(6)]


def test_scikit_learn_grid_search_matches_the_default_backend():
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}
    reference = GridSearchCV(SVC(), grid, cv=3).fit(X, y)
    with joblib.parallel_backend("clustrix"):
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=2).fit(X, y)
    assert search.best_params_ == reference.best_params_
    assert search.best_score_ == reference.best_score_
    assert list(search.cv_results_["mean_test_score"]) == list(
        reference.cv_results_["mean_test_score"]
    )
