"""Registers the "clustrix" joblib backend without importing joblib.

Importing Clustrix must stay cheap and must work where joblib is not installed, so it never
imports joblib itself. When joblib is already imported, ``import clustrix`` registers the
backend at once; otherwise it leaves a one-time import hook that registers the backend right
after joblib's own first import, wherever that import happens (``import sklearn`` imports
joblib, for instance). The hook only looks at the name ``joblib``, never changes what is
imported, and removes itself once the backend is registered.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

logger = logging.getLogger("clustrix")


def register_joblib(make_default: bool = False) -> None:
    """Register the ``"clustrix"`` joblib backend (imports joblib; it must be installed).

    With ``make_default=True``, every ``joblib.Parallel`` without an explicit backend uses it.
    """
    from .joblib_backend import register

    register(make_default=make_default)


def _register_quietly() -> None:
    # Called while someone imports joblib: a failure here must not break their import.
    try:
        register_joblib()
    except Exception as exc:
        logger.debug("could not register the clustrix joblib backend: %s", exc)


class _RegisterAfterJoblibImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; makes the loader found for ``joblib`` register the backend."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname != "joblib":
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        loader: Any = spec.loader if spec is not None else None
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return None  # not installed, or an unusual loader: let the import go on unaided

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _stop_watching()
            _register_quietly()

        try:
            # Only this loader instance, created for this one import, is changed.
            loader.exec_module = exec_then_register
        except AttributeError:
            return None
        return spec


def _stop_watching() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterJoblibImport)]


def watch_for_joblib() -> None:
    """Register the backend now if joblib is imported, else as soon as it is."""
    if sys.modules.get("joblib") is not None:
        _register_quietly()
    elif not any(isinstance(f, _RegisterAfterJoblibImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterJoblibImport())
