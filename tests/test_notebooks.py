"""The tutorial notebooks run top to bottom, and Clustrix behaves in a Jupyter kernel.

Notebooks that need a cluster (metadata ``"clustrix": {"needs_cluster": true}``) run in
tests/cluster/test_notebooks_remote.py, which needs the test cluster; they are stored with the
outputs of such a run, which documentation builds without a cluster show.
"""

from __future__ import annotations

import re
import sys
import time

import nbformat
import pytest
from notebook_kernel import NOTEBOOKS, Kernel, execute, install_kernel, mime_types, text_of
from testcluster_env import read_env_file

sys.path.insert(0, str(NOTEBOOKS.parent / "_ext"))
import clustrix_notebooks

ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
DOCUMENTS = clustrix_notebooks.notebooks(NOTEBOOKS.parent, ["_build"])
NEEDS_CLUSTER = sorted(nb.path for nb in DOCUMENTS if nb.needs_cluster)
LOCAL = [path for path in ALL if path not in NEEDS_CLUSTER]


@pytest.fixture
def kernel_spec(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    folder = install_kernel(tmp_path_factory.mktemp("jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    return folder


def test_there_are_tutorials_and_some_need_no_cluster():
    assert len(ALL) >= 4
    assert LOCAL


@pytest.mark.parametrize("path", LOCAL, ids=lambda path: path.stem)
def test_tutorial_runs_without_errors(kernel_spec, tmp_path, path):
    nb = execute(nbformat.read(path, as_version=4), tmp_path)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    assert all(nb.cells[i].execution_count for i in code), "every code cell ran"
    if path.stem == "01-local-basics":
        everything = "".join(text_of(nb, i) for i in code)
        assert "caught NegativeStepsError - steps must be >= 0, got -10" in everything
        assert "raise NegativeStepsError" in everything, "the traceback from the worker is shown"
    if path.stem == "03-parameter-sweep":
        assert any("image/png" in mime_types(nb, i) for i in code), "the plot is shown inline"
    if path.stem == "04-loops":
        everything = "".join(text_of(nb, i) for i in code)
        assert ": parallel: iterations are independent" in everything
        assert "`balance` is updated as a reduction but also read" in everything
        assert "same result as the plain loop: True" in everything


@pytest.mark.parametrize("path", LOCAL, ids=lambda path: path.stem)
def test_tutorials_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_documents_reading_the_test_cluster_say_they_need_a_cluster():
    for document in DOCUMENTS:
        if "CLUSTRIX_TEST_" in document.path.read_text():
            assert document.needs_cluster, f"{document.path}: set clustrix.needs_cluster"
    assert NEEDS_CLUSTER, "the SLURM tutorial needs a cluster"


@pytest.mark.parametrize("path", NEEDS_CLUSTER, ids=lambda path: path.stem)
def test_tutorials_needing_a_cluster_are_stored_with_a_clean_run(path):
    """Stored outputs of one whole run, without the test machine's names, paths or widgets."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    (document,) = [d for d in DOCUMENTS if d.path == path]
    assert document.stored_run_problem is None, (
        f"{document.stored_run_problem}: run python docs/_ext/clustrix_notebooks.py {path}"
    )
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), "one run, top to bottom"
    cluster = read_env_file()
    forbidden = [
        value
        for key, value in cluster.items()
        if key in ("CLUSTRIX_TEST_SSH_HOST", "CLUSTRIX_TEST_SSH_KEY", "CLUSTRIX_TEST_KNOWN_HOSTS")
    ]
    if cluster.get("CLUSTRIX_TEST_SSH_USER"):
        forbidden.append(f"/home/{cluster['CLUSTRIX_TEST_SSH_USER']}/")
    assert clustrix_notebooks.stored_output_problems(path, tuple(forbidden)) == []


def test_tutorial_index_lists_every_notebook():
    index = (NOTEBOOKS / "index.md").read_text()
    toctree = re.search(r"```\{toctree\}(.*?)```", index, re.S)
    assert toctree is not None
    listed = [line.strip() for line in toctree.group(1).splitlines()]
    entries = [name for name in listed if name and not name.startswith(":")]
    if entries != ["*"]:  # a glob lists them all
        assert [path.stem for path in ALL] == entries


def test_interrupting_the_kernel_leaves_local_workers_usable(kernel_spec, tmp_path):
    """An interrupt signals the kernel's whole process group, the workers included."""
    kernel = Kernel(tmp_path)
    try:
        kernel.run(
            "import os, time\n"
            "from clustrix import cluster\n"
            "@cluster\n"
            "def pid(seconds=0):\n"
            "    time.sleep(seconds)\n"
            "    return os.getpid()\n"
            "print(sorted(set(pid.map([0.2] * 8))))\n"
        )
        for cell in ("time.sleep(60)", "pid(60)"):
            msg_id = kernel.start(cell)
            time.sleep(2)
            kernel.interrupt()
            reply = kernel.reply(msg_id, timeout=30)
            printed = kernel.printed(msg_id)
            assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
            assert "ForkProcess" not in printed, "no worker died of the interrupt"
            # Every worker is still there and answers.
            kernel.run(
                "values = pid.map([0] * 8)\nassert all(isinstance(v, int) for v in values)",
                timeout=90,
            )
    finally:
        kernel.close()
