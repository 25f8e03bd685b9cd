"""Round trip of one call to SLURM: Clustrix over SSH against submitit and raw sbatch.

    bash scripts/testcluster.sh up        # a local SLURM with an SSH login on 127.0.0.1
    pip install -e ".[bench]"
    python bench/slurm_roundtrip.py [--calls 10]

Run as root on the test-cluster machine: submitit must run where `sbatch` is, so it submits
directly (no SSH hop), while Clustrix goes through the SSH login as a laptop would. The raw
baseline is `ssh ... sbatch --wait` of an equivalent Python one-liner. Each method makes
--calls sequential calls of a trivial function; medians are compared.

It also measures the environment step: building a job environment from nothing, against
checking an existing one from a fresh process (what every later job pays).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import tempfile
import time

import submitit
from testcluster import configure_slurm, remove_remote_folder

import clustrix
from clustrix.backend import backend_for
from clustrix.environment import plan_environment


def trivial(x: int) -> int:
    return x + 1


def timed(call, count: int) -> list[float]:
    durations = []
    for i in range(count):
        started = time.perf_counter()
        assert call(i) == i + 1
        durations.append(time.perf_counter() - started)
    return durations


def describe(name: str, durations: list[float]) -> float:
    median = statistics.median(durations)
    print(
        f"  {name:<36} median {median:6.3f} s   "
        f"min {min(durations):6.3f}   max {max(durations):6.3f}"
    )
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    settings = configure_slurm()
    ssh = [
        "ssh",
        "-i",
        settings["CLUSTRIX_TEST_SSH_KEY"],
        "-p",
        settings["CLUSTRIX_TEST_SSH_PORT"],
        "-o",
        f"UserKnownHostsFile={settings['CLUSTRIX_TEST_KNOWN_HOSTS']}",
        "-o",
        "BatchMode=yes",
        f"{settings['CLUSTRIX_TEST_SSH_USER']}@{settings['CLUSTRIX_TEST_SSH_HOST']}",
    ]
    config = clustrix.get_config()
    backend = backend_for(config)
    remote_trivial = clustrix.cluster(trivial, time="00:05:00", memory="200MB")

    print("environment (cloudpickle only, in a fresh work folder)")
    plan = plan_environment(
        trivial, "auto", python_executable=None, conda_env_name=None, payload_modules=()
    )
    started = time.perf_counter()
    assert backend.staging.environments.ensure(plan, backend.work_dir, config).built
    built = time.perf_counter() - started
    reused_times = []
    for _ in range(5):
        backend.staging.environments.forget()  # what a new client process knows
        started = time.perf_counter()
        assert not backend.staging.environments.ensure(plan, backend.work_dir, config).built
        reused_times.append(time.perf_counter() - started)
    reused = statistics.median(reused_times)
    print(
        f"  built {built:.2f} s, reused {reused:.3f} s: "
        f"ratio {reused / built:.3f} (target < 0.05)\n"
    )

    remote_trivial(0)  # warm: connection open, environment known
    print(f"{args.calls} sequential calls of a trivial function")
    ours = describe("clustrix @cluster over SSH", timed(remote_trivial, args.calls))

    with tempfile.TemporaryDirectory(prefix="submitit-bench-", dir="/var/tmp") as folder:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
        executor.update_parameters(time=5, mem="200M", cpus_per_task=1)
        executor.submit(trivial, 0).result()  # warm
        theirs = describe(
            "submitit (local sbatch, no SSH)",
            timed(lambda i: executor.submit(trivial, i).result(), args.calls),
        )

    one_liner = "python3 -c 'print(1 + 1)'"

    def raw(i: int) -> int:
        command = (
            f"cd /tmp && sbatch --wait --quiet --output=/dev/null --wrap {shlex.quote(one_liner)}"
        )
        subprocess.run([*ssh, command], check=True, capture_output=True)
        return i + 1

    raw_median = describe("ssh + sbatch --wait (raw)", timed(raw, max(3, args.calls // 2)))
    print(f"\n  ratio clustrix / submitit: {ours / theirs:.2f}  (target <= 1.0)")
    print(f"  ratio clustrix / raw sbatch --wait: {ours / raw_median:.2f}")
    remove_remote_folder()


if __name__ == "__main__":
    main()
