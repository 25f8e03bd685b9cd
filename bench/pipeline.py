"""Three stages of 50 calls on the test SLURM: submitted at once with dependencies, against
waiting on the client for each stage before submitting the next. Prints the ratio."""

from __future__ import annotations

import time

from testcluster import configure_slurm

import clustrix


@clustrix.cluster
def stage_one(x):
    return x + 1


@clustrix.cluster
def stage_two(x):
    return x * 2


@clustrix.cluster
def stage_three(x):
    return x - 3


def chained(items: int) -> list[int]:
    """The pipeline submitted at once: the scheduler runs each stage after the last."""
    first = stage_one.submit_map(range(items))
    second = stage_two.submit_map(first)
    third = stage_three.submit_map(second)
    return [future.result() for future in third]


def waited(items: int) -> list[int]:
    """Each stage's results brought back to the client before the next is submitted."""
    first = stage_one.map(range(items))
    second = stage_two.map(first)
    return stage_three.map(second)


def main(items: int = 50, rounds: int = 3) -> None:
    configure_slurm()
    chained(2)  # warm the connection and the environment
    timings = {"chained": [], "waited": []}
    for _ in range(rounds):
        for name, run in (("chained", chained), ("waited", waited)):
            # Each run starts from a quiet queue: the last one's queued elements are
            # cancelled and its folders removed after its results came back.
            time.sleep(2)
            started = time.perf_counter()
            assert run(items) == [(x + 1) * 2 - 3 for x in range(items)]
            timings[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in timings.items()}
    print(
        f"3 stages x {items} calls: chained {best['chained']:.1f} s, waited {best['waited']:.1f} s"
        f" (best of {rounds}; all: "
        + ", ".join(f"{name} {' '.join(f'{t:.1f}' for t in ts)}" for name, ts in timings.items())
        + ")"
    )
    print(f"ratio chained/waited: {best['chained'] / best['waited']:.2f}x (target <= 0.7x)")


if __name__ == "__main__":
    main()
