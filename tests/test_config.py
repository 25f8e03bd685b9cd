from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import clustrix
from clustrix import (
    ClusterConfig,
    ConfigError,
    configure,
    get_config,
    load_config,
    reset_config,
    save_config,
)
from clustrix.config import FIELD_SPECS, parse_text_value, resolve_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def home(isolated_config: Path) -> Path:
    return isolated_config


def test_defaults_run_locally():
    config = get_config()
    assert config.cluster_type == "local"
    assert config.remote_work_dir == "~/clustrix"
    assert resolve_config().sources["cluster_type"] == "default"


def test_precedence_of_every_source(home, monkeypatch):
    write(
        home / ".clustrix/config.yaml",
        "default_cores: 2\ndefault_memory: 2GB\n"
        "default_time: '00:10:00'\ndefault_queue: userq\nqos: low\n",
    )
    write(
        Path("clustrix.yaml"),
        "default_memory: 3GB\ndefault_time: '00:20:00'\ndefault_queue: projectq\n",
    )
    monkeypatch.setenv("CLUSTRIX_DEFAULT_TIME", "00:30:00")
    monkeypatch.setenv("CLUSTRIX_DEFAULT_QUEUE", "envq")
    configure(default_queue="sessionq")

    resolved = resolve_config()
    config, sources = resolved.config, resolved.sources
    assert (config.qos, sources["qos"]) == ("low", str(home / ".clustrix/config.yaml"))
    assert config.default_cores == 2
    assert (config.default_memory, sources["default_memory"]) == (
        "3GB",
        str(Path.cwd() / "clustrix.yaml"),
    )
    assert (config.default_time, sources["default_time"]) == ("00:30:00", "environment")
    assert (config.default_queue, sources["default_queue"]) == ("sessionq", "configure()")

    @clustrix.cluster(queue="decoratorq", cores=3)
    def f():
        return 1

    assert f.effective_config().default_queue == "decoratorq"
    assert f.effective_config().default_cores == 3
    assert get_config().default_queue == "sessionq", "a decorator never changes the global config"


def test_user_file_variants_yml_and_json(home):
    write(home / ".clustrix/config.json", json.dumps({"default_cores": 7}))
    assert get_config().default_cores == 7
    write(home / ".clustrix/config.yml", "default_cores: 6\n")
    assert get_config().default_cores == 6, ".yml is looked up before .json"


def test_project_json_file(home):
    write(Path("clustrix.json"), '{"max_parallel_jobs": 9}')
    assert get_config().max_parallel_jobs == 9


def test_profiles_from_files_and_selection(home, monkeypatch):
    write(
        home / ".clustrix/config.yaml",
        """
default_cores: 1
profiles:
  gpu:
    default_partition: gpu
    default_cores: 8
  big:
    default_memory: 64GB
""",
    )
    write(Path("clustrix.yaml"), "profiles:\n  gpu:\n    default_cores: 16\n")
    assert get_config().default_partition is None
    gpu = resolve_config("gpu")
    assert gpu.config.default_partition == "gpu"
    assert gpu.config.default_cores == 16, "the project file's profile refines the user's"
    assert gpu.sources["default_cores"].startswith("profile 'gpu'")

    monkeypatch.setenv("CLUSTRIX_PROFILE", "big")
    assert get_config().default_memory == "64GB"

    @clustrix.cluster(profile="gpu")
    def f():
        return 1

    assert f.effective_config().default_partition == "gpu"

    with pytest.raises(ConfigError, match=r"profile 'nope' is not defined .*profiles: big, gpu"):
        resolve_config("nope")


