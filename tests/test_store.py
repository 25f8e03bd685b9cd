"""The job store on its own: records, queries, and many concurrent writers."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from clustrix.store import JobRecord, JobStore


def record(job_id: str, **overrides) -> JobRecord:
    values = dict(
        job_id=job_id,
        function="f",
        cluster_type="slurm",
        host="u@h:22",
        remote_folder=f"/home/u/clustrix/{job_id}",
        state="PENDING",
        items=1,
        task_sizes=[1],
        connection={"cluster_type": "slurm", "cluster_host": "h"},
    )
    values.update(overrides)
    return JobRecord(**values)


def test_add_get_update_and_private_file(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    store.add(record("a1"))
    store.add_submission("a1", {"scheduler_id": "42", "offset": 0, "count": 1, "is_array": False})
    store.update("a1", state="COMPLETED", finished=123.0)
    got = store.get("a1")
    assert got.state == "COMPLETED" and got.finished == 123.0
    assert got.scheduler_ids == ["42"]
    assert got.connection == {"cluster_type": "slurm", "cluster_host": "h"}
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert store.get("nope") is None


def test_list_filters_by_state_and_age_newest_first(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    now = time.time()
    store.add(record("old", created=now - 10 * 86400, state="COMPLETED"))
    store.add(record("new", created=now, state="RUNNING"))
    assert [r.job_id for r in store.list()] == ["new", "old"]
    assert [r.job_id for r in store.list(states=["COMPLETED"])] == ["old"]
    assert [r.job_id for r in store.list(older_than=7 * 86400)] == ["old"]
    assert [r.job_id for r in store.find("ne")] == ["new"]
    store.delete(["old"])
    assert [r.job_id for r in store.list()] == ["new"]


def _write_many(path: str, prefix: str, count: int) -> None:
    store = JobStore(path)
    for i in range(count):
        store.add(record(f"{prefix}-{i}"))
        store.add_submission(
            f"{prefix}-{i}", {"scheduler_id": str(i), "offset": 0, "count": 1, "is_array": False}
        )
        store.update(f"{prefix}-{i}", state="RUNNING")


def test_concurrent_threads_and_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "jobs.db")
    threads = [threading.Thread(target=_write_many, args=(path, f"t{n}", 25)) for n in range(4)]
    processes = [
        multiprocessing.get_context("spawn").Process(target=_write_many, args=(path, f"p{n}", 25))
        for n in range(3)
    ]
    for worker in [*threads, *processes]:
        worker.start()
    for worker in [*threads, *processes]:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes)
    records = JobStore(path).list()
    assert len(records) == 7 * 25
    assert all(r.state == "RUNNING" and len(r.submissions) == 1 for r in records)


def test_concurrent_submissions_to_one_job_are_all_kept(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    store.add(record("array"))

    def add(i):
        store.add_submission(
            "array", {"scheduler_id": str(i), "offset": i, "count": 1, "is_array": False}
        )

    threads = [threading.Thread(target=add, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(i) for i in store.get("array").scheduler_ids) == list(range(30))


def test_get_job_names_a_missing_or_ambiguous_id(tmp_path):
    import clustrix

    path = tmp_path / "jobs.db"
    store = JobStore(path)
    store.add(record("20260101-aaa"))
    store.add(record("20260101-aab"))
    with pytest.raises(clustrix.JobNotFoundError, match="no job 'zzz'"):
        clustrix.get_job("zzz", job_store=path)
    with pytest.raises(clustrix.JobNotFoundError, match="matches 2 jobs"):
        clustrix.get_job("20260101-aa", job_store=path)
    assert clustrix.get_job("20260101-aab", job_store=path).job_id == "20260101-aab"
    assert clustrix.get_job("20260101-aaa", job_store=path).function == "f"


def test_many_threads_creating_the_store_together(tmp_path):
    """The first use of a new store switches it to WAL, which SQLite refuses at once while
    another connection is opening it: nobody may fail with "database is locked"."""
    for round_ in range(40):  # the race is narrow: it showed in about 1 round in 30
        path = str(tmp_path / f"new-{round_}.db")
        barrier = threading.Barrier(20)
        errors: list[BaseException] = []

        def use(n: int, path: str = path, barrier=barrier, errors: list = errors) -> None:
            barrier.wait()
            try:
                JobStore(path).add(record(f"t{n}"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=use, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, f"round {round_}: {errors[0]!r}"
        assert len(JobStore(path).list()) == 20
