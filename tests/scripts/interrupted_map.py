"""Run as a script: SIGINT (as Ctrl-C sends) during a local map of 8 two-second calls.

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


@cluster
def slow(i):
    with open(os.path.join(FOLDER, str(i)), "w") as marker:
        marker.write(repr(time.time()))
    time.sleep(2)
    return i


def interrupt(report):
    report["interrupted_at"] = time.time()
    os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    clustrix.configure(max_parallel_jobs=2)
    report = {"interrupted": False}
    threading.Timer(1.0, interrupt, (report,)).start()
    try:
        slow.map(range(8))
    except KeyboardInterrupt:
        report["interrupted"] = True
    time.sleep(4)
    report["started"] = {p.name: float(p.read_text()) for p in Path(FOLDER).iterdir()}
    print(json.dumps(report))