def test_environment_values_are_typed(monkeypatch):
    monkeypatch.setenv("CLUSTRIX_DEFAULT_CORES", "12")
    monkeypatch.setenv("CLUSTRIX_CLUSTER_PORT", "2222")
    monkeypatch.setenv("CLUSTRIX_CLEANUP_ON_SUCCESS", "no")
    monkeypatch.setenv("CLUSTRIX_AUTO_PARALLEL", "TRUE")
    monkeypatch.setenv("CLUSTRIX_JOB_POLL_INTERVAL", "0.5")
    monkeypatch.setenv("CLUSTRIX_MODULE_LOADS", "gcc/12, openmpi/4")
    monkeypatch.setenv("CLUSTRIX_PRE_EXECUTION_COMMANDS", '["echo a, b", "ulimit -n 4096"]')
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES", "OMP_NUM_THREADS=4,MODE=a=b")
    monkeypatch.setenv("CLUSTRIX_DEFAULT_PARTITION", "")
    config = get_config()
    assert config.default_cores == 12
    assert config.cluster_port == 2222
    assert config.cleanup_on_success is False
    assert config.auto_parallel is True
    assert config.job_poll_interval == 0.5
    assert config.module_loads == ("gcc/12", "openmpi/4")
    assert config.pre_execution_commands == ("echo a, b", "ulimit -n 4096")
    assert dict(config.environment_variables) == {"OMP_NUM_THREADS": "4", "MODE": "a=b"}
    assert config.default_partition is None


def test_environment_json_object_for_dicts(monkeypatch):
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES", '{"A": "x,y"}')
    assert dict(get_config().environment_variables) == {"A": "x,y"}


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "CLUSTRIX_DEFAULT_CORES",
            "many",
            "default_cores='many' is not valid: expected an integer",
        ),
        ("CLUSTRIX_DEFAULT_CORES", "0", "default_cores=0 is not valid: expected an integer >= 1"),
        ("CLUSTRIX_AUTO_PARALLEL", "maybe", "auto_parallel='maybe' is not valid: expected one of"),
        ("CLUSTRIX_CLUSTER_TYPE", "lsf", "expected one of local, slurm, sge, pbs, ssh"),
        ("CLUSTRIX_ENVIRONMENT_VARIABLES", "A", "KEY=VALUE pairs"),
    ],
)
def test_environment_errors_name_the_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        get_config()
    assert f"environment variable {variable}" in str(info.value)
    assert expected in str(info.value)


def test_unknown_environment_variable_is_reported_not_swallowed(monkeypatch):
    monkeypatch.setenv("CLUSTRIX_DEFUALT_CORES", "3")
    with pytest.warns(
        UserWarning, match="CLUSTRIX_DEFUALT_CORES; did you mean CLUSTRIX_DEFAULT_CORES"
    ):
        get_config()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"cluster_type": "kubernetes"},
            "cluster_type='kubernetes' is not supported yet; supported: local, slurm, sge, pbs, ssh",
        ),
        (
            {"cluster_type": "lsf"},
            "cluster_type='lsf' is not valid: expected one of local, slurm, sge, pbs, ssh",
        ),
        (
            {"cluster_port": 70000},
            "cluster_port=70000 is not valid: expected an integer >= 1 and <= 65535",
        ),
        ({"default_cores": 2.5}, "default_cores=2.5 is not valid: expected an integer >= 1"),
        (
            {"default_memory": "lots"},
            "default_memory='lots' is not valid: expected a positive size",
        ),
        (
            {"default_time": "25:61:00"},
            "default_time='25:61:00' is not valid: expected a positive duration",
        ),
        (
            {"cleanup_on_success": "yes"},
            "cleanup_on_success='yes' is not valid: expected true or false",
        ),
        ({"job_poll_interval": 0}, "job_poll_interval=0 is not valid: expected a number >= 0.05"),
        ({"module_loads": "gcc"}, "module_loads='gcc' is not valid: expected a list of strings"),
        ({"environment_variables": {"1A": "x"}}, "expected variable names that are identifiers"),
        ({"environment_variables": ["A=1"]}, "expected a mapping of names to string values"),
        (
            {"cluster_host": ""},
            "cluster_host='' is not valid: expected a non-empty string, or null",
        ),
        ({"local_executor": "gpu"}, "expected one of auto, processes, threads, inline"),
        (
            {"defualt_cores": 2},
            "unknown setting 'defualt_cores' in configure(); did you mean 'default_cores'?",
        ),
        ({"cores": 2}, "unknown setting 'cores' in configure(); did you mean 'default_cores'?"),
        ({"zzz": 2}, "unknown setting 'zzz' in configure(); valid settings: cluster_type, "),
    ],
)
def test_configure_validation_messages(settings, expected):
    with pytest.raises(ConfigError) as info:
        configure(**settings)
    assert expected in str(info.value)
    assert info.value.field == next(iter(settings))
    assert get_config() == ClusterConfig(), "a rejected configure() changes nothing"


