"""Run as a script: SIGINT (as Ctrl-C sends) during a local map of 8 two-second calls.

``interrupted_map.py FOLDER [retries|timeout|progress]``: the second argument picks
decorator options that give each call a future of its own instead of batches.

Two workers; each call writes a marker file with its start time when it starts. The script
catches the KeyboardInterrupt, waits 4 s (time for queued calls to start, if they were going
to), and prints JSON: when the interrupt was sent and when each started call started.
"""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import clustrix
from clustrix import cluster

FOLDER = sys.argv[1]
#: Decorator options: none (batched map), or e.g. "retries" / "timeout" / "progress", which
#: give each call a future of its own.
MODE = sys.argv[2] if len(sys.argv) > 2 else ""
OPTIONS = {"retries": {"retries": 1}, "timeout": {"timeout": 60}, "": {}}.get(MODE, {})


def body(i):
    with open(os.path.join(FOLDER, str(i)), "w") as marker:
        marker.write(repr(time.time()))
    time.sleep(2)
    return i


slow = cluster(**OPTIONS)(body)


def interrupt(report):
    report["interrupted_at"] = time.time()
    os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    clustrix.configure(max_parallel_jobs=2)
    report = {"interrupted": False}
    threading.Timer(1.0, interrupt, (report,)).start()
    try:
        slow.map(range(8), progress=True if MODE == "progress" else None)
    except KeyboardInterrupt:
        report["interrupted"] = True
    time.sleep(4)
    report["started"] = {p.name: float(p.read_text()) for p in Path(FOLDER).iterdir()}
    print(json.dumps(report))
