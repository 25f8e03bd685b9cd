"""The documentation builds without a warning, and its generated parts cover the code.

The build executes the notebooks. Those that need a cluster (metadata ``"clustrix":
{"needs_cluster": true}``) reach the test cluster through the CLUSTRIX_TEST_* variables of the
file ``scripts/testcluster.sh`` writes; without one, the build shows their stored outputs
(docs/_ext/clustrix_notebooks.py). Each build writes what it executed to
``<doctrees>/clustrix-notebook-execution.json``.
"""

from __future__ import annotations

import html
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import clustrix
from clustrix import errors
from clustrix.config import FIELD_SPECS
from clustrix.schedulers import SCHEDULERS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BACKEND_PAGES = {"slurm": "slurm", "sge": "sge", "pbs": "pbs", "ssh": "ssh"}

sys.path.insert(0, str(DOCS / "_ext"))
import clustrix_docs  # noqa: E402
import clustrix_notebooks  # noqa: E402
from testcluster_env import ENV_FILE, missing, read_env_file  # noqa: E402

NOTEBOOKS = clustrix_notebooks.notebooks(DOCS, ["_build"])


def _without_cluster(tmp_path: Path) -> dict[str, str]:
    """This environment with no trace of a cluster: no CLUSTRIX_* variable, no env file."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    environment["CLUSTRIX_TESTCLUSTER_DIR"] = str(tmp_path / "no-cluster")
    return environment


def _sphinx(source: Path, out: Path, environment: dict[str, str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(source),
        str(out / "html"),
    ]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False
    )


def _build(out: Path, environment: dict[str, str]) -> dict:
    """Build the site with -W; what it executed."""
    result = _sphinx(DOCS, out, environment)
    if result.returncode != 0:
        print(result.stdout)
        print(result.stderr)
    assert result.returncode == 0, f"the docs build failed:\n{result.stderr[-5000:]}"
    assert (out / "html" / "index.html").is_file()
    report = json.loads((out / "doctrees" / clustrix_notebooks.REPORT_NAME).read_text())
    assert set(report["notebooks"]) == {nb.docname for nb in NOTEBOOKS}
    return report


def _page(out: Path, docname: str) -> str:
    return html.unescape((out / "html" / f"{docname}.html").read_text(encoding="utf-8"))


def test_the_notebooks_are_found_and_some_need_a_cluster():
    names = {nb.docname for nb in NOTEBOOKS}
    assert {f"notebooks/{path.stem}" for path in (DOCS / "notebooks").glob("*.ipynb")} <= names
    assert "loops" in names, "MyST pages executed as notebooks count too"
    assert [nb for nb in NOTEBOOKS if nb.needs_cluster]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_docs_build_without_warnings(tmp_path):
    """With the test cluster, the build executes every notebook, and says so."""
    cluster = read_env_file()
    if not cluster.get("CLUSTRIX_TEST_SSH_HOST"):
        missing(
            f"the SLURM tutorial needs the test cluster ({ENV_FILE} is missing); "
            "start it with: sudo scripts/testcluster.sh up"
        )
    environment = {**os.environ, **cluster, "CLUSTRIX_DOCS_EXECUTE": "all"}
    report = _build(tmp_path, environment)
    assert report["mode"] == "all"
    not_run = {
        name: entry
        for name, entry in report["notebooks"].items()
        if not (entry["executed_in_this_build"] and entry["succeeded"])
        or entry["stored_outputs_shown"]
    }
    assert not not_run, f"notebooks this build did not run: {not_run}"
    for notebook in NOTEBOOKS:
        assert clustrix_notebooks.NOTICE_CLASS not in _page(tmp_path, notebook.docname)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_docs_build_without_a_cluster_shows_the_stored_outputs(tmp_path):
    """No cluster: notebooks that need one show their stored run, and the page says so."""
    report = _build(tmp_path, _without_cluster(tmp_path))
    assert report["mode"] == "local"
    for notebook in NOTEBOOKS:
        entry = report["notebooks"][notebook.docname]
        page = _page(tmp_path, notebook.docname)
        if not notebook.needs_cluster:
            assert entry["executed_in_this_build"] and entry["succeeded"], entry
            assert clustrix_notebooks.NOTICE_CLASS not in page
            continue
        assert not entry["executed"] and entry["stored_outputs_shown"], entry
        assert clustrix_notebooks.NOTICE_CLASS in page
        assert "not executed in this build" in page
        assert f"stored from a run on {notebook.stored_outputs['date']}" in page
        stored = nbformat.read(notebook.path, as_version=4)
        printed = [
            line
            for cell in stored.cells
            if cell.cell_type == "code"
            for output in cell.outputs
            if output.get("name") == "stdout"
            for line in output["text"].splitlines()
            if line.strip()
        ]
        assert printed, f"{notebook.docname} stores what its cells printed"
        assert all(line in page for line in printed), "the page shows the stored outputs"
    slurm = _page(tmp_path, "notebooks/02-slurm")
    assert "caught NegativeStepsError - steps must be >= 0, got -10" in slurm
    assert "slurm through me@login.example.edu" in slurm


NOTEBOOK_CELL = nbformat.v4.new_code_cell('print("ran in this build")')


def _project(folder: Path, notebooks: dict[str, nbformat.NotebookNode], conf: str = "") -> Path:
    """A small Sphinx project with these notebooks and the docs' notebook extension."""
    folder.mkdir()
    (folder / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        'extensions = ["myst_nb", "clustrix_notebooks"]\n'
        'nb_execution_mode = "force"\n'
        "nb_execution_raise_on_error = True\n" + conf
    )
    toctree = "\n".join(notebooks)
    (folder / "index.md").write_text(f"# Index\n\n```{{toctree}}\n{toctree}\n```\n")
    for name, nb in notebooks.items():
        if isinstance(nb, str):
            (folder / f"{name}.md").write_text(nb)
        else:
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
            nb.metadata["language_info"] = {"name": "python"}
            nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def _needing_a_cluster(**metadata) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Cluster")])
    nb.cells.append(nbformat.v4.new_code_cell('print("from the cluster")'))
    nb.metadata["clustrix"] = {"needs_cluster": True, **metadata}
    return nb


