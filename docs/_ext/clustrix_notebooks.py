"""Which notebooks a documentation build executes, and what a page says when it did not.

A notebook (an ``.ipynb`` file, or a MyST page with ``file_format: mystnb``) that needs a
cluster says so in its metadata, and is committed with the outputs of a run against the test
cluster::

    "clustrix": {
        "needs_cluster": true,
        "stored_outputs": {"date": "2026-11-29", "against": "the project's test cluster (...)"}
    }

Each build decides, from ``CLUSTRIX_DOCS_EXECUTE``:

``all``
    Every notebook is executed; one that was not, or failed, fails the build.
``local``
    Notebooks that need no cluster are executed; the others show their stored outputs under a
    notice that says so. One that needs a cluster but has no stored run fails the build.
unset
    ``all`` when the test cluster is configured (``CLUSTRIX_TEST_SSH_HOST`` in the environment
    or in the env file ``scripts/testcluster.sh up`` writes, whose settings the build then
    exports to the notebooks), ``local`` otherwise.

The build writes what it executed to ``<doctrees>/clustrix-notebook-execution.json``.

Run as a script against the test cluster, this module refreshes the stored outputs::

    python docs/_ext/clustrix_notebooks.py [NOTEBOOK.ipynb ...]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import glob
import html
import json
import os
import re
import shlex
import socket
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

MODE_VARIABLE = "CLUSTRIX_DOCS_EXECUTE"
MODES = ("all", "local")
CLUSTER_VARIABLE = "CLUSTRIX_TEST_SSH_HOST"
REPORT_NAME = "clustrix-notebook-execution.json"
DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
NOTICE_CLASS = "clustrix-stored-outputs"

# Outputs stored in a notebook: what they must not contain, and what they must stay under.
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
STORED_NOTEBOOK_MAX_BYTES = 64_000
DEFAULT_AGAINST = "the project's test cluster (scripts/testcluster.sh: SLURM on one node, over SSH)"
NODE_NAME = "node01"  # stands for the test cluster's compute node in stored outputs
FORBIDDEN_IN_OUTPUTS = (
    "127.0.0.1",
    "/var/tmp/clustrix-testcluster",
    "PRIVATE KEY",
    "CLUSTRIX_TEST_",
)


def env_file() -> Path:
    """The settings file of the test cluster (``export NAME=value`` lines)."""
    folder = os.environ.get("CLUSTRIX_TESTCLUSTER_DIR", "/var/tmp/clustrix-testcluster")
    return Path(folder) / "env"


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """Every ``export NAME=value`` of the test cluster's env file (none without a cluster)."""
    path = env_file() if path is None else path
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                values[key] = shlex.split(value)[0] if value else ""
    return values


def cluster_settings() -> dict[str, str]:
    """The test cluster's settings: the env file's, overridden by the environment's."""
    settings = read_env_file()
    settings.update({k: v for k, v in os.environ.items() if k.startswith("CLUSTRIX_TEST")})
    return settings if settings.get(CLUSTER_VARIABLE) else {}


def execution_mode() -> tuple[str, str]:
    """``all`` or ``local``, and why."""
    chosen = os.environ.get(MODE_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"{MODE_VARIABLE}={chosen!r}: use one of {', '.join(MODES)}")
        return chosen, f"{MODE_VARIABLE}={chosen}"
    if os.environ.get(CLUSTER_VARIABLE):
        return "all", f"{CLUSTER_VARIABLE} is set"
    if read_env_file().get(CLUSTER_VARIABLE):
        return "all", f"the test cluster is configured in {env_file()}"
    return (
        "local",
        f"no cluster is configured: {CLUSTER_VARIABLE} is set neither here nor in {env_file()}",
    )


# --------------------------------------------------------------------------- notebooks


