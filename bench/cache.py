"""The result cache on SLURM: 150 calls (3 maps of 50) run once, then again from the cache.

    bash scripts/testcluster.sh up
    python bench/cache.py

The first run submits three job arrays over SSH; the re-run must submit nothing (counted in
the job store) and return every value from the cache folder. Prints both wall times and their
ratio; the target for the re-run is under 0.5 s.
"""

from __future__ import annotations

import tempfile
import time

from testcluster import configure_slurm, remove_remote_folder

import clustrix
from clustrix.store import JobStore


def scaled(x: int, factor: int) -> int:
    return x * factor


def run(function: clustrix.ClusterFunction) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    values = [function.map(range(50), [factor] * 50) for factor in (1, 2, 3)]
    return time.perf_counter() - started, values


def main() -> None:
    folder = tempfile.mkdtemp(prefix="clustrix-cache-bench-")
    configure_slurm(job_store=f"{folder}/jobs.db", cache_dir=f"{folder}/cache", progress="off")
    cached = clustrix.cluster(scaled, cache=True, time="00:05:00", memory="200MB")
    store = JobStore(f"{folder}/jobs.db")

    first, values = run(cached)
    submitted = len(store.list())
    again, repeated = run(cached)
    assert repeated == values == [[x * f for x in range(50)] for f in (1, 2, 3)]
    resubmitted = len(store.list()) - submitted

    print("150 calls (3 maps of 50) on SLURM over SSH")
    print(f"  first run, {submitted} job arrays submitted  {first:7.2f} s")
    print(f"  re-run from the cache, {resubmitted} jobs        {again:7.3f} s  (target < 0.5 s)")
    print(f"  ratio re-run / first run: {again / first:.4f}")
    assert resubmitted == 0, "the re-run submitted jobs"
    remove_remote_folder()


if __name__ == "__main__":
    main()
