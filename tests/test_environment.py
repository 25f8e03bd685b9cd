"""Which requirements a call needs, found without running it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import yaml

from clustrix import ConfigError, cluster
from clustrix.config import ClusterConfig
from clustrix.environment import (
    bootstrap_script,
    classify_modules,
    environment_key,
    modules_named_in_pickle,
    modules_used_by,
    plan_environment,
    python_version,
    runner_requirement,
)
from clustrix.errors import EnvironmentSetupError
from clustrix.payload import pickling_for_remote_job
from clustrix.wheels import (
    RemotePlatform,
    download_wheels,
    index_hint,
    parse_probe,
    pip_download_command,
    probe_script,
)


def uses_numpy_and_yaml(x):
    import json as _json  # stdlib: never a requirement

    return yaml.safe_dump(np.asarray(x).tolist()) + _json.dumps(1)


def test_modules_used_by_a_function_include_imports_and_globals():
    modules = modules_used_by(uses_numpy_and_yaml)
    assert {"numpy", "yaml", "json"} <= modules


def test_modules_named_in_a_pickled_argument():
    payload = cloudpickle.dumps(((np.arange(3),), {}))
    assert "numpy" in {m.split(".")[0] for m in modules_named_in_pickle(payload)}


def test_classify_pins_installed_distributions_and_skips_stdlib():
    install, local = classify_modules({"numpy", "yaml", "json", "os.path", "clustrix", "__main__"})
    assert install["numpy"] == np.__version__
    assert install["PyYAML"] == yaml.__version__
    assert "json" not in install and "clustrix" not in install
    assert local == set()


def test_auto_plan_pins_client_versions_and_the_runner():
    plan = plan_environment(
        uses_numpy_and_yaml, "auto", python_executable=None, conda_env_name=None, payload_modules=()
    )
    assert f"numpy=={np.__version__}" in plan.requirements
    assert f"PyYAML=={yaml.__version__}" in plan.requirements
    assert runner_requirement() in plan.requirements
    assert plan.key == environment_key(plan.requirements)
    assert plan.builds_venv


def test_explicit_list_and_requirements_file(tmp_path):
    listed = plan_environment(
        len, ["six==1.16.0"], python_executable=None, conda_env_name=None, payload_modules=()
    )
    assert listed.requirements == tuple(sorted(["six==1.16.0", runner_requirement()]))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nsix==1.16.0  # inline\n\n")
    from_file = plan_environment(
        len, str(requirements), python_executable=None, conda_env_name=None, payload_modules=()
    )
    assert from_file.requirements == listed.requirements
    assert from_file.key == listed.key
    with pytest.raises(ConfigError, match="cannot read requirements file"):
        plan_environment(
            len,
            str(tmp_path / "missing.txt"),
            python_executable=None,
            conda_env_name=None,
            payload_modules=(),
        )


def test_existing_interpreters_skip_the_build():
    assert (
        plan_environment(
            len,
            "auto",
            python_executable="/opt/py/bin/python",
            conda_env_name=None,
            payload_modules=(),
        ).python
        == "/opt/py/bin/python"
    )
    conda = plan_environment(
        len, "auto", python_executable=None, conda_env_name="sim", payload_modules=()
    )
    assert conda.conda_env == "sim" and not conda.builds_venv


def test_key_depends_on_the_requirement_set_only():
    assert environment_key(["a==1", "b==2"]) == environment_key(["b==2", "a==1"])
    assert environment_key(["a==1"]) != environment_key(["a==2"])


def test_nested_decorated_functions_travel_without_clustrix():
    inner = cluster(lambda x: x + 1)

    def outer(x):
        return inner(x)

    with pickling_for_remote_job():
        payload = cloudpickle.dumps(outer)
    assert not any(m.startswith("clustrix") for m in modules_named_in_pickle(payload))
    assert cloudpickle.loads(payload)(1) == 2


def test_bootstrap_script_is_valid_bash_with_quoted_paths():
    script = bootstrap_script("/home/u/it's here/envs/abc", ("six==1.16.0",), ["export A='b'"])
    assert "env_dir='/home/u/it'\"'\"'s here/envs/abc'" in script
    subprocess.run(["bash", "-n", "-c", script], check=True)


def test_runner_reports_version_skew_before_unpickling(tmp_path):
    """The runner alone, as a compute node runs it, with a job.json from another Python."""
    from clustrix import runner

    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text(
        json.dumps({"versions": {"python": "2.7", "cloudpickle": "3.1.0"}})
    )
    (job / "function.pkl").write_bytes(b"not a pickle: must never be loaded")
    result = subprocess.run(
        [sys.executable, runner.__file__, str(job)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 3
    assert "the client runs Python 2.7 but the job runs Python 3." in result.stderr
    batch = cloudpickle.loads((job / "result-0.pkl").read_bytes())
    ((ok, failure),) = batch["outcomes"]
    assert not ok and failure["type"] == "clustrix.VersionMismatchError"


def test_runner_file_imports_nothing_from_clustrix_but_its_job_side_modules():
    # The runner is shipped as one file: at module level it imports nothing of Clustrix;
    # within functions only the standalone modules a call may use in a job, which come with
    # the runtime zip (checkpoints, requeues).
    import ast

    from clustrix import runner

    tree = ast.parse(Path(runner.__file__).read_text())
    top_level = {id(node) for node in tree.body}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        ours = {name for name in modules if name.split(".")[0] == "clustrix"}
        assert not (ours and id(node) in top_level), ours
        imported |= ours
    assert imported == {
        "clustrix.checkpointing",
        "clustrix.requeue.Attempts",
        "clustrix.requeue.watch",
    }


# ---------------------------------------------------------------------- the build, run locally


def _fake_python(bin_dir: Path, pip_installs: bool) -> Path:
    """A ``python3.X`` on PATH whose venv's pip records the requirements file it is given
    and, unless ``pip_installs``, installs nothing while reporting success."""
    bin_dir.mkdir()
    seen = bin_dir / "seen-requirements.txt"
    real = sys.executable
    venv_python = textwrap.dedent(
        f"""\
        #!/bin/bash
        if [ "$1" = "-m" ]; then cp "${{@: -1}}" {seen}; exit 0; fi
        exec {real} {"" if pip_installs else "-S"} "$@"
        """
    )
    fake = bin_dir / f"python{python_version()}"
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            if [ "$1" = "-c" ]; then exec {real} "$@"; fi
            if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
              mkdir -p "$3/bin"
              cat > "$3/bin/python" <<'EOF'
            {venv_python}EOF
              chmod +x "$3/bin/python"; exit 0
            fi
            exit 1
            """
        )
    )
    fake.chmod(0o755)
    return seen


