"""joblib.Parallel work, and a scikit-learn grid search, on the test cluster's SLURM.

The first run builds the jobs' Python environment on the cluster (scikit-learn, scipy, numpy
and joblib pinned to this machine's versions, installed with pip), which takes a minute or
two; later runs reuse it.
"""

from __future__ import annotations

import time
import warnings

import joblib
import pytest
from joblib import Parallel, delayed

import clustrix

from .conftest import output_of, wait_for

pytestmark = pytest.mark.timeout(1200)


class TaskError(LookupError):
    pass


def fail_first_or_sleep(i: int) -> int:
    if i == 0:
        raise TaskError("the first call fails")
    time.sleep(300)
    return i


def _joblib_jobs() -> list[clustrix.Job]:
    return [job for job in clustrix.jobs() if job.record.function == "BatchedCalls.__call__"]


def test_grid_search_on_slurm_equals_the_local_search(on_slurm):
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}
    reference = GridSearchCV(SVC(), grid, cv=3).fit(X, y)

    with (
        warnings.catch_warnings(),
        joblib.parallel_backend("clustrix", memory="500MB", time="00:10:00"),
    ):
        # scikit-learn sends the caller's warning filters along with each batch; pytest's
        # include one naming a pytest class, and pytest is not in the jobs' environment.
        warnings.filters[:] = [f for f in warnings.filters if "pytest" not in f[2].__module__]
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=2).fit(X, y)

    assert search.best_params_ == reference.best_params_
    assert search.best_score_ == reference.best_score_
    assert list(search.cv_results_["mean_test_score"]) == list(
        reference.cv_results_["mean_test_score"]
    )
    ran = _joblib_jobs()
    assert ran, "no joblib batch went through SLURM"
    assert all(job.record.cluster_type == "slurm" for job in ran)


def test_a_failure_cancels_the_other_jobs(on_slurm):
    started = time.monotonic()
    with (
        joblib.parallel_backend("clustrix", time="00:10:00"),
        pytest.raises(TaskError, match="the first call fails"),
    ):
        Parallel(n_jobs=4, batch_size=1)(delayed(fail_first_or_sleep)(i) for i in range(8))
    assert time.monotonic() - started < 120

    # The other calls sleep for 5 minutes: gone from the queue within a minute means cancelled.
    transport = on_slurm.transport()
    squeue = "squeue -h -u $USER -n clustrix-joblib -o %i"
    assert wait_for(lambda: output_of(transport, squeue) == "", 60, 0.5), output_of(
        transport, squeue
    )
    ids = ",".join(i for job in _joblib_jobs() for i in job.record.scheduler_ids)
    sacct = f"sacct -n -P -X -o State -j {ids}"
    assert wait_for(lambda: "CANCELLED" in output_of(transport, sacct), 30, 0.5), output_of(
        transport, sacct
    )
