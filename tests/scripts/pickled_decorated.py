"""Run as a script: decorated functions of ``__main__`` pickled and sent to other processes.

``exact`` pickles a bare ``@cluster`` function with pickle and prints its result for 1;
``arguments`` pickles a ``@cluster(cores=1)`` function with pickle and with cloudpickle (loaded
in another interpreter, whose ``__main__`` is not this script); ``pools`` maps decorated
functions (of this script, of an importable module, and a method) in multiprocessing pools.
The last two print JSON.
"""

import json
import multiprocessing
import os
import pickle
import subprocess
import sys

import cloudpickle

from clustrix import cluster

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import decorated_module


@cluster
def bare(x):
    return x + 1


@cluster(cores=1)
def with_arguments(x):
    return x * 10


LOAD_ELSEWHERE = (
    "import sys, cloudpickle; f = cloudpickle.loads(sys.stdin.buffer.read()); "
    "print(f(2), f.effective_config().default_cores)"
)


def arguments_report():
    by_pickle = pickle.loads(pickle.dumps(with_arguments))
    by_value = cloudpickle.dumps(with_arguments)
    elsewhere = subprocess.run(
        [sys.executable, "-c", LOAD_ELSEWHERE],
        input=by_value,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return {
        "pickle": [by_pickle(1), by_pickle is with_arguments],
        "cloudpickle": cloudpickle.loads(by_value)(1),
        "cloudpickle_elsewhere": elsewhere.stdout.decode().split(),
    }


def pools_report():
    scaler = decorated_module.Scaler(5)
    report = {}
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            report[method] = [
                pool.map(bare, [1, 2]),
                pool.map(with_arguments, [1, 2]),
                pool.map(decorated_module.triple, [1, 2]),
                pool.map(scaler.scale, [1, 2]),
            ]
    return report


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "exact":
        print(pickle.loads(pickle.dumps(bare))(1))
    elif mode == "arguments":
        print(json.dumps(arguments_report()))
    elif mode == "pools":
        print(json.dumps(pools_report()))
    else:
        raise SystemExit(f"unknown mode: {mode}")
