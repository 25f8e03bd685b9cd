from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import clustrix
from clustrix.cli import main, set_yaml_setting


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(main, list(args), env=env, catch_exceptions=False)


def run_cli(*args: str, home: Path, extra_env: dict[str, str] | None = None):
    """The installed console script, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_")}
    env.update(HOME=str(home), **(extra_env or {}))
    return subprocess.run(
        [sys.executable, "-m", "clustrix", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_version(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"clustrix, version {clustrix.__version__}"


def test_config_show_lists_every_setting_with_its_source(runner, isolated_config):
    (isolated_config / ".clustrix").mkdir()
    (isolated_config / ".clustrix/config.yaml").write_text("default_cores: 3\n")
    result = invoke(runner, "config", "show", env={"CLUSTRIX_DEFAULT_QUEUE": "short"})
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert rows["default_cores"] == ["3", str(isolated_config / ".clustrix/config.yaml")]
    assert rows["default_queue"] == ["short", "environment"]
    assert rows["cluster_type"] == ["local", "default"]
    assert len(rows) == len(clustrix.ClusterConfig.__dataclass_fields__)


def test_config_show_json_and_password_masking(runner):
    result = invoke(runner, "config", "show", "--json", env={"CLUSTRIX_PASSWORD": "s3cret"})
    assert result.exit_code == 0
    assert "s3cret" not in result.output
    data = json.loads(result.output)
    assert data["password"] == {"value": "***", "source": "environment"}
    assert data["max_parallel_jobs"] == {"value": 100, "source": "default"}


def test_config_init_writes_a_valid_commented_template_and_refuses_overwrite(
    runner, isolated_config
):
    result = invoke(runner, "config", "init")
    path = isolated_config / ".clustrix/config.yaml"
    assert result.exit_code == 0 and str(path) in result.output
    text = path.read_text()
    assert "# default_cores: 1" in text and "# Time limit per job" in text
    assert yaml.safe_load(text) is None, "everything is commented out"
    assert clustrix.get_config() == clustrix.ClusterConfig()

    again = runner.invoke(main, ["config", "init"])
    assert again.exit_code == 1
    assert "already exists; use --force" in again.output
    assert invoke(runner, "config", "init", "--force").exit_code == 0


def test_uncommenting_every_template_line_gives_the_defaults(runner, isolated_config):
    invoke(runner, "config", "init")
    path = isolated_config / ".clustrix/config.yaml"
    lines = [
        line[2:]
        for line in path.read_text().splitlines()
        if line.startswith("# ")
        and ": " in line
        and line[2:].split(":")[0] in clustrix.ClusterConfig.__dataclass_fields__
    ]
    data = yaml.safe_load("\n".join(lines))
    data.pop("password")
    assert clustrix.ClusterConfig(**data) == clustrix.ClusterConfig()


def test_config_set_validates_and_persists(runner, isolated_config):
    invoke(runner, "config", "init")
    assert invoke(runner, "config", "set", "default_cores", "4").exit_code == 0
    assert invoke(runner, "config", "set", "module_loads", "gcc/12,python/3.11").exit_code == 0
    assert invoke(runner, "config", "set", "environment_variables", "A=1,B=2").exit_code == 0
    assert invoke(runner, "config", "set", "default_cores", "6").exit_code == 0
    config = clustrix.get_config()
    assert config.default_cores == 6
    assert config.module_loads == ("gcc/12", "python/3.11")
    assert dict(config.environment_variables) == {"A": "1", "B": "2"}
    text = (isolated_config / ".clustrix/config.yaml").read_text()
    assert "# Time limit per job" in text, "comments survive"
    assert [line for line in text.splitlines() if line.startswith("default_cores")] == [
        "default_cores: 6"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["default_cores", "zero"], "default_cores='zero' is not valid: expected an integer"),
        (["defualt_cores", "2"], "unknown setting 'defualt_cores'"),
        (["cluster_type", "kubernetes"], "not supported yet"),
        (["password", "x"], "never saved to disk"),
    ],
)
def test_config_set_rejects_bad_input_without_writing(runner, isolated_config, args, message):
    result = runner.invoke(main, ["config", "set", *args])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output
    assert not (isolated_config / ".clustrix/config.yaml").exists()


def test_config_set_into_a_json_user_file(runner, isolated_config):
    (isolated_config / ".clustrix").mkdir()
    path = isolated_config / ".clustrix/config.json"
    path.write_text('{"default_cores": 2}')
    assert invoke(runner, "config", "set", "max_parallel_jobs", "5").exit_code == 0
    assert json.loads(path.read_text()) == {"default_cores": 2, "max_parallel_jobs": 5}


def test_set_yaml_setting_replaces_block_values():
    text = "# header\nmodule_loads:\n  - a\n  - b\ndefault_cores: 2\n"
    updated = set_yaml_setting(text, "module_loads", ["c"])
    assert yaml.safe_load(updated) == {"module_loads": ["c"], "default_cores": 2}
    assert updated.startswith("# header\n")


def test_load_validates_then_installs(runner, isolated_config, tmp_path):
    source = tmp_path / "team.yaml"
    source.write_text(
        "# team settings\ncluster_type: slurm\ncluster_host: login.example.edu\n"
        "profiles:\n  gpu:\n    default_partition: gpu\n"
    )
    (isolated_config / ".clustrix").mkdir()
    (isolated_config / ".clustrix/config.yaml").write_text("default_cores: 2\n")
    result = invoke(runner, "load", str(source))
    assert result.exit_code == 0
    assert "loaded 2 setting(s) and 1 profile(s)" in result.output
    assert (isolated_config / ".clustrix/config.yaml.bak").read_text() == "default_cores: 2\n"
    assert "# team settings" in (isolated_config / ".clustrix/config.yaml").read_text()
    assert clustrix.get_config().cluster_host == "login.example.edu"
    assert clustrix.get_config("gpu").default_partition == "gpu"


def test_load_json_and_reject_invalid(runner, isolated_config, tmp_path):
    good = tmp_path / "team.json"
    good.write_text(json.dumps({"default_cores": 8, "module_loads": ["x"]}))
    assert invoke(runner, "load", str(good)).exit_code == 0
    assert clustrix.get_config().default_cores == 8

    bad = tmp_path / "bad.yaml"
    bad.write_text("default_cores: 8\ndefault_memory: lots\n")
    result = runner.invoke(main, ["load", str(bad)])
    assert result.exit_code == 1
    assert f"Error: {bad}:2: default_memory='lots' is not valid" in result.output
    assert clustrix.get_config().default_cores == 8, "the installed config is untouched"


def test_status_local(runner):
    result = invoke(runner, "status")
    assert result.exit_code == 0
    assert "target: local machine" in result.output
    assert "status: ready" in result.output


def test_status_of_an_unreachable_cluster_is_one_line(runner):
    env = {
        "CLUSTRIX_CLUSTER_TYPE": "slurm",
        "CLUSTRIX_CLUSTER_HOST": "127.0.0.1",
        "CLUSTRIX_CLUSTER_PORT": "1",
    }
    result = runner.invoke(main, ["status"], env=env)
    assert result.exit_code == 1
    assert "Error: cannot connect to" in result.output
    assert "Traceback" not in result.output


def test_broken_config_is_one_line_error(runner, isolated_config):
    (isolated_config / ".clustrix").mkdir()
    (isolated_config / ".clustrix/config.yaml").write_text("default_cores: [\n")
    result = runner.invoke(main, ["config", "show"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {isolated_config}/.clustrix/config.yaml:")
    assert len(result.output.strip().splitlines()) == 1


def test_real_subprocess_commands(isolated_config):
    version = run_cli("--version", home=isolated_config)
    assert version.returncode == 0 and clustrix.__version__ in version.stdout

    assert run_cli("config", "init", home=isolated_config).returncode == 0
    set_result = run_cli("config", "set", "default_memory", "16GB", home=isolated_config)
    assert set_result.returncode == 0, set_result.stderr
    shown = run_cli("config", "show", "--json", home=isolated_config)
    assert json.loads(shown.stdout)["default_memory"]["value"] == "16GB"

    team = isolated_config / "team.yaml"
    team.write_text("default_queue: long\n")
    assert run_cli("load", str(team), home=isolated_config).returncode == 0
    status = run_cli("status", home=isolated_config)
    assert status.returncode == 0 and "status: ready" in status.stdout

    bad = run_cli("config", "set", "default_cores", "-1", home=isolated_config)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "Error: default_cores=-1 is not valid: expected an integer >= 1"

    env_error = run_cli(
        "config", "show", home=isolated_config, extra_env={"CLUSTRIX_CLUSTER_PORT": "x"}
    )
    assert env_error.returncode == 1 and "Traceback" not in env_error.stderr
    assert "environment variable CLUSTRIX_CLUSTER_PORT" in env_error.stderr


def test_console_script_is_installed(isolated_config):
    import shutil

    script = shutil.which("clustrix")
    assert script is not None, "pip install put a clustrix command on PATH"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0


def test_explain_names_each_loop_and_its_verdict(runner, isolated_config, monkeypatch):
    module = Path.cwd() / "sims_for_explain.py"
    module.write_text(
        "import clustrix\n\n"
        "@clustrix.cluster\n"
        "def sweep(n):\n"
        "    out = []\n"
        "    total = 0\n"
        "    for i in range(n):\n"
        "        out.append(i * 2)\n"
        "        total += i\n"
        "    x = 1\n"
        "    for j in range(3):\n"
        "        x = x * 2 + j\n"
        "    return out, total, x\n"
    )
    monkeypatch.syspath_prepend(str(Path.cwd()))
    result = runner.invoke(main, ["explain", "sims_for_explain:sweep"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "line 7 [for, level 0] `range(n)`: parallel" in result.output
    assert "reductions: total (+=)" in result.output and "collectors: out (append)" in result.output
    # A value carried from one iteration to the next is an effect replayed in order.
    assert "line 11 [for, level 0] `range(3)`: parallel" in result.output
    assert "reductions: x (= ...)" in result.output

    import importlib

    sims = importlib.import_module("sims_for_explain")
    assert "estimated iterations: 10" in sims.sweep.explain(10)

    missing = runner.invoke(main, ["explain", "sims_for_explain:nope"])
    assert missing.exit_code == 1 and "has no 'nope'" in missing.output
    bad = runner.invoke(main, ["explain", "no_colon"])
    assert bad.exit_code == 2 and "expected MODULE:FUNCTION" in bad.output
