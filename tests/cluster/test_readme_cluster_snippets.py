"""The README's (and getting-started's) cluster code blocks, run against the test cluster.

A block's placeholder connection values are replaced as documented in
``doc_snippets.to_test_cluster`` (``login.example.edu`` becomes 127.0.0.1, and so on); the
settings a block leaves out (SSH port, known_hosts file) come from ``CLUSTRIX_*`` variables.
"""

from __future__ import annotations

import os
from pathlib import Path

import doc_snippets as ds
import pytest

from .conftest import output_of

CLUSTER_BLOCKS = [s for s in ds.snippets("python") if s.cluster_type and not s.not_run]

pytestmark = pytest.mark.timeout(1200)

_PBS_PRELUDE = (
    "from clustrix.schedulers.pbs import PbsScheduler\n"
    "PbsScheduler.bin_dir = {bin_dir!r}  # the test cluster's PBS-style commands\n"
)


@pytest.mark.parametrize("snippet", CLUSTER_BLOCKS, ids=lambda s: s.id)
def test_cluster_block_runs_on_the_test_cluster(snippet, request, tmp_path: Path):
    kind = snippet.cluster_type
    cluster = request.getfixturevalue(f"on_{kind}")  # skips or fails without it
    partition = ""
    if kind in ("slurm", "pbs"):
        partitions = output_of(cluster.transport(), "sinfo -h -o %P").split()
        partition = next((p for p in partitions if p.endswith("*")), partitions[0]).rstrip("*")
    code = ds.to_test_cluster(snippet.code, cluster, partition)
    if kind == "pbs":
        code = _PBS_PRELUDE.format(bin_dir=cluster.pbs_bin) + code
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(cluster.environ(kind), HOME=os.environ["HOME"])
    ds.run_block(snippet, tmp_path, code, env, timeout=900)


def test_the_mapping_replaces_every_placeholder(test_cluster):
    code = (
        'configure(cluster_type="slurm", cluster_host="login.example.edu", username="me",\n'
        '          key_file="~/.ssh/id_ed25519", remote_work_dir="~/clustrix",\n'
        '          cluster_port=22, default_partition="short")\n'
        '@cluster(partition="short")\n'
    )
    adapted = ds.to_test_cluster(code, test_cluster, "debug")
    for expected in (
        f"cluster_host={test_cluster.host!r}",
        f"username={test_cluster.user!r}",
        f"key_file={test_cluster.key_file!r}",
        f"remote_work_dir={test_cluster.work_dir!r}",
        f"cluster_port={test_cluster.port}",
        "default_partition='debug'",
        "@cluster(partition='debug')",
    ):
        assert expected in adapted, adapted
    with pytest.raises(AssertionError, match="placeholder"):
        ds.to_test_cluster('trust("gw.example.org")', test_cluster, "debug")