@dataclass(frozen=True)
class Notebook:
    """A document executed as a notebook, and what its metadata says about a cluster."""

    path: Path
    docname: str
    needs_cluster: bool
    stored_outputs: dict[str, Any] = field(default_factory=dict)
    unrun_cells: tuple[int, ...] = ()  # code cells without a stored run

    @property
    def stored_run_problem(self) -> str | None:
        """Why the stored outputs cannot stand for a run, or None."""
        if self.path.suffix != ".ipynb":
            return "a MyST page cannot store outputs: make it an .ipynb notebook"
        if self.unrun_cells:
            cells = ", ".join(str(i) for i in self.unrun_cells)
            which = f"cells {cells} have" if len(self.unrun_cells) > 1 else f"cell {cells} has"
            return f"code {which} no stored run (no execution count)"
        if not self.stored_outputs.get("date"):
            return 'its metadata has no "clustrix": {"stored_outputs": {"date": ...}}'
        return None


def read_notebook(path: Path) -> nbformat.NotebookNode | None:
    """The notebook in ``path``, or None when the file is not one (a plain Markdown page)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        return nbformat.reads(text, as_version=4)
    from myst_nb.core.read import is_myst_markdown_notebook, read_myst_markdown_notebook

    if is_myst_markdown_notebook(text):
        return read_myst_markdown_notebook(text)
    return None


def describe(path: Path, srcdir: Path) -> Notebook | None:
    nb = read_notebook(path)
    if nb is None:
        return None
    meta = nb.metadata.get("clustrix", {})
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    return Notebook(
        path=path,
        docname=path.relative_to(srcdir).with_suffix("").as_posix(),
        needs_cluster=bool(meta.get("needs_cluster")),
        stored_outputs=dict(meta.get("stored_outputs", {})),
        unrun_cells=tuple(i for i in code if nb.cells[i].get("execution_count") is None),
    )


def notebooks(
    srcdir: Path, exclude_patterns: list[str] | tuple[str, ...] = (), skip: tuple[Path, ...] = ()
) -> list[Notebook]:
    """Every notebook document under ``srcdir`` that Sphinx reads."""
    from sphinx.util.matching import Matcher

    excluded = Matcher(list(exclude_patterns))
    found = []
    for path in sorted([*srcdir.rglob("*.ipynb"), *srcdir.rglob("*.md")]):
        relative = path.relative_to(srcdir).as_posix()
        if excluded(relative) or any(path.is_relative_to(folder) for folder in skip):
            continue
        if any(part.startswith((".", "_")) for part in Path(relative).parts[:-1]):
            continue
        notebook = describe(path, srcdir)
        if notebook is not None:
            found.append(notebook)
    return found


# --------------------------------------------------------------------------- Sphinx


@dataclass
class Plan:
    mode: str
    reason: str
    notebooks: list[Notebook]
    not_executed: dict[str, Notebook]
    started: float


def _plan(app: Any, config: Any) -> None:
    from sphinx.errors import ConfigError
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    try:
        mode, reason = execution_mode()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    srcdir = Path(app.srcdir)
    found = notebooks(
        srcdir, config.exclude_patterns, skip=(Path(app.outdir), Path(app.doctreedir))
    )
    not_executed = {}
    if mode == "all":
        # The notebooks read the cluster's settings from the environment their kernel inherits.
        for key, value in cluster_settings().items():
            os.environ.setdefault(key, value)
        config.nb_execution_mode = "force"
        config.nb_execution_raise_on_error = True
    else:
        for notebook in found:
            if not notebook.needs_cluster:
                continue
            problem = notebook.stored_run_problem
            if problem:
                raise ConfigError(
                    f"{notebook.path} needs a cluster, and this build does not execute it "
                    f"({reason}), but it has no stored outputs to show instead: {problem}. "
                    f"Store them with `python docs/_ext/clustrix_notebooks.py {notebook.path}` "
                    "against the test cluster (scripts/testcluster.sh up), or build with a "
                    f"cluster configured and {MODE_VARIABLE}=all."
                )
            not_executed[notebook.docname] = notebook
        config.nb_execution_excludepatterns = [
            *config.nb_execution_excludepatterns,
            *(glob.escape(n.path.relative_to(srcdir).as_posix()) for n in not_executed.values()),
        ]
    app.clustrix_notebooks = Plan(mode, reason, found, not_executed, time.time())
    skipped = ", ".join(sorted(not_executed)) or "none"
    logger.info(f"notebooks: executing {mode} ({reason}); showing stored outputs of: {skipped}")


def _notice(notebook: Notebook) -> Any:
    from docutils import nodes

    stored = notebook.stored_outputs
    against = stored.get("against", "the project's test cluster")
    text = (
        "This page needs a cluster, which this build of the documentation did not use: its "
        "cells were not run in this build. The outputs shown were "
        f"stored from a run on {stored['date']} against {against}, with its host and user "
        "names shown as the example values in the code."
    )
    admonition = nodes.admonition(classes=["note", NOTICE_CLASS])
    admonition += nodes.title(text="Stored outputs: not executed in this build")
    admonition += nodes.paragraph(text=text)
    return admonition


def _add_notice(app: Any, doctree: Any) -> None:
    from docutils import nodes

    plan: Plan | None = getattr(app, "clustrix_notebooks", None)
    notebook = plan.not_executed.get(app.env.docname) if plan else None
    if notebook is None:
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        doctree.insert(0, _notice(notebook))
        return
    titles = [i for i, child in enumerate(section.children) if isinstance(child, nodes.title)]
    section.insert(titles[0] + 1 if titles else 0, _notice(notebook))


def execution_report(app: Any) -> dict[str, Any]:
    """What this build did with each notebook."""
    from myst_nb.sphinx_ import NbMetadataCollector

    plan: Plan = app.clustrix_notebooks
    documents = {}
    for notebook in plan.notebooks:
        data = NbMetadataCollector.get_doc_data(app.env).get(notebook.docname, {})
        executed = data.get("exec_data")
        documents[notebook.docname] = {
            "source": notebook.path.relative_to(app.srcdir).as_posix(),
            "needs_cluster": notebook.needs_cluster,
            "executed": executed is not None,
            "executed_in_this_build": bool(executed and executed["mtime"] >= plan.started),
            "succeeded": bool(executed and executed["succeeded"]),
            "error": executed.get("error") if executed else None,
            "runtime": executed.get("runtime") if executed else None,
            "stored_outputs_shown": notebook.docname in plan.not_executed,
        }
    return {"mode": plan.mode, "reason": plan.reason, "notebooks": documents}


def _report(app: Any, exception: BaseException | None) -> None:
    from sphinx.errors import ExtensionError

    if exception is not None or not hasattr(app, "clustrix_notebooks"):
        return
    report = execution_report(app)
    Path(app.doctreedir).mkdir(parents=True, exist_ok=True)
    (Path(app.doctreedir) / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    if report["mode"] == "all":
        failed = [
            f"{name} ({'failed: ' + str(entry['error']) if entry['executed'] else 'not executed'})"
            for name, entry in report["notebooks"].items()
            if not (entry["executed"] and entry["succeeded"])
        ]
        if failed:
            raise ExtensionError(
                f"{MODE_VARIABLE}=all, yet these notebooks did not run: {', '.join(failed)}"
            )


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", _plan)
    app.connect("doctree-read", _add_notice)
    app.connect("build-finished", _report)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


# --------------------------------------------------------------------------- stored outputs

FALLBACK = re.compile(
    r"""os\.environ\.get\(\s*["'](CLUSTRIX_TEST_\w+)["']\s*,\s*["']([^"']*)["']"""
)


def replacements(nb: nbformat.NotebookNode, settings: dict[str, str], home: Path) -> list:
    """(found, shown instead) pairs: the test machine's names, as the notebook's fallbacks."""
    source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    fallbacks = dict(FALLBACK.findall(source))
    pairs: list[tuple[str, str]] = []
    user = settings.get("CLUSTRIX_TEST_SSH_USER")
    if user:  # a user name can be a common word: replaced only where it is one
        instead = fallbacks.get("CLUSTRIX_TEST_SSH_USER", "me")
        pairs += [(f"/home/{user}/", f"/home/{instead}/"), (f"{user}@", f"{instead}@")]
    host, port = settings.get("CLUSTRIX_TEST_SSH_HOST"), settings.get("CLUSTRIX_TEST_SSH_PORT")
    if host and port and {"CLUSTRIX_TEST_SSH_HOST", "CLUSTRIX_TEST_SSH_PORT"} <= fallbacks.keys():
        shown = f"{fallbacks['CLUSTRIX_TEST_SSH_HOST']}:{fallbacks['CLUSTRIX_TEST_SSH_PORT']}"
        pairs.append((f"{host}:{port}", shown))
    for name, fallback in fallbacks.items():
        value = settings.get(name, "")
        if value and name != "CLUSTRIX_TEST_SSH_USER" and not value.isdigit():
            pairs.append((value, fallback))
    pairs.append((str(home), "~"))
    pairs.append((str(ROOT / "clustrix"), "…/site-packages/clustrix"))
    pairs.append((str(ROOT), "…"))
    pairs += [(f"{path}/", f"…/{Path(path).name}/") for path in python_paths()]
    return pairs


def python_paths() -> list[str]:
    """Where this machine's Python and its packages are, as shown in tracebacks."""
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"], paths["stdlib"]}, key=len, reverse=True)


def _hostname_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w-])")


