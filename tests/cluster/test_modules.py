"""Environment modules: ``module_loads`` against the test cluster's Lmod (scripts/testcluster/lmod.sh).

The test cluster's module clustrixdemo/1.0 puts a program of that name on PATH and sets
CLUSTRIXDEMO_HOME; a job script runs ``module load`` before Python starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from testcluster_env import missing

import clustrix

MODULE = "clustrixdemo/1.0"


def what_the_module_gives():
    program = shutil.which("clustrixdemo")
    said = (
        subprocess.run([program, "hi"], capture_output=True, text=True).stdout if program else None
    )
    return program, os.environ.get("CLUSTRIXDEMO_HOME"), said, os.environ.get("LOADEDMODULES")


@pytest.fixture
def with_lmod(test_cluster):
    if not test_cluster.modulepath:
        missing("Lmod and its modules are not set up on the test cluster (component lmod)")
    return test_cluster


@pytest.mark.parametrize("fixture", ["on_slurm", "on_ssh"])
def test_module_loads_change_the_jobs_environment(request, with_lmod, fixture):
    request.getfixturevalue(fixture)
    clustrix.configure(module_loads=[MODULE])
    program, home, said, loaded = clustrix.cluster(what_the_module_gives)()
    assert home and home.endswith("/clustrixdemo/1.0")
    assert program == f"{home}/bin/clustrixdemo"
    assert said == "clustrixdemo 1.0 hi\n"
    assert MODULE in (loaded or "").split(":")


def test_without_module_loads_the_module_is_not_loaded(with_lmod, on_slurm):
    program, home, _, _ = clustrix.cluster(what_the_module_gives)()
    assert program is None and home is None


def test_module_works_in_the_logins_shell(with_lmod):
    transport = with_lmod.transport()
    try:
        listed = transport.run("module --terse avail clustrixdemo 2>&1").stdout.split()
        assert MODULE in listed
        assert with_lmod.modulepath in transport.run('printf %s "$MODULEPATH"').stdout
    finally:
        transport.close()
