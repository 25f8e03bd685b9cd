"""Run as a script: decorated functions defined in __main__ must work in worker processes."""

import json
import os
import sys

import numpy as np

import clustrix
from clustrix import cluster


class MainModuleError(Exception):
    """An exception class that exists only in this script's __main__."""


@cluster
def plain(x):
    return {"value": x * 2, "pid": os.getpid()}


@cluster(executor="processes")
def raises_main_error(x):
    raise MainModuleError(f"bad input {x}")


def make_scaler(factor):
    offset = np.arange(3)

    @cluster(executor="processes")
    def scale(values):
        return (values * factor + offset).tolist()

    return scale


def outer():
    def nested(x):
        return x + 100

    return cluster(executor="processes")(nested)


if __name__ == "__main__":
    report = {"caller_pid": os.getpid()}
    report["plain"] = plain(21)
    report["closure"] = make_scaler(10)(np.ones(3))
    report["lambda"] = cluster(executor="processes")(lambda a, b=1: a - b)(10, b=3)
    report["nested"] = outer()(1)
    report["map"] = make_scaler(2).map([np.zeros(3), np.ones(3)])
    try:
        raises_main_error(7)
    except MainModuleError as exc:
        report["error"] = {
            "type": type(exc).__name__,
            "is_same_class": type(exc) is MainModuleError,
            "message": str(exc),
            "remote_traceback": str(exc.__cause__),
        }
    report["clustrix_version"] = clustrix.__version__
    json.dump(report, sys.stdout)
