"""Run as a script: start local worker processes, print their pids, then die without cleanup.

Usage: ``local_worker_lifetime.py HOW [timeout] [watchdog-only]``. ``HOW`` is ``sigkill`` or
``os_exit``; ``timeout`` also starts a call with a timeout (which runs in a process of its
own); ``watchdog-only`` disables the parent-death signal, as on a system without one. The
script dies once it reads a line on stdin, so the caller can first see the workers alive.
"""

import multiprocessing
import os
import signal
import sys
import time

from clustrix import cluster


@cluster
def pid_of(_):
    return os.getpid()


@cluster(timeout=600)
def sleep_long(seconds):
    time.sleep(seconds)


if __name__ == "__main__":
    how, options = sys.argv[1], set(sys.argv[2:])
    if "watchdog-only" in options:
        from clustrix.local import lifetime

        lifetime._PR_SET_PDEATHSIG = 0  # not a prctl option: the call fails, as off Linux
    pid_of(1)
    if "timeout" in options:
        sleep_long.submit(300)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    sys.stdin.readline()
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "os_exit":
        os._exit(0)
    raise SystemExit(f"unknown way to die: {how}")
