"""The status poller's order of work: every job's findings first, then the commands they
asked for, in one round trip."""

from __future__ import annotations

import types

from clustrix.remote.job import Findings
from clustrix.remote.poller import Poller
from clustrix.schedulers.slurm import SlurmScheduler


class _Transport:
    where = "login"

    def __init__(self, events: list) -> None:
        self.events = events

    def run(self, command: str, **options) -> types.SimpleNamespace:
        self.events.append(("run", command))
        return types.SimpleNamespace(stdout="", exit_code=0)


def _job(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        job_id=name, pending_tasks=lambda: [], submitted=0.0, poll_interval=1.0, next_check=0.0
    )


def _poller(events: list) -> Poller:
    def on_check(job, found) -> None:
        events.append(("checked", job.job_id))
        poller.run_after_check([f"free {job.job_id}", f"cancel {job.job_id}"])

    poller = Poller(_Transport(events), SlurmScheduler(), on_check, lambda *_: None)
    poller._ask = lambda jobs: Findings({}, {}, {})  # type: ignore[method-assign]
    return poller


def test_commands_asked_for_in_a_check_run_after_every_job_had_its_findings():
    events: list = []
    _poller(events).check([_job("a"), _job("b")])
    assert events == [
        ("checked", "a"),
        ("checked", "b"),
        ("run", "{ free a; }; { cancel a; }; { free b; }; { cancel b; }"),
    ]