def _clean_text(text: str, pairs: list[tuple[str, str]], hostnames: set[str]) -> str:
    for found, instead in pairs:
        text = text.replace(found, instead)
    for name in sorted(hostnames, key=len, reverse=True):
        text = _hostname_pattern(name).sub(NODE_NAME, text)
    return text


def _widget_text(states: dict[str, Any], model_id: str) -> str | None:
    """A progress bar widget (text, bar, text) as the text line it stands for, as it ended."""
    model = states.get(model_id, {})
    children = [
        states.get(child.removeprefix("IPY_MODEL_"), {})
        for child in model.get("state", {}).get("children", [])
    ]
    names = [child.get("model_name") for child in children]
    if names not in (
        ["HTMLModel", "FloatProgressModel", "HTMLModel"],
        ["HTMLModel", "IntProgressModel", "HTMLModel"],
    ):
        return None
    left, bar, right = (child["state"] for child in children)
    done = (bar.get("value") or 0) / (bar.get("max") or 1)
    filled = max(0, min(10, round(10 * done)))

    def text(value: str) -> str:
        return html.unescape(value or "").replace("\u2007", " ")

    shown = "█" * filled + " " * (10 - filled)
    return f"{text(left.get('value'))}|{shown}| {text(right.get('value'))}"


def clean_outputs(
    nb: nbformat.NotebookNode, pairs: list[tuple[str, str]], hostnames: set[str]
) -> nbformat.NotebookNode:
    """The notebook as stored: small, without widget state, timings or the test machine.

    A progress bar widget is stored as the text line of its last state.
    """
    widgets = nb.metadata.pop("widgets", {})
    states = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            data = output.get("data")
            if data is not None and WIDGET_VIEW in data:
                view = data.pop(WIDGET_VIEW)
                line = _widget_text(states, view.get("model_id", ""))
                if line is None:  # a widget without a text form of its own is left out
                    continue
                data["text/plain"] = line
            if "text" in output:
                output["text"] = _clean_text(output["text"], pairs, hostnames)
            if "traceback" in output:
                output["traceback"] = [
                    _clean_text(line, pairs, hostnames) for line in output["traceback"]
                ]
            if "evalue" in output:
                output["evalue"] = _clean_text(output["evalue"], pairs, hostnames)
            if data is not None:
                for kind, value in list(data.items()):
                    if kind.startswith("text/") and isinstance(value, str):
                        data[kind] = _clean_text(value, pairs, hostnames)
                if not data:
                    continue
            kept.append(output)
        cell.outputs = kept
    return nb