MYST_PAGE_NEEDING_A_CLUSTER = """---
file_format: mystnb
kernelspec:
  name: python3
clustrix:
  needs_cluster: true
---
# Cluster

```{code-cell} ipython3
print("from the cluster")
```
"""


@pytest.mark.parametrize("kind", ["ipynb", "myst"])
def test_a_document_needing_a_cluster_without_stored_outputs_fails_the_build(tmp_path, kind):
    document = _needing_a_cluster() if kind == "ipynb" else MYST_PAGE_NEEDING_A_CLUSTER
    source = _project(tmp_path / "src", {"cluster": document})
    result = _sphinx(source, tmp_path / "out", _without_cluster(tmp_path))
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert "cluster" in message and "needs a cluster, and this build does not execute it" in message
    assert "has no stored outputs to show instead" in message
    if kind == "ipynb":
        assert "code cell 1 has no stored run" in message
    else:
        assert "a MyST page cannot store outputs" in message
    assert "clustrix_notebooks.py" in message, "the message says how to store them"


def test_a_build_told_to_execute_all_fails_when_a_notebook_was_not_run(tmp_path):
    """What CI relies on: CLUSTRIX_DOCS_EXECUTE=all and a notebook left out is a failure."""
    ran = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Ran"), NOTEBOOK_CELL])
    left_out = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Left out"), NOTEBOOK_CELL]
    )
    source = _project(
        tmp_path / "src",
        {"ran": ran, "left-out": left_out},
        conf='nb_execution_excludepatterns = ["left-out.ipynb"]\n',
    )
    environment = {**_without_cluster(tmp_path), "CLUSTRIX_DOCS_EXECUTE": "all"}
    result = _sphinx(source, tmp_path / "out", environment)
    assert result.returncode != 0
    assert "yet these notebooks did not run: left-out (not executed)" in result.stderr
    report = json.loads((tmp_path / "out/doctrees" / clustrix_notebooks.REPORT_NAME).read_text())
    assert report["notebooks"]["ran"]["executed_in_this_build"]
    assert not report["notebooks"]["left-out"]["executed"]


def test_stored_outputs_are_shown_under_a_notice_when_no_cluster_is_configured(tmp_path):
    stored = _needing_a_cluster(stored_outputs={"date": "2001-02-03", "against": "a cluster"})
    stored.cells[1].execution_count = 1
    stored.cells[1].outputs = [nbformat.v4.new_output("stream", text="from the cluster\n")]
    source = _project(tmp_path / "src", {"cluster": stored})
    result = _sphinx(source, tmp_path / "out", _without_cluster(tmp_path))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "html" / "cluster.html").read_text()
    assert "from the cluster" in page
    assert "stored from a run on 2001-02-03 against a cluster" in page
    assert page.index("Stored outputs: not executed in this build") < page.index("from the cluster")


def _exception_classes() -> list[type[BaseException]]:
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]


def test_every_exception_has_a_section_on_the_troubleshooting_page():
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    classes = [*_exception_classes(), clustrix.JobNotFoundError]
    missing = [
        cls.__name__
        for cls in classes
        if f"(error-{cls.__name__})=\n### {cls.__name__}\n" not in page
    ]
    assert not missing, f"troubleshooting.md has no section for {missing}"
    assert set(clustrix_docs.exception_classes()) == set(classes)


def test_every_setting_is_in_the_generated_reference():
    text = "\n".join(clustrix_docs.settings_lines())
    for name, spec in FIELD_SPECS.items():
        assert f".. setting:: {name}\n" in text
        assert f"``CLUSTRIX_{name.upper()}``" in text
        assert spec.help in text
    for choice in FIELD_SPECS["cluster_type"].choices:
        assert f"``{choice}``" in text
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert "```{clustrix-settings}\n```" in page


@pytest.mark.parametrize("cluster_type", sorted(SCHEDULERS))
def test_every_scheduler_has_a_page_showing_its_job_script(cluster_type):
    page = (DOCS / "backends" / f"{BACKEND_PAGES[cluster_type]}.md").read_text(encoding="utf-8")
    assert f"```{{clustrix-job-script}} {cluster_type}\n" in page
    assert f"```{{clustrix-scheduler-options}} {cluster_type}\n" in page
    assert "## What was verified" in page
    script, command = clustrix_docs.render_sample(
        cluster_type, decorator={"cores": 2, "memory": "4GB", "time": "01:00:00"}, settings={}
    )
    assert script.startswith("#!/bin/bash\n")
    assert "runner.py" in script
    assert command


def test_the_api_page_documents_every_exported_name():
    page = (DOCS / "api.rst").read_text(encoding="utf-8")
    # Names the page does not document by hand are documented by this directive at its end.
    assert page.rstrip().endswith(".. clustrix-api-rest::")
    named = [name for name in clustrix.__all__ if f"clustrix.{name}" in page]
    assert len(named) >= len(clustrix.__all__) - 3, "document new exports by hand, in place"
