"""User text reaching job scripts, directive lines and environment builds on the real
schedulers: it is written as data, or refused before anything is staged; it never runs."""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
import uuid
from typing import TYPE_CHECKING

import pytest

import clustrix
from clustrix import ConfigError, Resources, cluster
from clustrix.backend import backend_for
from clustrix.calls import CallSpec
from clustrix.config import FIELD_SPECS, FieldSpec
from clustrix.environment import environment_key, with_runner_requirement
from clustrix.errors import EnvironmentSetupError

if TYPE_CHECKING:
    from .conftest import TestCluster


def _marker() -> str:
    return f"/tmp/clustrix-marker-{uuid.uuid4().hex}"


def _exists(test_cluster: TestCluster, path: str) -> bool:
    command = f"test -e {shlex.quote(path)}"
    return test_cluster.transport().run(command, check=False).exit_code == 0


def _work_dir(test_cluster: TestCluster) -> str:
    transport = test_cluster.transport()
    return test_cluster.work_dir.replace("~", transport.home(), 1)


def _job_folders(test_cluster: TestCluster) -> set[str]:
    listing = test_cluster.transport().run(
        f"ls -1 {shlex.quote(_work_dir(test_cluster))} 2>/dev/null", check=False
    )
    return {name for name in listing.stdout.split() if name != "envs"}


