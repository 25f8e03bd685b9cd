"""Estimate pi by Monte Carlo on all local cores with one decorator.

Run:  python examples/quickstart.py
The same code runs on a cluster once one is configured (see the README).
"""

from __future__ import annotations

import math
import random
import time

from clustrix import cluster

CHUNKS = 8
SAMPLES_PER_CHUNK = 1_000_000


@cluster(cores=1, memory="512MB", time="00:10:00")
def count_inside(seed: int, samples: int) -> int:
    """Count random points of the unit square that fall inside the quarter circle."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(samples):
        x, y = rng.random(), rng.random()
        inside += x * x + y * y <= 1.0
    return inside


def main() -> None:
    seeds = list(range(CHUNKS))
    samples = [SAMPLES_PER_CHUNK] * CHUNKS

    started = time.perf_counter()
    serial = [count_inside.__wrapped__(s, n) for s, n in zip(seeds, samples, strict=True)]
    serial_seconds = time.perf_counter() - started

    started = time.perf_counter()
    parallel = count_inside.map(seeds, samples)  # one call per chunk, on worker processes
    parallel_seconds = time.perf_counter() - started

    assert parallel == serial, "same seeds, same counts, wherever they ran"
    estimate = 4 * sum(parallel) / (CHUNKS * SAMPLES_PER_CHUNK)
    print(f"pi ~ {estimate:.5f} (error {abs(estimate - math.pi):.5f}) from {CHUNKS} chunks")
    print(
        f"serial: {serial_seconds:.2f} s, clustrix map: {parallel_seconds:.2f} s, "
        f"speed-up {serial_seconds / parallel_seconds:.2f}x"
    )


if __name__ == "__main__":
    main()
