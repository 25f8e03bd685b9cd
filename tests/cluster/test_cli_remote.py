"""CLI commands that reach the test cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from clustrix.cli import main


def test_status_checks_the_cluster(test_cluster):
    env = test_cluster.environ("slurm")
    result = CliRunner().invoke(main, ["status"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (
        f"target: slurm via {test_cluster.user}@{test_cluster.host}:{test_cluster.port}"
        in result.output
    )
    assert "slurm: slurm" in result.output
    assert "python3: " in result.output and "Python 3." in result.output
    assert result.output.rstrip().endswith("status: ready")


def test_trust_host_shows_the_fingerprint_and_asks(test_cluster, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    args = [
        "trust-host",
        test_cluster.host,
        "--port",
        str(test_cluster.port),
        "--known-hosts",
        str(known_hosts),
    ]
    refused = CliRunner().invoke(main, args, input="n\n")
    assert refused.exit_code == 1
    assert "fingerprint SHA256:" in refused.output
    assert "not trusted; nothing was written" in refused.output
    assert not known_hosts.exists()

    accepted = CliRunner().invoke(main, args, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    line = known_hosts.read_text().strip()
    assert line.startswith(f"[{test_cluster.host}]:{test_cluster.port} ssh-")
    expected = Path(test_cluster.known_hosts).read_text()
    assert line.split()[2] in expected, "the key recorded is the server's real key"


@pytest.mark.parametrize("cluster_type", ["sge", "pbs", "ssh"])
def test_status_checks_every_kind_of_cluster(test_cluster, cluster_type, monkeypatch):
    from clustrix.schedulers.pbs import PbsScheduler

    if cluster_type == "pbs":
        monkeypatch.setattr(PbsScheduler, "bin_dir", test_cluster.pbs_bin)
    env = test_cluster.environ(cluster_type)
    result = CliRunner().invoke(main, ["status"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = {"sge": "sge: SGE 8", "pbs": "pbs: /", "ssh": "ssh: Linux"}[cluster_type]
    assert expected in result.output
    assert result.output.rstrip().endswith("status: ready")


def test_trust_host_resolves_an_ssh_config_alias(test_cluster, tmp_path, isolated_config):
    ssh_dir = isolated_config / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(
        f"Host testlogin\n  HostName {test_cluster.host}\n  Port {test_cluster.port}\n"
    )
    known_hosts = tmp_path / "known_hosts"
    args = ["trust-host", "testlogin", "--known-hosts", str(known_hosts), "--yes"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # recorded under the real name and port, which is what a connection looks up
    assert known_hosts.read_text().startswith(f"[{test_cluster.host}]:{test_cluster.port} ssh-")
