"""The documentation builds without a warning, and its generated parts cover the code.

The build executes the tutorial notebooks; the SLURM one reaches the test cluster through the
CLUSTRIX_TEST_* variables of the file ``scripts/testcluster.sh`` writes, which the build gets
in its environment.
"""

from __future__ import annotations

import inspect
import os
import shlex
import subprocess
import sys
from pathlib import Path

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
from testcluster_env import ENV_FILE, missing, read_env_file  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_docs_build_without_warnings(tmp_path):
    cluster = read_env_file()
    if not cluster.get("CLUSTRIX_TEST_SSH_HOST"):
        missing(
            f"the SLURM tutorial needs the test cluster ({ENV_FILE} is missing); "
            "start it with: sudo scripts/testcluster.sh up"
        )
    environment = {**os.environ, **cluster}
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        str(DOCS),
        str(tmp_path / "html"),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        print(result.stdout)
        print(result.stderr)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stderr[-5000:]}"
    assert (tmp_path / "html" / "index.html").is_file()


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
