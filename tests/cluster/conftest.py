"""Fixtures for tests against the real test cluster (scripts/testcluster.sh up).

The cluster's connection settings come from the env file the script writes. Without a
cluster these tests are skipped, unless CLUSTRIX_REQUIRE_CLUSTER=1 (set by CI), which turns a
missing cluster into a failure.
"""

from __future__ import annotations

import shlex
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testcluster_env import ENV_FILE, missing
from testcluster_env import read_env_file as _read_env_file

import clustrix
from clustrix.transport.ssh import SSHTransport, resolve_target


@dataclass(frozen=True)
class TestCluster:
    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    slurm: bool
    sge: bool
    pbs_bin: str | None
    work_dir: str
    #: The sshd asking for a one-time code after the key (scripts/testcluster/mfa.sh).
    mfa_port: int | None = None
    oath_secret_file: str | None = None
    oath_users_file: str | None = None
    totp_step: int = 30
    totp_window: int = 10
    #: Where the test cluster's modulefiles are (scripts/testcluster/lmod.sh).
    modulepath: str | None = None

    def settings(self, cluster_type: str, **extra: object) -> dict[str, object]:
        """configure() arguments that reach this cluster as ``cluster_type``."""
        return {
            "cluster_type": cluster_type,
            "cluster_host": self.host,
            "cluster_port": self.port,
            "username": self.user,
            "key_file": self.key_file,
            "known_hosts_file": self.known_hosts,
            "remote_work_dir": self.work_dir,
            "job_poll_interval": 1.0,
            **extra,
        }

    def environ(self, cluster_type: str) -> dict[str, str]:
        """The same settings as CLUSTRIX_* variables, for subprocesses."""
        return {f"CLUSTRIX_{k.upper()}": str(v) for k, v in self.settings(cluster_type).items()}

    def transport(self) -> SSHTransport:
        target = resolve_target(self.host, self.port, self.user, self.key_file)
        return SSHTransport(target, known_hosts=Path(self.known_hosts))


def wait_for(predicate, seconds: float = 60, interval: float = 0.3) -> bool:
    """Poll ``predicate`` until it is true or ``seconds`` pass; whether it became true."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def output_of(transport, command: str) -> str:
    return transport.run(command, check=False).stdout.strip()


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def test_cluster() -> Iterator[TestCluster]:
    values = _read_env_file()
    host = values.get("CLUSTRIX_TEST_SSH_HOST")
    port = int(values.get("CLUSTRIX_TEST_SSH_PORT", "0") or 0)
    if not host or not _reachable(host, port):
        message = (
            f"the test cluster is not running (no reachable sshd from {ENV_FILE}); "
            "start it with: sudo scripts/testcluster.sh up"
        )
        missing(message)
    cluster = TestCluster(
        host=host,
        port=port,
        user=values["CLUSTRIX_TEST_SSH_USER"],
        key_file=values["CLUSTRIX_TEST_SSH_KEY"],
        known_hosts=values["CLUSTRIX_TEST_KNOWN_HOSTS"],
        slurm=values.get("CLUSTRIX_TEST_SLURM") == "1",
        sge=values.get("CLUSTRIX_TEST_SGE") == "1",
        pbs_bin=values.get("CLUSTRIX_TEST_PBS_BIN"),
        work_dir=f"~/clustrix-tests/{uuid.uuid4().hex[:8]}",
        mfa_port=int(values["CLUSTRIX_TEST_MFA_PORT"])
        if "CLUSTRIX_TEST_MFA_PORT" in values
        else None,
        oath_secret_file=values.get("CLUSTRIX_TEST_OATH_SECRET_FILE"),
        oath_users_file=values.get("CLUSTRIX_TEST_OATH_USERS_FILE"),
        totp_step=int(values.get("CLUSTRIX_TEST_OATH_TOTP_STEP", "30")),
        totp_window=int(values.get("CLUSTRIX_TEST_OATH_WINDOW", "10")),
        modulepath=values.get("CLUSTRIX_TEST_MODULEPATH"),
    )
    yield cluster
    transport = cluster.transport()
    folder = cluster.work_dir.replace("~", transport.home(), 1)
    transport.run(f"rm -rf {shlex.quote(folder)}", check=False)
    transport.close()


def _require(available: bool, what: str) -> None:
    if not available:
        message = f"{what} is not running on the test cluster"
        missing(message)


@pytest.fixture
def on_slurm(test_cluster: TestCluster) -> TestCluster:
    """configure() pointed at SLURM through the SSH login."""
    _require(test_cluster.slurm, "SLURM")
    clustrix.configure(**test_cluster.settings("slurm"))
    return test_cluster


@pytest.fixture
def on_sge(test_cluster: TestCluster) -> TestCluster:
    """configure() pointed at Grid Engine through the SSH login."""
    _require(test_cluster.sge, "SGE")
    clustrix.configure(**test_cluster.settings("sge"))
    return test_cluster


@pytest.fixture
def on_pbs(test_cluster: TestCluster, monkeypatch: pytest.MonkeyPatch) -> TestCluster:
    """configure() pointed at "PBS": SLURM's PBS-style wrappers, in a folder off PATH."""
    from clustrix.schedulers.pbs import PbsScheduler

    _require(bool(test_cluster.pbs_bin) and test_cluster.slurm, "PBS (SLURM's wrappers)")
    monkeypatch.setattr(PbsScheduler, "bin_dir", test_cluster.pbs_bin)
    clustrix.configure(**test_cluster.settings("pbs"))
    return test_cluster


@pytest.fixture
def on_ssh(test_cluster: TestCluster) -> TestCluster:
    """configure() pointed at the plain SSH host."""
    clustrix.configure(**test_cluster.settings("ssh"))
    return test_cluster
