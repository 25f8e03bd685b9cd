"""Clustrix's own code for jobs whose payload needs it, shipped with the job as a zip.

A job normally needs only the runner and cloudpickle. A function whose loops Clustrix
parallelised refers to Clustrix's loop runner, so that job must be able to import parts of
Clustrix, on a machine where Clustrix is not installed. The job folder then gets
``clustrix-runtime.zip``, which the runner puts on ``sys.path``.

The zip's ``clustrix/__init__.py`` is not the package's: the real one imports the client
side (configuration, SSH), whose dependencies the job's environment does not have. It only
offers what a running call may use (``clustrix.checkpoint``, ``restore``, ``on_requeue``). The
modules a job imports (``clustrix.loops``, ``clustrix.local``, ``clustrix.runner``,
``clustrix.checkpointing``...) use only the standard library and cloudpickle.
"""

from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

from . import layout

ARCHIVE_NAME = layout.RUNTIME_ZIP
_PACKAGE = Path(__file__).resolve().parent
# The package's public names a running call may use; the modules they come from need only
# the standard library and cloudpickle.
_RUNTIME_INIT = (
    b'"""Clustrix modules shipped with a job (see clustrix.job_runtime)."""\n'
    b"from .checkpointing import checkpoint, on_requeue, restore\n"
)


def payload_needs_runtime(payload_modules: Iterable[str]) -> bool:
    """Whether a payload naming these modules (``modules_named_in_pickle``) imports Clustrix."""
    return any(m == "clustrix" or m.startswith("clustrix.") for m in payload_modules)


@functools.lru_cache(maxsize=1)
def runtime_archive() -> bytes:
    """The package's modules as a zip (fixed timestamps: same code, same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(_PACKAGE.rglob("*.py")):
            relative = path.relative_to(_PACKAGE.parent).as_posix()
            content = _RUNTIME_INIT if relative == "clustrix/__init__.py" else path.read_bytes()
            info = zipfile.ZipInfo(relative, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def shipped_runtime(payload_modules: Iterable[str], always: bool = False) -> dict[str, bytes]:
    """The job folder's extra files: the runtime zip when the payload needs it (or
    ``always``: the runner itself needs it, for a job that requeues itself), else none."""
    needed = always or payload_needs_runtime(payload_modules)
    return {ARCHIVE_NAME: runtime_archive()} if needed else {}
