"""Where the test cluster's settings are, and what a missing cluster means for a test.

`scripts/testcluster.sh up` writes `export NAME=value` lines to an env file. Without a
cluster, tests that need it are skipped, unless CLUSTRIX_REQUIRE_CLUSTER=1 (set by CI), which
turns a missing cluster into a failure. That variable is read at import: tests/conftest.py
removes CLUSTRIX_* variables before each test.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

ENV_FILE = Path(os.environ.get("CLUSTRIX_TESTCLUSTER_DIR", "/var/tmp/clustrix-testcluster")) / "env"
REQUIRE_CLUSTER = os.environ.get("CLUSTRIX_REQUIRE_CLUSTER") == "1"


def read_env_file() -> dict[str, str]:
    """Every ``export NAME=value`` of the env file (none without a cluster)."""
    values = {}
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                values[key] = shlex.split(value)[0] if value else ""
    return values


def missing(message: str) -> None:
    """Skip the test, or fail it where the cluster is required."""
    if REQUIRE_CLUSTER:
        pytest.fail(message)
    pytest.skip(message)