def test_cluster_config_constructor_names_closest_field():
    with pytest.raises(ConfigError, match="did you mean 'cluster_host'"):
        ClusterConfig(cluster_hots="x")
    with pytest.raises(ConfigError, match="default_cores=0"):
        ClusterConfig(default_cores=0)


def test_config_is_frozen():
    config = configure(environment_variables={"A": "1"})
    with pytest.raises(AttributeError):
        config.default_cores = 3
    with pytest.raises(TypeError, match="read-only"):
        config.environment_variables["B"] = "2"
    assert config.replace(default_cores=3).default_cores == 3
    with pytest.raises(ConfigError, match="did you mean 'default_cores'"):
        config.replace(default_core=3)


def test_configure_accumulates_and_reset_forgets():
    configure(default_cores=3)
    configure(default_queue="q")
    assert (get_config().default_cores, get_config().default_queue) == (3, "q")
    clustrix.reset_config()
    assert get_config().default_cores == 1


def test_broken_yaml_names_file_and_line(home):
    path = write(home / ".clustrix/config.yaml", "default_cores: 2\ndefault_memory: 'unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: invalid YAML: found unexpected end"):
        get_config()


def test_broken_json_names_file_and_line():
    path = write(Path.cwd() / "clustrix.json", '{\n  "default_cores": 2,\n  oops\n}')
    with pytest.raises(ConfigError, match=rf"^{path}:3: invalid JSON"):
        get_config()


def test_invalid_value_in_file_names_file_line_and_field(home):
    path = write(home / ".clustrix/config.yaml", "cluster_type: local\n\ndefault_memory: 8XB\n")
    with pytest.raises(ConfigError) as info:
        get_config()
    assert str(info.value).startswith(f"{path}:3: default_memory='8XB' is not valid")


def test_unknown_key_in_profile_names_line(home):
    path = write(home / ".clustrix/config.yaml", "profiles:\n  gpu:\n    partiton: gpu\n")
    with pytest.raises(ConfigError) as info:
        get_config()
    assert str(info.value) == (
        f"unknown setting 'partiton' in {path}:3; did you mean 'default_partition'?"
    )


def test_non_mapping_file_is_rejected(home):
    write(home / ".clustrix/config.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings, got list"):
        get_config()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    configure(
        cluster_type="slurm",
        cluster_host="login.example.edu",
        username="me",
        password="s3cret",
        default_cores=4,
        module_loads=["gcc/12"],
        environment_variables={"OMP": "4"},
        pre_execution_commands=["echo hi"],
        job_poll_interval=2.5,
    )
    original = get_config()
    path = save_config(tmp_path / f"saved{suffix}")
    text = path.read_text()
    assert "s3cret" not in text and "password" not in text
    assert (path.stat().st_mode & 0o777) == 0o600
    data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert data["module_loads"] == ["gcc/12"]

    clustrix.reset_config()
    loaded = load_config(path)
    assert loaded == original.replace(password=None)
    assert get_config() == loaded


def test_password_is_hidden_from_repr():
    config = ClusterConfig(password="s3cret")
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.to_dict())


def test_every_field_has_help_and_parses_from_text():
    samples = {
        "int": "3",
        "float": "1.5",
        "bool": "true",
        "list": "a,b",
        "dict": "A=1",
        "memory": "1GB",
        "time": "1h",
        "str": "x",
        "optional_str": "x",
    }
    for name, spec in FIELD_SPECS.items():
        assert spec.help.endswith("."), name
        text = spec.choices[0] if spec.kind == "choice" else samples[spec.kind]
        if name == "job_poll_interval":
            text = "1.5"
        parse_text_value(name, text)


def test_a_password_in_a_config_file_is_flagged(tmp_path):
    path = tmp_path / "with-password.yaml"
    path.write_text("cluster_host: login\npassword: hunter2\n")
    with pytest.warns(UserWarning, match=r"with-password.yaml:2: 'password' is stored in plain"):
        clustrix.config.read_config_file(path)


# ---------------------------------------------------------------------- text written into job scripts


