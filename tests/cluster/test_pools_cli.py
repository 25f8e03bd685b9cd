"""Pools seen from another process: `clustrix pools` lists a live pool with its figures, and
`clustrix pool stop` stops it, whichever process opened it."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from clustrix.cli import main
from clustrix.store import JobStore

from .conftest import output_of, wait_for

OWNER = """
import sys, clustrix

def slow(seconds):
    import time
    time.sleep(seconds)
    return seconds

with clustrix.pool(workers=2, memory="300MB", time="00:05:00", idle_timeout="00:01:00") as pool:
    print(pool.pool_id, flush=True)
    futures = [pool.submit(slow, 20) for _ in range(4)]
    try:
        print([f.result() for f in futures])
    except Exception as exc:
        print("failed:", type(exc).__name__, exc, flush=True)
print("closed", flush=True)
"""


def _environ(test_cluster, store: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(test_cluster.environ("slurm"), CLUSTRIX_JOB_STORE=store, HOME=os.environ["HOME"])
    return env


def test_pools_lists_a_live_pool_and_pool_stop_stops_it_from_another_process(
    test_cluster, tmp_path
):
    store_path = str(tmp_path / "jobs.db")
    env = _environ(test_cluster, store_path)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        pool_id = owner.stdout.readline().strip()
        assert pool_id.startswith("pool-"), pool_id
        store = JobStore(store_path)
        transport = test_cluster.transport()

        def busy_workers() -> bool:
            listing = CliRunner().invoke(main, ["pools"], env=env, catch_exceptions=False)
            row = next((line for line in listing.output.splitlines() if pool_id in line), "")
            return row.split()[1:3] == ["2/2", "2"]

        assert wait_for(busy_workers, 90, 1.0), "the pool's two workers never showed as busy"
        listing = CliRunner().invoke(main, ["pools"], env=env, catch_exceptions=False)
        header, row = listing.output.splitlines()[0], listing.output.splitlines()[1]
        assert header.split()[:3] == ["POOL", "ID", "WORKERS"]
        assert row.split()[0] == pool_id and f"pid {owner.pid}" in row

        record = store.get_pool(pool_id)
        ids = [s["scheduler_id"] for j in record.worker_jobs for s in store.get(j).submissions]
        queue = f"squeue --noheader --states=PENDING,RUNNING --jobs={','.join(ids)}"
        assert output_of(transport, queue), "the worker jobs are in the queue"

        stopped = CliRunner().invoke(
            main, ["pool", "stop", pool_id[:20]], env=env, catch_exceptions=False
        )
        assert stopped.exit_code == 0, stopped.output
        assert f"stopped pool {pool_id}" in stopped.output
        assert wait_for(lambda: output_of(transport, queue) == "", 30), output_of(transport, queue)
        output, _ = owner.communicate(timeout=60)
        assert "failed: BackendUnavailableError" in output and "was stopped" in output, output
        assert output.rstrip().endswith("closed")
        assert store.get_pool(pool_id).state == "STOPPED"
        after = CliRunner().invoke(main, ["pools"], env=env, catch_exceptions=False)
        assert pool_id not in after.output
    finally:
        owner.kill()
        owner.wait()


def test_pool_stop_names_an_unknown_pool(test_cluster, tmp_path):
    env = _environ(test_cluster, str(tmp_path / "jobs.db"))
    result = CliRunner().invoke(main, ["pool", "stop", "pool-nothing"], env=env)
    assert result.exit_code == 1
    assert "no pool 'pool-nothing'" in result.output