def _build(tmp_path: Path, requirements: tuple[str, ...]) -> subprocess.CompletedProcess:
    script = bootstrap_script(str(tmp_path / "envs" / "key"), requirements, [])
    path = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": path}, timeout=60
    )


def test_requirement_lines_never_run_as_shell_code(tmp_path):
    # The here-doc that once held the requirements ended at a line reading like its
    # terminator, and the next line ran on the login node.
    seen = _fake_python(tmp_path / "bin", pip_installs=True)
    marker = tmp_path / "marker"
    requirements = (
        "CLUSTRIX_REQUIREMENTS",
        f"touch {marker}",
        f"$(touch {marker}-2)",
        f"`touch {marker}-3`",
        "six==1.16.0; python_version >= '3' and sys_platform != \"x\"",
        runner_requirement(),
    )
    result = _build(tmp_path, requirements)
    assert not list(tmp_path.glob("marker*")), result.stderr
    assert seen.read_text().splitlines() == list(requirements)
    assert result.returncode == 0 and "BUILT" in result.stdout, result.stderr


def test_a_build_without_the_clients_cloudpickle_is_never_marked_ready(tmp_path):
    # pip reported success, but the environment cannot import cloudpickle: jobs could never
    # read their payloads, so the build fails and leaves nothing to be reused.
    _fake_python(tmp_path / "bin", pip_installs=False)
    result = _build(tmp_path, (runner_requirement(),))
    assert result.returncode == 96
    assert "the environment has no cloudpickle" in result.stderr
    assert not (tmp_path / "envs" / "key").exists()
    again = _build(tmp_path, (runner_requirement(),))
    assert again.returncode == 96 and "REUSED" not in again.stdout


@pytest.mark.parametrize(
    "requirement", ["six\n", "six\r", "six==1.16.0\x00", "six\x1b[2K", "six\u2028touch /tmp/m", " "]
)
def test_requirements_that_are_not_one_line_are_refused_before_anything_runs(requirement):
    with pytest.raises(ConfigError) as info:
        plan_environment(
            lambda: 1,
            ["numpy==2.0.0", requirement],
            python_executable=None,
            conda_env_name=None,
            payload_modules=(),
        )
    assert info.value.field == "environment"
    assert repr(requirement) in str(info.value)


# ---------------------------------------------------------------------- where and from what


def test_a_build_from_shipped_wheels_never_asks_an_index():
    offline = bootstrap_script("/w/envs/k", ("six==1.16.0",), [], wheels="/w/envs/k.build-1/w s")
    assert "wheels='/w/envs/k.build-1/w s'" in offline
    assert offline.count('--no-index --find-links "$wheels"') == 2  # uv and pip alike
    subprocess.run(["bash", "-n", "-c", offline], check=True)
    online = bootstrap_script("/w/envs/k", ("six==1.16.0",), [])
    assert "--no-index" not in online and "wheels=" not in online


def test_the_settings_take_only_known_places():
    assert ClusterConfig().environment_build == "login"
    assert ClusterConfig().package_source == "index"
    with pytest.raises(ConfigError, match="environment_build"):
        ClusterConfig(environment_build="compute")
    with pytest.raises(ConfigError, match="package_source"):
        ClusterConfig(package_source="offline")


