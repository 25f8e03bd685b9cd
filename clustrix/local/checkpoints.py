"""Where the checkpoints of local calls live (``clustrix.checkpoint`` on the local backend).

Each submission to the local backend (one call, or the calls of one map) gets a folder of its
own, ``~/.clustrix/checkpoints/<time>-<random>/``; a local pool's submissions get theirs in
the pool's folder, ``~/.clustrix/checkpoints/<pool id>/``. In it, a call's checkpoint is
``<first>-<position>.pkl`` (and its info, ``.pkl.json``): ``first`` is the index, in the
submission, of the first call of the batch the call travelled in, and ``position`` its place
in that batch (0 for a call sent on its own, as calls with retries are). A call keeps its
place when it is retried, so the retry resumes from the checkpoint the crashed attempt saved.

Places are names only: nothing is made on disk until a call checkpoints (then the folder
appears, mode 700), so the many calls that never do cost no file system access. A call's
checkpoint is removed once the call has succeeded, and the submission's folder, if empty,
once all its calls have ended (at the next submission, or when the process exits). The
checkpoint of a call that failed (after its retries) is kept, for a run of it to resume
from or to look at; folders older than ``KEEP_SECONDS`` are removed by the next process
that submits local calls.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

#: Where local calls' checkpoints live (``~`` is the user's home folder).
ROOT = "~/.clustrix/checkpoints"
#: How long a folder left by failed calls is kept, in seconds.
KEEP_SECONDS = 7 * 24 * 3600

_pruned: set[str] = set()
_pruned_lock = threading.Lock()
# Folders of submissions whose calls have all ended, to remove if empty (see ``tidy``).
_ended: list[str] = []


def root_folder() -> str:
    """``ROOT`` with ``~`` expanded (the home folder may change between calls: tests)."""
    return os.path.expanduser(ROOT)


def new_folder(parent: str | None = None) -> str:
    """A new submission's folder under ``parent`` (default ``root_folder()``), not made yet.

    The first time in this process, also removes the folders of ``parent`` older than
    ``KEEP_SECONDS`` (one listing: submissions after it cost nothing).
    """
    parent = parent or root_folder()
    with _pruned_lock:
        first = parent not in _pruned
        _pruned.add(parent)
    if first:
        prune(parent)
    tidy()
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    return os.path.join(parent, name)


def call_file(folder: str, first: int, position: int = 0) -> str:
    """The checkpoint file of call ``position`` of the batch starting at item ``first``."""
    return os.path.join(folder, f"{first}-{position}.pkl")


def batch_template(folder: str, first: int) -> str:
    """The checkpoint template (``{position}`` left in) of the batch starting at ``first``."""
    return as_template(folder) + os.sep + f"{first}-{{position}}.pkl"


def as_template(path: str) -> str:
    """``path`` as a template with no field: braces doubled, so formatting gives it back."""
    return path.replace("{", "{{").replace("}", "}}")


def remove_if_empty(folder: str) -> None:
    """Remove a submission's folder if no checkpoint is left in it (or it was never made)."""
    with contextlib.suppress(OSError):  # not there, or a failed call's checkpoint is kept
        os.rmdir(folder)


def remove_when_done(folder: str, futures: Sequence[Future]) -> None:
    """``remove_if_empty(folder)`` once every one of ``futures`` is done: at the next
    submission (``new_folder``), or when the process exits.

    Not in the futures' callbacks themselves: a callback runs after the caller has been told
    of the result, and one that waits for the file system (releasing the interpreter lock)
    would keep the callbacks after it from running by the time the caller looks.
    """
    if not futures:
        return
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            _ended.append(folder)

    for future in futures:
        future.add_done_callback(one_done)


@atexit.register
def tidy() -> None:
    """Remove the folders of the submissions that have ended, where empty."""
    while _ended:
        remove_if_empty(_ended.pop())


def prune(parent: str, now: float | None = None) -> list[str]:
    """Remove the folders of ``parent`` last changed more than ``KEEP_SECONDS`` ago (``now``
    in epoch seconds, default the current time); the paths removed. Raises nothing."""
    limit = (time.time() if now is None else now) - KEEP_SECONDS
    removed = []
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < limit:
                    shutil.rmtree(entry.path)
                    removed.append(entry.path)
    return removed
