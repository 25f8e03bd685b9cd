"""Sphinx configuration of the Clustrix documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html``. Notebooks are executed at
every build, so a cell that fails fails the build. Those that need a cluster (the SLURM
tutorial) are executed when the test cluster is configured (``scripts/testcluster.sh up``) or
``CLUSTRIX_DOCS_EXECUTE=all``; otherwise their stored outputs are shown, under a notice that says
so (``_ext/clustrix_notebooks.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

import clustrix  # noqa: E402

project = "Clustrix"
author = "Clustrix developers"
copyright = "Clustrix developers"
release = clustrix.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "clustrix_docs",
    "clustrix_notebooks",
]

exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# --------------------------------------------------------------------------- HTML

html_theme = "furo"
html_title = f"Clustrix {release}"
html_static_path: list[str] = []

# --------------------------------------------------------------------------- MyST and notebooks

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Every notebook runs at every build; an exception in a cell fails the build. The extension
# clustrix_notebooks leaves out those that need a cluster when none is configured (it adds them
# to nb_execution_excludepatterns) and fails a build that should have run all but did not.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 300

# --------------------------------------------------------------------------- autodoc

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