def _build_job_script(cluster_type: str) -> str:
    from clustrix.remote.buildjobs import BuildJob, build_resources
    from clustrix.schedulers import ScriptContext, scheduler_for

    scheduler = scheduler_for(cluster_type)
    job = BuildJob(None, scheduler, "/w/envs/k", "/w/envs/k.build-1")  # type: ignore[arg-type]
    context = ScriptContext("clustrix-env-k", "/w/envs/k.build-1", "", account="acct", qos="q1")
    return job.job_script(build_resources("short", "serial.q"), context)


def test_a_slurm_build_job_asks_for_little_and_runs_the_bootstrap():
    script = _build_job_script("slurm")
    for directive in (
        "--cpus-per-task=1",
        "--mem=2048M",
        "--time=00:30:00",
        "--partition=short",
        "--account=acct",
        "--qos=q1",
        "--output=scheduler.log",
    ):
        assert f"#SBATCH {directive}\n" in script
    assert "--array" not in script
    body = script.split("\ncd ", 1)[1]
    assert 'export CLUSTRIX_BUILD_JOB="${SLURM_JOB_ID:-}"' in body
    assert "bash bootstrap.sh > build.out 2> build.err\n" in body
    assert body.rstrip().endswith("mv build.exit.part build.exit")
    subprocess.run(["bash", "-n", "-c", script], check=True)


def test_an_sge_build_job_uses_the_queue_and_names_itself():
    from clustrix.schedulers import ScriptContext, scheduler_for

    script = _build_job_script("sge")
    assert "#$ -q serial.q\n" in script and "#$ -l h_rt=00:30:00\n" in script
    assert 'CLUSTRIX_BUILD_JOB="${JOB_ID:-}"' in script
    context = ScriptContext("clustrix-env-k", "/w", "")
    assert "-N clustrix-env-k " in scheduler_for("sge").submit_command("build.sh", context)


def _platform(machine="x86_64", libc="glibc", version="2.36"):
    return RemotePlatform(machine, libc, version, "cpython", python_version())


def test_platform_tags_follow_pep_600_and_the_legacy_names():
    tags = _platform().platform_tags()
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"} <= set(tags)
    assert "linux_x86_64" not in tags  # built for one machine, not for the cluster
    arm = _platform("aarch64", version="2.28").platform_tags()
    assert arm[0] == "manylinux_2_28_aarch64" and arm[-2:] == [
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
    ]
    assert _platform().name == f"cp{python_version().replace('.', '')}-manylinux_2_36_x86_64"
    with pytest.raises(EnvironmentSetupError, match="needs a Linux cluster with glibc"):
        _platform(libc="", version="").platform_tags()


def test_the_probe_finds_this_machines_platform_or_a_ready_environment(tmp_path):
    env_dir = tmp_path / "envs" / "k"
    script = probe_script(str(env_dir), ["echo a setup command talks"])
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    output = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": path}, check=True
    ).stdout
    found = parse_probe(output)
    assert found is not None and found.python == python_version()
    assert found.machine == platform.machine() and found.implementation == "cpython"
    (env_dir).mkdir(parents=True)
    (env_dir / ".clustrix-ready").write_text("")
    again = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert parse_probe(again.stdout) is None
    with pytest.raises(EnvironmentSetupError, match="could not tell the cluster's platform"):
        parse_probe("bash: python3: command not found\n")


def test_pip_download_asks_for_wheels_of_the_clusters_platform_and_python(tmp_path):
    command = pip_download_command(
        _platform(), tmp_path / "req.txt", tmp_path / "dest", tmp_path / "cache"
    )
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    text = " ".join(command)
    assert "--only-binary=:all:" in command
    assert f"--implementation cp --python-version {python_version()}" in text
    assert "--platform manylinux_2_36_x86_64 --platform manylinux_2_35_x86_64" in text
    assert f"--find-links {tmp_path / 'cache'} --dest {tmp_path / 'dest'}" in text
    assert command[-2:] == ["-r", str(tmp_path / "req.txt")]


def test_a_requirement_without_a_wheel_is_named_with_what_to_do(tmp_path, monkeypatch):
    # pip with no index at all (and no configuration): nothing can be found anywhere.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(EnvironmentSetupError) as info:
        download_wheels(["clustrix-no-wheel-xyz==1.0"], _platform(), "k1", str(tmp_path / "c"))
    message = str(info.value)
    assert "no wheel of clustrix-no-wheel-xyz==1.0" in message
    assert "manylinux_2_36_x86_64" in message and "build a wheel" in message
    assert "package_source='index'" in message


def test_downloaded_wheel_sets_are_reused_without_pip(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / _platform().name
    (cache / "sets").mkdir(parents=True)
    (cache / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"wheel")
    (cache / "sets" / "k2").write_text("six-1.16.0-py2.py3-none-any.whl\n")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran although the set was cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    wheels = download_wheels(["six==1.16.0"], _platform(), "k2", str(tmp_path / "cache"))
    assert wheels == {"six-1.16.0-py2.py3-none-any.whl": b"wheel"}


def test_a_build_failing_for_want_of_an_index_suggests_shipping_wheels():
    log = "ERROR: No matching distribution found for six==1.16.0"
    assert "package_source='client'" in index_hint(log, "index")
    assert index_hint(log, "client") == "" and index_hint("SyntaxError", "index") == ""
