"""Multi-factor logins: the test cluster's second sshd asks for a one-time code after the key.

Codes are time-based (pam_oath, computed here with oathtool). pam_oath refuses a code that is
not newer than the last one it accepted, and accepts codes a few steps ahead: each login here
uses the first step after the last accepted one (read from pam_oath's users file), so logins
in quick succession, from this process or an earlier one, never wait for the clock.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from testcluster_env import missing

import clustrix
from clustrix.errors import AuthenticationError, ConnectionFailedError
from clustrix.transport.ssh import SSHTransport, resolve_target

if TYPE_CHECKING:  # imported at run time, pytest would try to collect it as tests
    from .conftest import TestCluster


@pytest.fixture
def mfa(test_cluster: TestCluster) -> TestCluster:
    """The test cluster, with its multi-factor sshd and the means to make codes."""
    if not test_cluster.mfa_port or not test_cluster.oath_secret_file:
        missing("the multi-factor sshd is not running on the test cluster (component mfa)")
    if shutil.which("oathtool") is None:
        missing("oathtool is not installed (scripts/testcluster.sh up mfa installs it)")
    return test_cluster


def next_code(cluster: TestCluster) -> str:
    """A one-time code pam_oath accepts now: the current step's, or the step after the last
    code it accepted if that one is not older (waiting if that is beyond its window)."""
    step, window = cluster.totp_step, cluster.totp_window
    secret = Path(cluster.oath_secret_file).read_text().strip()
    while True:
        now = int(time.time()) // step
        first = now - window
        codes = _oathtool(secret, step, first, 2 * window)
        last = _last_accepted(cluster)
        use = max(now, first + codes.index(last) + 1) if last in codes else now
        if use - now < window - 1:
            return codes[use - first]
        time.sleep(step)  # many logins in a row: let the clock catch up


def _oathtool(secret: str, step: int, first: int, count: int) -> list[str]:
    """The codes of steps ``first`` .. ``first + count``."""
    command = ["oathtool", "--totp", "-s", f"{step}s", "-N", f"@{first * step}"]
    command += ["-w", str(count), secret]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()


def _last_accepted(cluster: TestCluster) -> str | None:
    """The last code pam_oath accepted (the 6th field of its users file), if any."""
    if not cluster.oath_users_file:
        return None
    for line in Path(cluster.oath_users_file).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == cluster.user:
            return fields[5]
    return None


class CodeHandler:
    """A login prompt handler answering with one-time codes; it records what it was asked
    and, to check they are not kept anywhere, the codes it gave."""

    def __init__(self, cluster: TestCluster, codes: list[str] | None = None) -> None:
        self.cluster = cluster
        self.codes = codes  # given codes first (wrong ones), then computed ones
        self.asked: list[list[tuple[str, bool]]] = []
        self.given: list[str] = []

    def __call__(self, title: str, instructions: str, prompts: list[tuple[str, bool]]):
        self.asked.append(list(prompts))
        code = self.codes.pop(0) if self.codes else next_code(self.cluster)
        self.given.append(code)
        return [code for _ in prompts]


def mfa_transport(cluster: TestCluster, prompt=None) -> SSHTransport:
    target = resolve_target(cluster.host, cluster.mfa_port, cluster.user, cluster.key_file)
    return SSHTransport(target, known_hosts=Path(cluster.known_hosts), prompt=prompt)


def test_key_and_one_time_code_log_in_and_the_code_is_kept_nowhere(mfa, caplog):
    caplog.set_level(logging.DEBUG)
    handler = CodeHandler(mfa)
    transport = mfa_transport(mfa, prompt=handler)
    try:
        assert transport.run("echo logged in").stdout == "logged in\n"
        assert transport.run("echo again").stdout == "again\n"  # the same connection
    finally:
        transport.close()
    assert len(handler.asked) == 1, "one login, one question round with prompts"
    [(text, echo)] = handler.asked[0]
    assert "One-time password" in text and echo is False
    code = handler.given[0]
    assert code not in caplog.text
    assert code not in repr(vars(transport))


def test_a_wrong_code_is_refused_and_the_next_connection_asks_again(mfa):
    handler = CodeHandler(mfa, codes=["000000" if next_code(mfa) != "000000" else "111111"])
    transport = mfa_transport(mfa, prompt=handler)
    with pytest.raises(AuthenticationError, match="refused the answers to its login prompts"):
        transport.run("true")
    try:
        assert transport.run("echo in").stdout == "in\n"
        assert len(handler.asked) == 2
        transport.close()  # a connection made again asks again
        assert transport.run("echo in again").stdout == "in again\n"
        assert len(handler.asked) == 3
    finally:
        transport.close()


def test_a_dropped_connection_asks_again_when_it_is_made_again(mfa):
    handler = CodeHandler(mfa)
    transport = mfa_transport(mfa, prompt=handler)
    try:
        assert transport.run("echo in").stdout == "in\n"
        # The server ends the login's own sshd process: the connection drops.
        with pytest.raises(ConnectionFailedError):
            transport.run("kill -9 $PPID; sleep 5")
        assert transport.run("echo back").stdout == "back\n"
        assert len(handler.asked) == 2
    finally:
        transport.close()


def test_without_a_handler_or_terminal_the_error_says_how_to_answer(mfa):
    transport = mfa_transport(mfa)  # pytest's stdin is not a terminal
    with pytest.raises(AuthenticationError, match=r"set_login_prompt\(handler\)") as info:
        transport.run("true")
    assert "one-time code" in str(info.value)


def test_a_handler_that_returns_the_wrong_shape_abandons_the_login(mfa):
    transport = mfa_transport(mfa, prompt=lambda title, instructions, prompts: "123456")
    with pytest.raises(AuthenticationError, match="must return a list of strings"):
        transport.run("true")
    transport = mfa_transport(mfa, prompt=lambda title, instructions, prompts: [])
    with pytest.raises(AuthenticationError, match=r"must return 1 string\(s\)"):
        transport.run("true")


def test_an_exception_in_the_handler_reaches_the_caller(mfa):
    def refuse(title, instructions, prompts):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mfa_transport(mfa, prompt=refuse).run("true")


def test_set_login_prompt_answers_for_a_slurm_job(mfa):
    if not mfa.slurm:
        missing("SLURM is not running on the test cluster")
    handler = CodeHandler(mfa)
    clustrix.set_login_prompt(handler)
    clustrix.configure(**mfa.settings("slurm", cluster_port=mfa.mfa_port))

    @clustrix.cluster(cores=1)
    def where_am_i(x):
        import os

        return x * 2, os.environ.get("SLURM_JOB_ID")

    doubled, job_id = where_am_i(21)
    assert doubled == 42 and job_id
    assert len(handler.asked) == 1, "one shared connection for submission, polls and results"