def stored_output_problems(
    path: Path, also_forbidden: tuple[str, ...] = (), hostnames: tuple[str, ...] = ()
) -> list[str]:
    """What is wrong with the outputs stored in the notebook ``path`` (nothing: an empty list)."""
    return output_problems(path.read_text(encoding="utf-8"), also_forbidden, hostnames)


def output_problems(
    text: str, also_forbidden: tuple[str, ...] = (), hostnames: tuple[str, ...] = ()
) -> list[str]:
    """What is wrong with the outputs of the notebook ``text`` (its JSON)."""
    nb = nbformat.reads(text, as_version=4)
    problems = []
    if len(text.encode()) > STORED_NOTEBOOK_MAX_BYTES:
        problems.append(f"{len(text.encode())} bytes, over {STORED_NOTEBOOK_MAX_BYTES}")
    if "widgets" in nb.metadata:
        problems.append("widget state in the notebook's metadata")
    outputs = json.dumps([cell.get("outputs", []) for cell in nb.cells], ensure_ascii=False)
    here = (str(ROOT), *(f"{path}/" for path in python_paths()))
    for forbidden in (*FORBIDDEN_IN_OUTPUTS, *here, *also_forbidden):
        if forbidden and forbidden in outputs:
            problems.append(f"the outputs contain {forbidden!r}")
    for name in hostnames:
        if _hostname_pattern(name).search(outputs):
            problems.append(f"the outputs contain the host name {name!r}")
    if WIDGET_VIEW in outputs:
        problems.append("the outputs contain a widget view, which has no state to show")
    return problems