def _without_config_check(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Let ``name`` take any text, as it could before settings were checked, to show what
    the scheduler's own check of every directive does."""
    monkeypatch.setitem(FIELD_SPECS, name, FieldSpec("optional_str", "unchecked", text="multiline"))


@cluster(time="00:05:00")
def add(a, b):
    return a + b


# ---------------------------------------------------------------------- settings on directive lines


def test_an_sge_account_with_a_line_break_never_runs_in_a_job(on_sge, monkeypatch):
    marker = _marker()
    account = f"a\ntouch {marker}"
    with pytest.raises(ConfigError, match=r"account='a\\ntouch .*line break"):
        clustrix.configure(account=account)
    assert clustrix.get_config().account is None

    # Past the settings' check, the script's own check of every directive refuses it, before
    # anything is staged: no job folder, no job, no marker.
    before = _job_folders(on_sge)
    _without_config_check(monkeypatch, "account")
    clustrix.configure(account=account)
    with pytest.raises(ConfigError, match=r"sge setting account=.*cannot be written on a '#\$'"):
        add(1, 2)
    assert _job_folders(on_sge) == before
    assert not _exists(on_sge, marker)


@pytest.mark.parametrize(
    ("setting", "fixture"),
    [("default_partition", "on_slurm"), ("qos", "on_slurm"), ("account", "on_pbs")],
)
def test_directive_settings_with_a_line_break_never_reach_a_script(request, setting, fixture):
    test_cluster = request.getfixturevalue(fixture)
    monkeypatch = request.getfixturevalue("monkeypatch")
    marker = _marker()
    value = f"x\ntouch {marker}"
    with pytest.raises(ConfigError, match=rf"{setting}=.*line break"):
        clustrix.configure(**{setting: value})
    before = _job_folders(test_cluster)
    _without_config_check(monkeypatch, setting)
    clustrix.configure(**{setting: value})
    with pytest.raises(ConfigError, match="cannot be written on a '#"):
        add(1, 2)
    assert _job_folders(test_cluster) == before
    assert not _exists(test_cluster, marker)


def test_a_decorator_partition_with_a_line_break_is_refused_before_staging(on_slurm):
    marker = _marker()

    before = _job_folders(on_slurm)
    # Refused when the decorator is applied, before any call can stage anything.
    with pytest.raises(ConfigError, match=r"partition=.*line break"):
        cluster(time="00:05:00", partition=f"debug\ntouch {marker}")(len)
    assert _job_folders(on_slurm) == before
    assert not _exists(on_slurm, marker)


@pytest.mark.parametrize("name", ["A\nB", "X;touch {marker}", "É"])
def test_environment_variable_names_never_reach_a_script(on_slurm, name):
    marker = _marker()
    name = name.format(marker=marker)
    with pytest.raises(ConfigError, match="variable names that are identifiers"):
        clustrix.configure(environment_variables={name: "1"})
    # Past the settings' check, the line that would export it refuses it: neither the
    # environment build on the login node nor a job runs.
    config = copy.copy(clustrix.get_config())  # a copy: the configuration in use stays valid
    object.__setattr__(config, "environment_variables", {name: "1"})
    before = _job_folders(on_slurm)
    with pytest.raises(ConfigError, match="expected a variable name"):
        backend_for(config).submit(
            add.__wrapped__,
            [((1, 2), {})],
            CallSpec(resources=Resources.parse(time="00:05:00")),
            config,
        )
    assert _job_folders(on_slurm) == before
    assert not _exists(on_slurm, marker) and not _exists(on_slurm, f"{marker}=1")


def test_sge_reads_no_directive_from_a_variable_spanning_lines(on_sge):
    # qsub reads '#$' lines anywhere in a script, even inside a quoted value.
    clustrix.configure(environment_variables={"NOTE": "one\n#$ -A someone-else"})
    before = _job_folders(on_sge)
    with pytest.raises(ConfigError, match=r"would start with '#\$'"):
        add(1, 2)
    assert _job_folders(on_sge) == before


# ---------------------------------------------------------------------- option values


def _comment_of_this_job() -> str:
    # squeue prints the comment exactly (scontrol pads it with a space).
    shown = subprocess.run(
        ["squeue", "--noheader", "--format=%k", f"--jobs={os.environ['SLURM_JOB_ID']}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return shown.removesuffix("\n")


def test_a_slurm_comment_with_a_space_is_stored_as_given(on_slurm):
    @cluster(time="00:05:00", comment="two words")
    def comment():
        return _comment_of_this_job()

    future = comment.submit()
    assert future.result(timeout=300) == "two words"
    shown = on_slurm.transport().run(
        f"squeue --noheader --states=all --format=%k --jobs={future.scheduler_id}"
    )
    assert shown.stdout == "two words\n"


def test_slurm_option_values_with_quotes_hashes_and_equals_are_stored_as_given(on_slurm):
    text = 'say "hi" # not a comment; k=v=w \\ it\'s $(echo no) `echo no`'

    @cluster(time="00:05:00", comment=text)
    def comment():
        return _comment_of_this_job()

    assert comment() == text


def test_sge_values_with_whitespace_are_refused_before_staging(on_sge):
    # qsub splits directive lines on whitespace, and Grid Engine takes no account, queue or
    # option value with a space (a quoted "-A 'two words'" is refused by qmaster too).
    before = _job_folders(on_sge)

    with pytest.raises(ConfigError, match=r"queue='all q'.*whitespace"):
        cluster(time="00:05:00", queue="all q")(len)

    @cluster(time="00:05:00", project="two words")
    def in_a_project():
        return 1

    with pytest.raises(ConfigError, match=r"sge option project='two words'.*whitespace"):
        in_a_project()
    with pytest.raises(ConfigError, match=r"account='two words'.*whitespace"):
        clustrix.configure(account="two words")
    assert _job_folders(on_sge) == before


# ---------------------------------------------------------------------- requirements


def _environment_folder(test_cluster: TestCluster, requirements: list[str]) -> str:
    key = environment_key(with_runner_requirement(requirements))
    return f"{_work_dir(test_cluster)}/envs/{key}"


def test_a_requirement_never_runs_on_the_login_node(on_slurm):
    marker = _marker()
    requirements = ["CLUSTRIX_REQUIREMENTS", f"touch {marker}"]

    @cluster(time="00:05:00", environment=requirements)
    def f():
        return 1

    # pip refuses the line "touch ..." as a requirement: the build fails, saying so.
    with pytest.raises(EnvironmentSetupError) as info:
        f()
    assert "touch" in info.value.stderr_tail
    assert not _exists(on_slurm, marker)
    assert not _exists(on_slurm, f"{_environment_folder(on_slurm, requirements)}/.clustrix-ready")


def test_requirements_file_lines_never_run_on_the_login_node(on_slurm, tmp_path):
    marker = _marker()
    lines = ["CLUSTRIX_REQUIREMENTS", f"touch {marker}", f"$(touch {marker})", f"`touch {marker}`"]
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")

    @cluster(time="00:05:00", environment=str(path))
    def f():
        return 1

    with pytest.raises(EnvironmentSetupError):
        f()
    assert not _exists(on_slurm, marker)
    assert not _exists(on_slurm, f"{_environment_folder(on_slurm, lines)}/.clustrix-ready")


def test_a_requirement_with_quotes_in_its_marker_is_installed(on_slurm):
    @cluster(time="00:05:00", environment=["six==1.16.0 ; python_version >= '3'"])
    def six_version():
        import six

        return six.__version__

    assert six_version() == "1.16.0"


def test_a_build_without_the_clients_cloudpickle_is_never_ready_and_is_retried(on_slurm):
    # Another cloudpickle minor version: jobs could never read their payloads, so the build
    # fails instead of leaving an environment every later job would fail in.
    requirements = ["cloudpickle==2.2.1"]

    @cluster(time="00:05:00", environment=requirements)
    def f():
        return 1

    folder = _environment_folder(on_slurm, requirements)
    for _ in range(2):  # the second call builds again rather than reusing a broken one
        with pytest.raises(EnvironmentSetupError) as info:
            f()
        assert "the environment has cloudpickle 2.2.1" in info.value.stderr_tail
        assert not _exists(on_slurm, f"{folder}/.clustrix-ready")
        assert not _exists(on_slurm, folder)


def test_a_failed_build_is_never_ready_and_is_retried(on_slurm):
    requirements = ["clustrix-no-such-package-xyz==0.0.1"]

    @cluster(time="00:05:00", environment=requirements)
    def f():
        return 1

    folder = _environment_folder(on_slurm, requirements)
    log = shlex.quote(f"{folder}.log")
    stamps = []
    for _ in range(2):
        with pytest.raises(EnvironmentSetupError):
            f()
        assert not _exists(on_slurm, folder)
        stamps.append(on_slurm.transport().run(f"stat -c %y {log}").stdout)
    assert stamps[0] != stamps[1]  # built (and logged) again


def test_a_build_that_ends_early_without_error_is_never_ready(on_slurm):
    # A setup command that ends the build script with status 0 (an `exit 0` in a site's
    # module script, say): the environment was never built, so it must not count as ready.
    clustrix.configure(pre_execution_commands=["exit 0"])
    requirements = ["six"]

    @cluster(time="00:05:00", environment=requirements)
    def f():
        return 1

    with pytest.raises(EnvironmentSetupError, match="never reported ready"):
        f()
    assert not _exists(on_slurm, f"{_environment_folder(on_slurm, requirements)}/.clustrix-ready")
