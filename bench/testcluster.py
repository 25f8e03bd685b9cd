"""Reaching the local test cluster from the benchmarks (scripts/testcluster.sh up first).

Benchmarks run as root on the cluster's machine: baselines such as submitit use the local
`sbatch`, while Clustrix goes through the SSH login as a laptop would.
"""

from __future__ import annotations

import os
import shlex
import uuid
from pathlib import Path
from typing import Any

import clustrix
from clustrix.backend import backend_for

ENV_FILE = Path(os.environ.get("CLUSTRIX_TESTCLUSTER_DIR", "/var/tmp/clustrix-testcluster")) / "env"


def cluster_settings() -> dict[str, str]:
    """The ``export NAME=value`` lines that `testcluster.sh up` wrote."""
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


def configure_slurm(**extra: Any) -> dict[str, str]:
    """Point Clustrix at the test SLURM over SSH, in a fresh remote folder; return settings."""
    settings = cluster_settings()
    os.environ["SLURM_CONF"] = settings["SLURM_CONF"]  # for baselines using the local sbatch
    clustrix.configure(
        cluster_type="slurm",
        cluster_host=settings["CLUSTRIX_TEST_SSH_HOST"],
        cluster_port=int(settings["CLUSTRIX_TEST_SSH_PORT"]),
        username=settings["CLUSTRIX_TEST_SSH_USER"],
        key_file=settings["CLUSTRIX_TEST_SSH_KEY"],
        known_hosts_file=settings["CLUSTRIX_TEST_KNOWN_HOSTS"],
        remote_work_dir=f"~/clustrix-bench/{uuid.uuid4().hex[:8]}",
        job_poll_interval=1.0,
        **extra,
    )
    return settings


def remove_remote_folder() -> None:
    """Delete the benchmark's remote work folder (environment included)."""
    config = clustrix.get_config()
    backend = backend_for(config)
    folder = config.remote_work_dir.replace("~", backend.transport.home(), 1)
    backend.transport.run(f"rm -rf {shlex.quote(folder)}", check=False)
