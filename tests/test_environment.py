"""Which requirements a call needs, found without running it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import yaml

from clustrix import ConfigError, cluster
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
from clustrix.payload import pickling_for_remote_job


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


def test_runner_file_imports_nothing_from_clustrix():
    from clustrix import runner

    source = Path(runner.__file__).read_text()
    assert "import clustrix" not in source and "from clustrix" not in source
    assert "from ." not in source


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