def test_an_sge_account_with_a_line_break_is_refused_at_configure():
    with pytest.raises(ConfigError) as info:
        configure(cluster_type="sge", account="a\ntouch /tmp/marker")
    message = str(info.value)
    assert "account='a\\ntouch /tmp/marker' is not valid" in message
    assert "a name without whitespace or control characters" in message
    assert "line break" in message
    assert info.value.field == "account"
    assert get_config().account is None


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("default_partition", "gpu\ntouch /tmp/marker", "a line break"),
        ("qos", "short\r#SBATCH --mem=1T", "a line break"),
        ("account", "a\x1b[2Kb", "a control character"),
        ("default_queue", "all.q\u2028touch /tmp/marker", "a line break"),
        ("account", "two words", "whitespace"),
        ("default_queue", "all.q -l h_rt=1", "whitespace"),
    ],
)
def test_directive_settings_refuse_control_characters_and_whitespace(
    name, value, problem, monkeypatch, tmp_path
):
    with pytest.raises(ConfigError, match=problem) as info:
        configure(**{name: value})
    assert info.value.field == name
    # The same check whatever the layer: a config file...
    path = write(tmp_path / "clustrix.yaml", yaml.safe_dump({name: value}))
    with pytest.raises(ConfigError, match=rf"clustrix.yaml:1: {name}=.*{problem}"):
        load_config(path)
    # ...an environment variable (inner line breaks survive its stripping)...
    monkeypatch.setenv(f"CLUSTRIX_{name.upper()}", value)
    with pytest.raises(ConfigError, match=problem):
        get_config()
    monkeypatch.delenv(f"CLUSTRIX_{name.upper()}")
    # ...or a decorator argument, when the decorator is applied.
    if name in ("default_partition", "default_queue"):
        argument = name.removeprefix("default_")
        with pytest.raises(ConfigError, match=problem):
            clustrix.cluster(**{argument: value})(len)


def test_paths_and_names_are_one_line_but_commands_and_values_may_span_lines():
    for name in ("remote_work_dir", "python_executable", "conda_env_name", "key_file"):
        with pytest.raises(ConfigError, match="line break") as info:
            configure(**{name: "/a\nb"})
        assert info.value.field == name
    with pytest.raises(ConfigError, match="line break"):
        configure(module_loads=["gcc/12\ntouch /tmp/marker"])
    with pytest.raises(ConfigError, match="NUL"):
        configure(environment_variables={"A": "x\x00y"})
    config = configure(
        environment_variables={"PEM": "line one\nline two"},
        pre_execution_commands=["if true; then\n  echo hi\nfi"],
        password="any\ncharacters",
    )
    assert config.environment_variables["PEM"] == "line one\nline two"


@pytest.mark.parametrize("name", ["A\nB", "X;touch", "é", "A B", "A-B", "1A", ""])
def test_environment_variable_names_are_plain_shell_identifiers(name):
    with pytest.raises(ConfigError, match="variable names that are identifiers") as info:
        configure(environment_variables={name: "1"})
    assert info.value.field == "environment_variables"


# ---------------------------------------------------------------------- default_gpus


def test_default_gpus_is_validated_like_its_siblings(monkeypatch):
    assert get_config().default_gpus == 0
    assert configure(default_gpus=2).default_gpus == 2
    for value, shown in ((-1, "-1"), (1.5, "1.5"), (True, "True"), ("2", "'2'")):
        with pytest.raises(ConfigError) as info:
            configure(default_gpus=value)
        assert str(info.value) == f"default_gpus={shown} is not valid: expected an integer >= 0"
        assert info.value.field == "default_gpus"
    monkeypatch.setenv("CLUSTRIX_DEFAULT_GPUS", "many")
    with pytest.raises(ConfigError, match="environment variable CLUSTRIX_DEFAULT_GPUS"):
        get_config()
    with pytest.raises(ConfigError, match="did you mean 'default_gpus'"):
        configure(gpus=1)


def test_default_gpus_comes_from_every_layer(home, monkeypatch):
    write(
        home / ".clustrix/config.yaml",
        "default_gpus: 1\nprofiles:\n  gpu:\n    default_gpus: 4\n",
    )
    resolved = resolve_config()
    assert (resolved.config.default_gpus, resolved.sources["default_gpus"]) == (
        1,
        str(home / ".clustrix/config.yaml"),
    )
    assert resolve_config("gpu").config.default_gpus == 4
    monkeypatch.setenv("CLUSTRIX_DEFAULT_GPUS", "2")
    assert resolve_config().sources["default_gpus"] == "environment"
    assert get_config().default_gpus == 2
    configure(default_gpus=3)
    assert resolve_config().sources["default_gpus"] == "configure()"
    assert resolve_config(overrides={"default_gpus": 0}).config.default_gpus == 0
    path = write(home / "broken.yaml", "default_cores: 2\ndefault_gpus: -2\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: default_gpus=-2 is not valid"):
        load_config(path)


