"""Many calls on SLURM: Clustrix's map (one job array, over SSH) against submitit's map_array.

    bash scripts/testcluster.sh up
    pip install -e ".[bench]"
    python bench/slurm_map.py [--calls 200] [--tiny 10000] [--tiny-only]

Run as root on the test-cluster machine: submitit submits with the local `sbatch` (no SSH
hop); Clustrix goes through the SSH login as a laptop would, and packs several calls into each
array task. Both ask for the same memory and time per task. Prints wall times and the ratio.
Then times a map of ``--tiny`` trivial calls against one single-call job, in the same run:
array tasks that finish their short calls take those of tasks not yet started, so the large
map should cost about as much as a couple of jobs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import submitit
from testcluster import configure_slurm, remove_remote_folder

import clustrix


def trivial(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--tiny", type=int, default=10_000, help="calls in the large map")
    parser.add_argument("--tiny-only", action="store_true", help="skip the submitit part")
    args = parser.parse_args()
    configure_slurm(job_store=f"{tempfile.mkdtemp()}/jobs.db", progress="off")
    remote_trivial = clustrix.cluster(trivial, time="00:05:00", memory="200MB")
    remote_trivial(0)  # warm: connection open, environment built
    if not args.tiny_only:
        against_submitit(remote_trivial, args.calls)

    # Alternated, medians of 3: a scheduler's cycle makes single runs of either vary.
    one_job, tiny = [], []
    for _ in range(3):
        one_job.append(one_call_seconds(remote_trivial))
        tiny.append(map_seconds(remote_trivial, args.tiny))
    print(f"{args.tiny} trivial calls as one map (submitit not run: one process per call)")
    print(f"  clustrix map over SSH         {statistics.median(tiny):7.2f} s  (median of 3)")
    print(f"  one single-call job           {statistics.median(one_job):7.2f} s  (median of 3)")
    ratio = statistics.median(tiny) / statistics.median(one_job)
    print(f"  ratio map / one job: {ratio:.2f}  (target <= 2)")
    remove_remote_folder()


def against_submitit(remote_trivial: Callable[[int], int], calls: int) -> None:
    """Time a map of ``calls`` trivial calls, Clustrix's against submitit's map_array."""
    items = list(range(calls))
    expected = [trivial(x) for x in items]
    started = time.perf_counter()
    assert remote_trivial.map(items) == expected
    ours = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="submitit-bench-", dir="/var/tmp") as folder:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
        executor.update_parameters(time=5, mem="200M", cpus_per_task=1, array_parallelism=100)
        executor.submit(trivial, 0).result()  # warm
        started = time.perf_counter()
        jobs = executor.map_array(trivial, items)
        assert [job.result() for job in jobs] == expected
        theirs = time.perf_counter() - started

    print(f"{calls} trivial calls as one job array")
    print(f"  clustrix map over SSH         {ours:7.2f} s")
    print(f"  submitit map_array (local)    {theirs:7.2f} s")
    print(f"  ratio clustrix / submitit: {ours / theirs:.2f}  (target <= 0.5)\n")


def map_seconds(remote_trivial: Callable[[int], int], calls: int) -> float:
    """Wall time of a map of ``calls`` trivial calls, until every value is back (seconds)."""
    items = list(range(calls))
    started = time.perf_counter()
    assert remote_trivial.map(items) == [trivial(x) for x in items]
    return time.perf_counter() - started


def one_call_seconds(remote_trivial: Callable[[int], int]) -> float:
    """Wall time of one call submitted as its own job, until its value is back (seconds)."""
    started = time.perf_counter()
    assert remote_trivial(1) == 2
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
