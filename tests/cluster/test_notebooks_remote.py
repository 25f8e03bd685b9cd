"""Clustrix in a Jupyter kernel, against the test cluster.

Notebooks are executed by nbclient in a real ipykernel, with the test cluster's settings
exported (every ``export KEY=VALUE`` line of its env file), as the documentation build does.
"""

from __future__ import annotations

import sys
import uuid

import nbformat
import pytest
from notebook_kernel import (
    NOTEBOOKS,
    WIDGET,
    Kernel,
    execute,
    install_kernel,
    mime_types,
    notebook,
    text_of,
)

import clustrix

from .conftest import _read_env_file, _require, output_of, wait_for

sys.path.insert(0, str(NOTEBOOKS.parent / "_ext"))
import clustrix_notebooks

NEEDS_CLUSTER = sorted(
    nb.path
    for nb in clustrix_notebooks.notebooks(NOTEBOOKS.parent, ["_build"])
    if nb.needs_cluster and nb.path.suffix == ".ipynb"
)


@pytest.fixture
def cluster_kernel(test_cluster, tmp_path_factory, monkeypatch):
    """A kernel spec for this interpreter, and the cluster's settings in the environment."""
    monkeypatch.setenv("JUPYTER_PATH", str(install_kernel(tmp_path_factory.mktemp("jupyter"))))
    for key, value in _read_env_file().items():
        monkeypatch.setenv(key, value)
    return test_cluster


def _configure_cell(test_cluster, cluster_type: str) -> str:
    return f"import clustrix\nclustrix.configure(**{test_cluster.settings(cluster_type)!r})\n"


def test_some_tutorial_needs_the_cluster():
    assert NEEDS_CLUSTER, "the SLURM tutorial needs the test cluster"


@pytest.mark.parametrize("path", NEEDS_CLUSTER, ids=lambda path: path.stem)
def test_tutorial_runs_on_the_test_cluster(cluster_kernel, tmp_path, path):
    _require(cluster_kernel.slurm, "SLURM")
    nb = execute(nbformat.read(path, as_version=4), tmp_path, timeout=300)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    assert all(nb.cells[i].execution_count for i in code), "every code cell ran"
    maps = [i for i in code if ".map(" in nb.cells[i].source]
    assert maps and all(WIDGET in mime_types(nb, i) for i in maps), "maps show a widget bar"
    everything = "".join(text_of(nb, i) for i in code)
    assert "caught NegativeStepsError" in everything
    assert "(raised on " in everything and "slurm job" in everything
    # The last cells remove the tutorial's jobs: nothing of them is left in the job store.
    assert not [job for job in clustrix.jobs() if "/clustrix-tutorial/" in job.remote_folder]


CELL_DEFINITIONS = """
from dataclasses import dataclass

from clustrix import cluster


@dataclass
class Point:
    x: float
    y: float

    def scaled(self, factor):
        return Point(self.x * factor, self.y * factor)


class OutOfRangeError(ValueError):
    pass


def norm(p):
    return (p.x**2 + p.y**2) ** 0.5


@cluster(cores=1, memory="500MB", time="00:05:00")
def stretch(p, factor):
    if factor < 0:
        raise OutOfRangeError(f"factor {factor} < 0")
    q = p.scaled(factor)
    return q, norm(q)


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    @cluster(cores=1, memory="500MB", time="00:05:00")
    def apply(self, p):
        return p.scaled(self.factor)
"""

CELL_CALL = """
q, length = stretch(Point(3.0, 4.0), 2)
assert type(q) is Point and q == Point(6.0, 8.0) and length == 10.0, (q, length)
"""

CELL_MAP = """
results = stretch.map([Point(1.0, 0.0)] * 3, [1, 2, 3], progress=True)
assert [length for _, length in results] == [1.0, 2.0, 3.0], results
assert all(type(q) is Point for q, _ in results)
"""

CELL_ERROR = """
try:
    stretch(Point(1.0, 1.0), -1)
except OutOfRangeError as error:
    assert type(error) is OutOfRangeError
    print("caught", error)
else:
    raise AssertionError("the call did not raise")
"""

CELL_METHOD = """
assert Scaler(3).apply(Point(1.0, 2.0)) == Point(3.0, 6.0)
"""


@pytest.mark.parametrize("cluster_type", ["local", "slurm", "ssh", "sge"])
def test_functions_and_classes_defined_in_cells_run_on_every_backend(
    cluster_kernel, tmp_path, cluster_type
):
    if cluster_type == "slurm":
        _require(cluster_kernel.slurm, "SLURM")
    if cluster_type == "sge":
        _require(cluster_kernel.sge, "SGE")
    configure = "" if cluster_type == "local" else _configure_cell(cluster_kernel, cluster_type)
    nb = execute(
        notebook(configure, CELL_DEFINITIONS, CELL_CALL, CELL_MAP, CELL_ERROR, CELL_METHOD),
        tmp_path,
        timeout=300,
    )
    assert "caught factor -1 < 0" in text_of(nb, 4)
    assert WIDGET in mime_types(nb, 3), "the map's progress bar is a notebook widget"


@pytest.mark.parametrize("waiting_in", ["call", "map"])
def test_interrupting_the_kernel_cancels_the_jobs_it_waits_for(
    cluster_kernel, tmp_path, waiting_in
):
    _require(cluster_kernel.slurm, "SLURM")
    name = f"clustrix-interrupt-{uuid.uuid4().hex[:8]}"
    kernel = Kernel(tmp_path)
    try:
        kernel.run(
            _configure_cell(cluster_kernel, "slurm")
            + "import time\n"
            + f"@clustrix.cluster(cores=1, memory='200MB', time='00:05:00', job_name={name!r})\n"
            + "def nap(seconds):\n"
            + "    time.sleep(seconds)\n"
            + "    return seconds\n"
        )
        msg_id = kernel.start("nap(120)" if waiting_in == "call" else "nap.map([120, 120])")
        transport = cluster_kernel.transport()
        queued = f"squeue -h -r -n {name} -o %T"
        expected = 1 if waiting_in == "call" else 2
        assert wait_for(
            lambda: output_of(transport, queued).split() == ["RUNNING"] * expected, 90, 0.3
        ), output_of(transport, queued)
        kernel.interrupt()
        reply = kernel.reply(msg_id, timeout=60)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert wait_for(lambda: output_of(transport, queued) == "", 30, 0.5), (
            "nothing of the interrupted work is left queued or running"
        )
        accounting = f"sacct -n -X -P -o State --name {name}"
        assert wait_for(
            lambda: (
                (states := output_of(transport, accounting).split("\n"))
                and len(states) == expected
                and all(state.startswith("CANCELLED") for state in states)
            ),
            30,
            0.5,
        ), output_of(transport, accounting)
        (job,) = clustrix.jobs(limit=1)
        assert job.state == "CANCELLED"
    finally:
        kernel.close()
