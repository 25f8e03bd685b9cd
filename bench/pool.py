"""Warm worker pools on SLURM: calls through a pool against calls as jobs, in one run.

    bash scripts/testcluster.sh up
    pip install -e ".[bench]"
    python bench/pool.py [--calls 10000] [--single 10] [--rate-calls 5000]

The job figures and the pool figures are measured in two processes of their own, one after
the other. Run as root on the test-cluster machine: submitit submits with the local `sbatch` (no SSH
hop); Clustrix goes through the SSH login as a laptop would. Prints, each against a baseline
measured in the same run:

- one trivial call through a warm pool of 2 workers vs the same call as a job (medians; maps
  are medians of 3 runs too);
- --calls trivial calls through the pool vs the same map as one job array, and vs submitit's
  map_array of 200 calls (for scale: submitit runs one array task per call);
- how many 1 ms calls per second 2 workers take (pool.map);
- --calls trivial calls as a plain map (no pool) vs one single-call job.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def timed(action, times: int = 3) -> float:
    """The median wall time of ``times`` runs of ``action``."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def submitit_map(items: list[int]) -> float:
    with tempfile.TemporaryDirectory(prefix="submitit-bench-", dir="/var/tmp") as folder:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
        executor.update_parameters(time=5, mem="200M", cpus_per_task=1, array_parallelism=100)
        executor.submit(trivial, 0).result()  # warm
        started = time.perf_counter()
        jobs = executor.map_array(trivial, items)
        assert [job.result() for job in jobs] == [trivial(x) for x in items]
        return time.perf_counter() - started


def measure_jobs(args: argparse.Namespace) -> dict[str, float]:
    """Calls as jobs: one call (median), and the large map as one job array."""
    remote = clustrix.cluster(trivial, time="00:05:00", memory="200MB")
    many = list(range(args.calls))
    expected = [trivial(x) for x in many]
    remote(0)  # warm: connection open, environment built
    as_job = median_seconds(remote, args.single)
    plain_map = timed(lambda: remote.map(many) == expected or exit("wrong values"))
    return {"as_job": as_job, "plain_map": plain_map}


def measure_pool(args: argparse.Namespace) -> dict[str, float]:
    """The same calls through a warm pool of 2 workers, and the rate of 1 ms calls."""
    remote = clustrix.cluster(trivial, time="00:05:00", memory="200MB")
    many = list(range(args.calls))
    expected = [trivial(x) for x in many]
    with clustrix.pool(workers=2, memory="500MB", time="00:30:00") as pool:
        remote(0)  # the workers are up and the function has reached them
        pooled = median_seconds(remote, args.single)
        pooled_map = timed(lambda: remote.map(many) == expected or exit("wrong values"))
        pool_map = timed(lambda: list(pool.map(trivial, many)) == expected or exit("wrong"))
        list(pool.map(one_millisecond, range(100)))
        rate_seconds = timed(lambda: list(pool.map(one_millisecond, range(args.rate_calls))), 1)
    return {
        "pooled": pooled,
        "pooled_map": pooled_map,
        "pool_map": pool_map,
        "rate_seconds": rate_seconds,
    }


def in_own_process(part: str, args: argparse.Namespace) -> dict[str, float]:
    """Run one part of the benchmark in a process of its own, so that neither inherits the
    other's heap (ten thousand futures per map make Python's garbage collector slower)."""
    command = [sys.executable, __file__, "--part", part, "--calls", str(args.calls)]
    command += ["--single", str(args.single), "--rate-calls", str(args.rate_calls)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=10, help="sequential single calls")
    parser.add_argument("--rate-calls", type=int, default=5_000, help="1 ms calls to time")
    parser.add_argument("--part", choices=["jobs", "pool"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_slurm(job_store=f"{tempfile.mkdtemp()}/jobs.db", progress="off")
    if args.part:
        measure = measure_jobs if args.part == "jobs" else measure_pool
        print(json.dumps(measure(args)))
        return
    jobs, pooled = in_own_process("jobs", args), in_own_process("pool", args)
    as_job, plain_map = jobs["as_job"], jobs["plain_map"]
    theirs = submitit_map(list(range(200)))
    print(f"one trivial call (median of {args.single})")
    print(f"  as a job                      {as_job * 1000:8.1f} ms")
    print(f"  through a warm pool           {pooled['pooled'] * 1000:8.1f} ms")
    print(f"  ratio pool / job: {pooled['pooled'] / as_job:.3f}  (target <= 0.1)\n")
    print(f"{args.calls} trivial calls (medians of 3)")
    print(f"  one job array (f.map)         {plain_map:8.2f} s")
    print(f"  through a warm pool (f.map)   {pooled['pooled_map']:8.2f} s")
    print(f"  through a warm pool (pool.map){pooled['pool_map']:8.2f} s")
    print(f"  submitit map_array of 200     {theirs:8.2f} s")
    print(f"  ratio pool / job array: {pooled['pooled_map'] / plain_map:.3f}  (target <= 0.1)")
    print(f"  ratio pool / submitit's 200: {pooled['pooled_map'] / theirs:.3f}  (reported)\n")
    rate = args.rate_calls / pooled["rate_seconds"]
    print(f"1 ms calls, 2 workers: {rate:.0f} calls/s  (target >= 500/s)\n")
    print(f"{args.calls} trivial calls as a plain map, no pool: {plain_map:.2f} s")
    print(f"  ratio to one single-call job: {plain_map / as_job:.2f}  (target <= 2)")
    remove_remote_folder()


if __name__ == "__main__":
    main()