# ---------------------------------------------------------------------- retired settings


def test_a_retired_setting_in_a_config_file_is_ignored_with_a_warning(home):
    path = write(
        home / ".clustrix/config.yaml",
        "default_cores: 2\nprefer_local_parallel: true\nprofiles:\n"
        "  big:\n    prefer_local_parallel: false\n",
    )
    with pytest.warns(UserWarning) as caught:
        config = resolve_config("big").config
    messages = [str(warning.message) for warning in caught]
    assert (
        f"ignoring setting 'prefer_local_parallel' in {path}:2, which is no longer used"
        in (messages[0])
    )
    assert f"{path}:5" in messages[1]
    assert "auto_parallel" in messages[0]
    assert config.default_cores == 2
    assert "prefer_local_parallel" not in config.to_dict()


def test_a_retired_setting_elsewhere_is_ignored_with_a_warning_or_refused(monkeypatch):
    monkeypatch.setenv("CLUSTRIX_PREFER_LOCAL_PARALLEL", "true")
    with pytest.warns(UserWarning, match="environment variable CLUSTRIX_PREFER_LOCAL_PARALLEL"):
        get_config()
    monkeypatch.delenv("CLUSTRIX_PREFER_LOCAL_PARALLEL")
    with pytest.warns(UserWarning, match=r"'prefer_local_parallel' in configure\(\), which is no"):
        assert configure(prefer_local_parallel=True, default_cores=3).default_cores == 3
    # Building a config in code is not reading old files: there it is an error, saying why.
    with pytest.raises(
        ConfigError, match=r"'prefer_local_parallel' in ClusterConfig\(\) is no longer"
    ):
        ClusterConfig(prefer_local_parallel=True)
    with pytest.raises(ConfigError, match="no longer used") as info:
        get_config().replace(prefer_local_parallel=True)
    assert info.value.field == "prefer_local_parallel"
    assert "prefer_local_parallel" not in FIELD_SPECS


# ---------------------------------------------------------------------- cluster types and executors


def test_cluster_types_are_local_and_the_scheduler_registry():
    from clustrix import config
    from clustrix.local import KINDS
    from clustrix.schedulers import SCHEDULERS

    # (as sets: a test that takes a scheduler out and puts it back changes the dict's order)
    assert config.CLUSTER_TYPES[0] == "local"
    assert {"local", *SCHEDULERS} == set(config.CLUSTER_TYPES)
    assert FIELD_SPECS["cluster_type"].choices == config.CLUSTER_TYPES
    assert KINDS is config.LOCAL_EXECUTORS
    assert FIELD_SPECS["local_executor"].choices == config.LOCAL_EXECUTORS


def test_the_config_package_imports_alone_in_a_fresh_interpreter():
    # config imports the scheduler registry, whose modules import config's text checks.
    import subprocess
    import sys

    for module in ("clustrix.config", "clustrix.schedulers", "clustrix.resources"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


def test_a_resolved_configuration_is_reused_only_while_its_sources_stay(tmp_path, monkeypatch):
    from clustrix.config import resolve_config

    first = resolve_config()
    assert resolve_config() is first  # nothing changed: the same answer, not recomputed
    project = Path.cwd() / "clustrix.yaml"
    project.write_text("default_cores: 3\n")
    assert resolve_config().config.default_cores == 3
    project.write_text("default_cores: 5\n")  # same size, new content
    assert resolve_config().config.default_cores == 5
    monkeypatch.setenv("CLUSTRIX_DEFAULT_CORES", "6")
    assert resolve_config().config.default_cores == 6
    configure(default_cores=7)
    assert resolve_config().config.default_cores == 7
    assert resolve_config(overrides={"default_cores": 8}).config.default_cores == 8
    monkeypatch.chdir(tmp_path)  # another project folder, without a file
    monkeypatch.delenv("CLUSTRIX_DEFAULT_CORES")
    reset_config()
    assert resolve_config().config.default_cores == 1
