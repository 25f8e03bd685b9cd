"""Warm worker pools on SLURM: calls through a pool against calls as jobs, in one run.

    bash scripts/testcluster.sh up
    pip install -e ".[bench]"
    python bench/pool.py [--calls 10000] [--single 10] [--rate-calls 5000]

Run as root on the test-cluster machine: submitit submits with the local `sbatch` (no SSH
hop); Clustrix goes through the SSH login as a laptop would. Prints, each against a baseline
measured in the same run:

- one trivial call through a warm pool of 2 workers vs the same call as a job (medians);
- --calls trivial calls through the pool vs the same map as one job array, and vs submitit's
  map_array of 200 calls (for scale: submitit runs one array task per call);
- how many 1 ms calls per second 2 workers take (pool.map);
- --calls trivial calls as a plain map (no pool) vs one single-call job.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import submitit
from testcluster import configure_slurm, remove_remote_folder

import clustrix


def trivial(x: int) -> int:
    return x + 1


def one_millisecond(x: int) -> int:
    deadline = time.perf_counter() + 0.001
    while time.perf_counter() < deadline:
        pass
    return x


def median_seconds(call, times: int) -> float:
    spent = []
    for n in range(times):
        started = time.perf_counter()
        call(n)
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def submitit_map(items: list[int]) -> float:
    with tempfile.TemporaryDirectory(prefix="submitit-bench-", dir="/var/tmp") as folder:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
        executor.update_parameters(time=5, mem="200M", cpus_per_task=1, array_parallelism=100)
        executor.submit(trivial, 0).result()  # warm
        started = time.perf_counter()
        jobs = executor.map_array(trivial, items)
        assert [job.result() for job in jobs] == [trivial(x) for x in items]
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=10, help="sequential single calls")
    parser.add_argument("--rate-calls", type=int, default=5_000, help="1 ms calls to time")
    args = parser.parse_args()
    configure_slurm(job_store=f"{tempfile.mkdtemp()}/jobs.db", progress="off")
    remote = clustrix.cluster(trivial, time="00:05:00", memory="200MB")
    many = list(range(args.calls))
    expected = [trivial(x) for x in many]

    remote(0)  # warm: connection open, environment built
    as_job = median_seconds(remote, args.single)
    plain_map = timed(lambda: remote.map(many) == expected or exit("wrong values"))

    with clustrix.pool(workers=2, memory="500MB", time="00:30:00") as pool:
        remote(0)  # the workers are up and the function has reached them
        pooled = median_seconds(remote, args.single)
        pooled_map = timed(lambda: remote.map(many) == expected or exit("wrong values"))
        pool_map = timed(lambda: list(pool.map(trivial, many)) == expected or exit("wrong"))
        list(pool.map(one_millisecond, range(100)))
        rate_seconds = timed(lambda: list(pool.map(one_millisecond, range(args.rate_calls))))
    theirs = submitit_map(list(range(200)))

    print(f"one trivial call (median of {args.single})")
    print(f"  as a job                      {as_job * 1000:8.1f} ms")
    print(f"  through a warm pool           {pooled * 1000:8.1f} ms")
    print(f"  ratio pool / job: {pooled / as_job:.3f}  (target <= 0.1)\n")
    print(f"{args.calls} trivial calls")
    print(f"  one job array (f.map)         {plain_map:8.2f} s")
    print(f"  through a warm pool (f.map)   {pooled_map:8.2f} s")
    print(f"  through a warm pool (pool.map){pool_map:8.2f} s")
    print(f"  submitit map_array of 200     {theirs:8.2f} s")
    print(f"  ratio pool / job array: {pooled_map / plain_map:.3f}  (target <= 0.1)")
    print(f"  ratio pool / submitit's 200: {pooled_map / theirs:.3f}  (reported)\n")
    rate = args.rate_calls / rate_seconds
    print(f"1 ms calls, 2 workers: {rate:.0f} calls/s ({args.rate_calls} in {rate_seconds:.2f} s)")
    print("  (target >= 500/s)\n")
    print(f"{args.calls} trivial calls as a plain map, no pool: {plain_map:.2f} s")
    print(f"  ratio to one single-call job: {plain_map / as_job:.2f}  (target <= 2)")
    remove_remote_folder()


if __name__ == "__main__":
    main()