def refresh(path: Path, settings: dict[str, str], kernel: str | None = None) -> list[str]:
    """Run the notebook against the cluster and store its cleaned outputs.

    Returns what would still show the test machine, in which case nothing is stored.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    metadata = copy.deepcopy(nb.metadata)
    with tempfile.TemporaryDirectory(prefix="clustrix-notebook-") as home:
        # A home of its own: the job store the notebook lists holds only its own jobs.
        environment = {**os.environ, **settings, "HOME": home}
        environment.pop(MODE_VARIABLE, None)
        client = NotebookClient(
            nb,
            timeout=600,
            kernel_name=kernel or nb.metadata.get("kernelspec", {}).get("name", "python3"),
            resources={"metadata": {"path": str(path.parent)}},
            record_timing=False,
            store_widget_state=True,  # read by clean_outputs, then dropped
        )
        client.execute(env=environment)
        pairs = replacements(nb, settings, Path(home))
    hostnames = {socket.gethostname(), socket.gethostname().split(".")[0]}
    clean_outputs(nb, pairs, hostnames)
    nb.metadata = metadata  # not the kernel's details of this machine
    meta = nb.metadata.setdefault("clustrix", {})
    meta["needs_cluster"] = True
    meta["stored_outputs"] = {
        "date": datetime.date.today().isoformat(),
        "against": meta.get("stored_outputs", {}).get("against", DEFAULT_AGAINST),
    }
    nbformat.validate(nb)
    text = nbformat.writes(nb) + "\n"
    problems = output_problems(text, tuple(found for found, _ in pairs), tuple(hostnames))
    if not problems:
        path.write_text(text, encoding="utf-8")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the notebooks that need a cluster against the test cluster, and "
        "store their outputs (cleaned of the test machine's names) for builds without one."
    )
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every such notebook")
    parser.add_argument("--kernel", help="kernel name (default: the notebook's)")
    args = parser.parse_args(argv)
    settings = cluster_settings()
    if not settings:
        print(f"no test cluster: {env_file()} has no {CLUSTER_VARIABLE}", file=sys.stderr)
        print("start it with: sudo bash scripts/testcluster.sh up", file=sys.stderr)
        return 2
    paths = args.notebooks or [n.path for n in notebooks(DOCS, ["_build"]) if n.needs_cluster]
    status = 0
    for path in paths:
        path = path.resolve()
        print(f"running {path.relative_to(ROOT)} ...", flush=True)
        problems = refresh(path, settings, args.kernel)
        for problem in problems:
            print(f"  not stored: {problem}; fix the notebook or this script, then run it again")
            status = 1
        if not problems:
            print(f"  stored ({path.stat().st_size} bytes)")
    return status


if __name__ == "__main__":
    sys.exit(main())
