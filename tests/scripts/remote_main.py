"""Run as a script with CLUSTRIX_* settings pointing at a cluster; prints a JSON report."""

import json
import sys

import numpy as np

from clustrix import cluster


class ScriptError(Exception):
    """Exists only in this script's __main__."""


def make_weighted_sum(weights):
    bias = 0.5

    @cluster(cores=1, memory="500MB", time="00:05:00")
    def weighted_sum(values):
        import socket

        return float(np.dot(values, weights) + bias), socket.gethostname()

    return weighted_sum


@cluster(time="00:05:00")
def fail(message):
    raise ScriptError(message)


if __name__ == "__main__":
    weighted_sum = make_weighted_sum(np.array([1.0, 2.0, 3.0]))
    future = weighted_sum.submit(np.array([1.0, 1.0, 1.0]))
    value, host = future.result(timeout=300)
    report = {"value": value, "host": host, "backend": future.backend}
    try:
        fail("it went wrong remotely")
    except ScriptError as exc:
        report["error"] = {
            "same_class": type(exc) is ScriptError,
            "message": str(exc),
            "remote_traceback": str(exc.__cause__),
        }
    json.dump(report, sys.stdout)
