"""Configuration: the settings, where each comes from, and their validation.

The effective configuration of a call is computed from layers, lowest first::

    built-in defaults
    < ~/.clustrix/config.{yaml,yml,json}
    < ./clustrix.{yaml,yml,json}
    < the selected profile (from the files' ``profiles:`` sections)
    < CLUSTRIX_<FIELD> environment variables
    < configure() / load_config()
    < arguments of the @cluster decorator

Nothing is mutated behind the user's back: each layer is read and validated, and a new frozen
``ClusterConfig`` is built. Mistakes are reported when a layer is created, naming the field,
the value and what is allowed (and the file and line for config files).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import threading
import unicodedata
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .resources import parse_memory, parse_time

CLUSTER_TYPES = ("local", "slurm", "sge", "pbs", "ssh")
PLANNED_CLUSTER_TYPES = ("kubernetes",)
LOCAL_EXECUTORS = ("auto", "processes", "threads", "inline")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
ENV_PREFIX = "CLUSTRIX_"
PROFILE_ENV = "CLUSTRIX_PROFILE"
# CLUSTRIX_* variables that are not settings, so they are not reported as typos.
NON_FIELD_ENV = {PROFILE_ENV, "CLUSTRIX_REQUIRE_CLUSTER", "CLUSTRIX_IN_JOB"}
NON_FIELD_ENV_PREFIXES = ("CLUSTRIX_TEST",)

# Names people naturally write for a field, so errors can point at the real one.
_ALIASES = {
    "cores": "default_cores",
    "memory": "default_memory",
    "mem": "default_memory",
    "time": "default_time",
    "walltime": "default_time",
    "partition": "default_partition",
    "queue": "default_queue",
    "host": "cluster_host",
    "hostname": "cluster_host",
    "port": "cluster_port",
    "user": "username",
    "scheduler": "cluster_type",
    "executor": "local_executor",
}


@dataclass(frozen=True)
class FieldSpec:
    """How one setting is typed, bounded and explained."""

    kind: str  # str, optional_str, int, float, bool, list, dict, choice, memory, time
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    nullable: bool = False  # for int settings whose absence means "ask someone else"
    #: What the text of a str, list or dict setting may hold: "line" (one line without
    #: control characters), "name" (a line without whitespace either: it is written on
    #: scheduler directive lines) or "multiline" (shell commands and quoted values: anything
    #: but NUL). Secrets are not checked.
    text: str = "line"


FIELD_SPECS: dict[str, FieldSpec] = {
    "cluster_type": FieldSpec(
        "choice",
        "Where calls run: the local machine, a scheduler, or a plain SSH host.",
        choices=CLUSTER_TYPES,
    ),
    "cluster_host": FieldSpec(
        "optional_str", "Login node or SSH host (a ~/.ssh/config alias works)."
    ),
    "cluster_port": FieldSpec(
        "int",
        "SSH port of cluster_host; default: ~/.ssh/config, else 22.",
        minimum=1,
        maximum=65535,
        nullable=True,
    ),
    "username": FieldSpec(
        "optional_str", "SSH user name; defaults to ~/.ssh/config or the local user."
    ),
    "key_file": FieldSpec("optional_str", "Private key file for SSH ('~' is expanded)."),
    "host_key_policy": FieldSpec(
        "choice",
        "What to do with a host key missing from known_hosts: refuse it (strict), or record "
        "it and connect (accept-new). A changed key is always refused.",
        choices=("strict", "accept-new"),
    ),
    "known_hosts_file": FieldSpec(
        "optional_str",
        "known_hosts file to verify and record host keys (default ~/.ssh/known_hosts).",
    ),
    "password": FieldSpec(
        "optional_str", "SSH password; prefer keys. Never written by save_config.", secret=True
    ),
    "default_cores": FieldSpec("int", "CPU cores per job.", minimum=1),
    "default_memory": FieldSpec("memory", "Memory per job, e.g. '4GB' (1GB = 1024MB)."),
    "default_time": FieldSpec("time", "Time limit per job, e.g. '01:00:00' or '90m'."),
    "default_partition": FieldSpec("optional_str", "SLURM partition.", text="name"),
    "default_queue": FieldSpec("optional_str", "SGE or PBS queue.", text="name"),
    "account": FieldSpec("optional_str", "Scheduler account to charge.", text="name"),
    "qos": FieldSpec("optional_str", "SLURM quality of service.", text="name"),
    "remote_work_dir": FieldSpec(
        "str", "Folder for job files on the cluster; under home, which compute nodes share."
    ),
    "conda_env_name": FieldSpec("optional_str", "Existing conda environment to run jobs in."),
    "python_executable": FieldSpec("optional_str", "Existing Python interpreter to run jobs with."),
    "auto_parallel": FieldSpec("bool", "Default for @cluster(parallel=...): spread safe loops."),
    "max_parallel_jobs": FieldSpec(
        "int", "Most jobs or local workers running at once for one batch.", minimum=1
    ),
    "job_poll_interval": FieldSpec(
        "float", "Longest wait in seconds between two status checks.", minimum=0.05
    ),
    "status_check_patience": FieldSpec(
        "float",
        "Seconds status checks may keep failing (the scheduler or the connection down) "
        "before the calls waiting on them fail with the last error; the jobs are left alone "
        "and can be re-attached with get_job.",
        minimum=1,
    ),
    "cleanup_on_success": FieldSpec(
        "bool", "Delete a job's remote folder after its result is fetched."
    ),
    "prefer_local_parallel": FieldSpec(
        "bool", "Run loop parallelisation on local cores even when a cluster is configured."
    ),
    "local_parallel_threshold": FieldSpec(
        "float",
        "Seconds a parallel loop must be expected to save before it is parallelised.",
        minimum=0,
    ),
    "local_executor": FieldSpec(
        "choice",
        "How local calls run: auto (processes, or threads when the call cannot be pickled), "
        "processes, threads, or inline (in the caller, for debugging).",
        choices=LOCAL_EXECUTORS,
    ),
    "max_array_size": FieldSpec(
        "int",
        "Most tasks in one job array; default: what the scheduler reports (else 1000).",
        minimum=1,
        nullable=True,
    ),
    "job_store": FieldSpec("str", "SQLite file recording every remote job, to find it again."),
    "progress": FieldSpec(
        "choice",
        "Progress bar for long maps: auto (in terminals and notebooks), on, or off.",
        choices=("auto", "on", "off"),
    ),
    "cancel_on_interrupt": FieldSpec(
        "bool", "Cancel the remote job when Ctrl-C interrupts a call waiting for it."
    ),
    "echo_job_output": FieldSpec(
        "bool", "Print a remote job's stdout and stderr locally when it finishes."
    ),
    "environment_variables": FieldSpec(
        "dict", "Variables exported in every job script.", text="multiline"
    ),
    "module_loads": FieldSpec("list", "Environment modules loaded in every job script."),
    "pre_execution_commands": FieldSpec(
        "list", "Shell commands run before every job.", text="multiline"
    ),
}


@dataclass(frozen=True)
class ClusterConfig:
    """The settings of one call, validated; build a changed copy with ``replace``."""

    cluster_type: str = "local"
    cluster_host: str | None = None
    cluster_port: int | None = None
    username: str | None = None
    key_file: str | None = None
    host_key_policy: str = "strict"
    known_hosts_file: str | None = None
    password: str | None = field(default=None, repr=False)
    default_cores: int = 1
    default_memory: str = "4GB"
    default_time: str = "01:00:00"
    default_partition: str | None = None
    default_queue: str | None = None
    account: str | None = None
    qos: str | None = None
    remote_work_dir: str = "~/clustrix"
    conda_env_name: str | None = None
    python_executable: str | None = None
    auto_parallel: bool = False
    max_parallel_jobs: int = 100
    job_poll_interval: float = 5.0
    status_check_patience: float = 600.0
    cleanup_on_success: bool = True
    prefer_local_parallel: bool = False
    local_parallel_threshold: float = 0.1
    local_executor: str = "auto"
    max_array_size: int | None = None
    job_store: str = "~/.clustrix/jobs.db"
    progress: str = "auto"
    cancel_on_interrupt: bool = True
    echo_job_output: bool = False
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    module_loads: tuple[str, ...] = ()
    pre_execution_commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for spec_field in fields(self):
            value = getattr(self, spec_field.name)
            object.__setattr__(self, spec_field.name, validate_value(spec_field.name, value))

    def replace(self, **changes: Any) -> ClusterConfig:
        """A validated copy with ``changes`` applied; unknown names are reported."""
        check_names(changes, "the changes")
        return replace(self, **changes)

    def to_dict(self, *, include_secrets: bool = False) -> dict[str, Any]:
        """Plain data (lists and dicts) suitable for YAML or JSON."""
        return {
            f.name: plain_value(getattr(self, f.name))
            for f in fields(self)
            if include_secrets or not FIELD_SPECS[f.name].secret
        }


FIELD_NAMES = tuple(f.name for f in fields(ClusterConfig))
assert set(FIELD_NAMES) == set(FIELD_SPECS), "every setting needs a FieldSpec"
DEFAULT_SOURCE = "default"

_generated_init = ClusterConfig.__init__


@functools.wraps(_generated_init)
def _init_with_name_check(self: ClusterConfig, *args: Any, **kwargs: Any) -> None:
    # The generated __init__ would raise a bare TypeError for a typo; name the closest setting.
    check_names(kwargs, "ClusterConfig()")
    _generated_init(self, *args, **kwargs)


ClusterConfig.__init__ = _init_with_name_check  # type: ignore[method-assign]


# --------------------------------------------------------------------------- validation


def plain_value(value: Any) -> Any:
    """Tuples and read-only mappings as plain lists and dicts, for YAML and JSON."""
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain_value(item) for key, item in value.items()}
    return value


def _closest(name: str) -> str | None:
    if name in _ALIASES:
        return _ALIASES[name]
    matches = difflib.get_close_matches(name, FIELD_NAMES, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_field_error(name: str, where: str) -> ConfigError:
    hint = _closest(name)
    suggestion = (
        f"; did you mean '{hint}'?" if hint else f"; valid settings: {', '.join(FIELD_NAMES)}"
    )
    return ConfigError(f"unknown setting '{name}' in {where}{suggestion}", field=name, value=None)


def check_names(values: Mapping[str, Any], where: str) -> None:
    for name in values:
        if name not in FIELD_SPECS:
            raise unknown_field_error(str(name), where)


def _invalid(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(
        f"{name}={value!r} is not valid: expected {allowed}", field=name, value=value
    )


_TEXT_ALLOWED = {
    "line": "one line of text without control characters",
    "name": "a name without whitespace or control characters",
    "multiline": "text without NUL characters",
}
#: Shell variable names: what ``export NAME=...`` accepts in every shell.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def text_problem(text: str, rule: str = "line") -> str | None:
    """What makes ``text`` unfit for ``rule`` (see ``FieldSpec.text``), or None if nothing.

    Line breaks, NUL and the other control characters are what could end a directive or a
    script line early, or start a new one; a "name" holds no whitespace either, because
    qsub splits directive lines on it.
    """
    for char in text:
        if char == "\0":
            return "a NUL character"
        if rule == "multiline":
            continue
        category = unicodedata.category(char)
        if char in "\n\r\v\f\x1c\x1d\x1e\x85" or category in ("Zl", "Zp"):
            return "a line break"
        if category == "Cc":
            return f"a control character ({char!r})"
        if rule == "name" and char.isspace():
            return "whitespace"
    return None


def _check_text(name: str, value: Any, spec: FieldSpec, text: str, allowed: str) -> None:
    """Refuse ``text`` (``value`` or a part of it) unfit for the setting's text rule;
    ``allowed`` says what is expected, with ``{}`` where the rule's description goes."""
    if spec.secret:
        return
    problem = text_problem(text, spec.text)
    if problem:
        raise _invalid(
            name, value, allowed.format(_TEXT_ALLOWED[spec.text]) + f" (it contains {problem})"
        )


def validate_value(name: str, value: Any) -> Any:
    """Check ``value`` for setting ``name`` and return its normalised form."""
    spec = FIELD_SPECS[name]
    kind = spec.kind
    if kind == "choice":
        if value in PLANNED_CLUSTER_TYPES:
            raise ConfigError(
                f"{name}={value!r} is not supported yet; supported: {', '.join(spec.choices)}",
                field=name,
                value=value,
            )
        if value not in spec.choices:
            raise _invalid(name, value, "one of " + ", ".join(spec.choices))
        return value
    if kind == "optional_str":
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _invalid(name, value, "a non-empty string, or null")
        _check_text(name, value, spec, value, "{}, or null")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise _invalid(name, value, "a non-empty string")
        _check_text(name, value, spec, value, "{}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _invalid(name, value, "true or false")
        return value
    if kind in ("int", "float"):
        if value is None and spec.nullable:
            return None
        return _validate_number(name, value, spec)
    if kind == "memory":
        parse_memory(value, field=name)
        return str(value) if not isinstance(value, str) else value
    if kind == "time":
        parse_time(value, field=name)
        return value
    if kind == "list":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise _invalid(name, value, "a list of strings")
        if not all(isinstance(item, str) for item in value):
            raise _invalid(name, value, "a list of strings")
        for item in value:
            _check_text(name, value, spec, item, "a list of strings, each {}")
        return tuple(value)
    if kind == "dict":
        if not isinstance(value, Mapping):
            raise _invalid(name, value, "a mapping of names to string values")
        normalised = {}
        for key, item in value.items():
            if not isinstance(key, str) or not VARIABLE_NAME.fullmatch(key):
                raise _invalid(
                    name,
                    value,
                    "variable names that are identifiers of ASCII letters, digits and _, "
                    f"not starting with a digit (got {key!r})",
                )
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise _invalid(name, value, f"string values (got {item!r} for {key})")
            _check_text(name, value, spec, str(item), f"string values of {{}} ({key})")
            normalised[key] = str(item)
        return _FrozenDict(normalised)
    raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover


def _validate_number(name: str, value: Any, spec: FieldSpec) -> int | float:
    expected = "an integer" if spec.kind == "int" else "a number"
    bounds = []
    if spec.minimum is not None:
        bounds.append(f">= {spec.minimum:g}")
    if spec.maximum is not None:
        bounds.append(f"<= {spec.maximum:g}")
    allowed = f"{expected} {' and '.join(bounds)}".strip()
    if isinstance(value, bool):
        raise _invalid(name, value, allowed)
    if spec.kind == "int" and not isinstance(value, int):
        raise _invalid(name, value, allowed)
    if spec.kind == "float" and not isinstance(value, (int, float)):
        raise _invalid(name, value, allowed)
    if (spec.minimum is not None and value < spec.minimum) or (
        spec.maximum is not None and value > spec.maximum
    ):
        raise _invalid(name, value, allowed)
    return float(value) if spec.kind == "float" else value


class _FrozenDict(dict):
    """A dict that refuses changes, so a frozen config cannot be altered through a field."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("configuration values are read-only; use configure() or replace()")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_FrozenDict, (dict(self),))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_text_value(name: str, text: str) -> Any:
    """Type a setting given as text (environment variable or CLI), then validate it."""
    spec = FIELD_SPECS[name]
    stripped = text.strip()
    value: Any = stripped
    if spec.kind == "int" and spec.nullable and not stripped:
        value = None
    elif spec.kind == "int":
        try:
            value = int(stripped)
        except ValueError:
            raise _invalid(name, text, "an integer") from None
    elif spec.kind == "float":
        try:
            value = float(stripped)
        except ValueError:
            raise _invalid(name, text, "a number") from None
    elif spec.kind == "bool":
        if stripped.lower() not in _TRUE | _FALSE:
            raise _invalid(name, text, "one of " + ", ".join(sorted(_TRUE | _FALSE)))
        value = stripped.lower() in _TRUE
    elif spec.kind == "optional_str":
        value = stripped or None
    elif spec.kind == "list":
        value = _parse_json_or(
            stripped, list, lambda s: [p.strip() for p in s.split(",") if p.strip()]
        )
    elif spec.kind == "dict":
        value = _parse_json_or(stripped, dict, _parse_pairs(name))
    elif spec.kind == "memory" and stripped.isdigit():
        value = int(stripped)
    return validate_value(name, value)


def _parse_json_or(text: str, expected: type, fallback: Any) -> Any:
    if text.startswith(("[", "{")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text  # validation then reports the value and what is expected
        return value if isinstance(value, expected) else text
    return fallback(text)


def _parse_pairs(name: str) -> Any:
    def parse(text: str) -> dict[str, str]:
        pairs = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, item_value = item.partition("=")
            if not sep:
                raise _invalid(name, text, "KEY=VALUE pairs separated by commas, or a JSON object")
            pairs[key.strip()] = item_value
        return pairs

    return parse


# --------------------------------------------------------------------------- files


def user_config_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".clustrix"


def user_config_candidates() -> list[Path]:
    return [user_config_dir() / f"config{suffix}" for suffix in CONFIG_SUFFIXES]


def project_config_candidates() -> list[Path]:
    return [Path.cwd() / f"clustrix{suffix}" for suffix in CONFIG_SUFFIXES]


def first_existing(paths: list[Path]) -> Path | None:
    return next((path for path in paths if path.is_file()), None)


@dataclass(frozen=True)
class ConfigFile:
    """One parsed config file: its settings, its profiles, and where each key stands."""

    path: Path
    settings: dict[str, Any]
    profiles: dict[str, dict[str, Any]]


_file_cache: dict[tuple[str, int, int], ConfigFile] = {}
_file_cache_lock = threading.Lock()


def read_config_file(path: str | os.PathLike[str]) -> ConfigFile:
    """Parse and validate a config file; errors name the file and the line."""
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _file_cache_lock:
        cached = _file_cache.get(key)
    if cached is not None:
        return cached
    parsed = _parse_config_file(path)
    with _file_cache_lock:
        _file_cache[key] = parsed
    return parsed


def _parse_config_file(path: Path) -> ConfigFile:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        else:
            data = yaml.safe_load(text) or {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    lines = _key_lines(text)
    profiles_raw = data.pop("profiles", None) or {}
    if not isinstance(profiles_raw, dict):
        raise ConfigError(f"{path}:{lines.get(('profiles',), '?')}: 'profiles' must be a mapping")
    settings = _validate_mapping(data, path, lines, ())
    profiles = {}
    for profile_name, profile_values in profiles_raw.items():
        if not isinstance(profile_values, dict):
            line = lines.get(("profiles", profile_name), "?")
            raise ConfigError(f"{path}:{line}: profile '{profile_name}' must be a mapping")
        profiles[str(profile_name)] = _validate_mapping(
            profile_values, path, lines, ("profiles", profile_name)
        )
    return ConfigFile(path=path, settings=settings, profiles=profiles)


def _validate_mapping(
    values: dict[str, Any], path: Path, lines: dict[tuple[str, ...], int], prefix: tuple[str, ...]
) -> dict[str, Any]:
    validated = {}
    for name, value in values.items():
        line = lines.get((*prefix, name), "?")
        where = f"{path}:{line}"
        if name not in FIELD_SPECS:
            raise unknown_field_error(str(name), where)
        if FIELD_SPECS[name].secret and value:
            # Parsing is cached per file version, so this warns once per file, not per call.
            warnings.warn(
                f"{where}: '{name}' is stored in plain text in a config file; prefer an SSH key "
                "or the CLUSTRIX_PASSWORD environment variable",
                stacklevel=2,
            )
        try:
            validated[name] = validate_value(name, value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}", field=name, value=value) from None
    return validated


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line numbers (1-based) of keys at the top level and one level inside ``profiles``."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    found: dict[tuple[str, ...], int] = {}

    def walk(node: Any, prefix: tuple[str, ...], depth: int) -> None:
        if not isinstance(node, yaml.MappingNode) or depth > 2:
            return
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            found[key] = key_node.start_mark.line + 1
            walk(value_node, key, depth + 1)

    walk(root, (), 0)
    return found


def write_config_file(path: str | os.PathLike[str], values: Mapping[str, Any]) -> Path:
    """Write settings as YAML or JSON (by suffix); secrets are never written."""
    path = Path(path).expanduser()
    data = {
        name: plain_value(value) for name, value in values.items() if not FIELD_SPECS[name].secret
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Layer:
    """One source of settings, named as ``clustrix config show`` reports it."""

    source: str
    values: Mapping[str, Any]


def environment_layer(environ: Mapping[str, str] | None = None) -> Layer:
    environ = os.environ if environ is None else environ
    values = {}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX) or key in NON_FIELD_ENV:
            continue
        if key.startswith(NON_FIELD_ENV_PREFIXES):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in FIELD_SPECS:
            hint = _closest(name)
            advice = f"; did you mean {ENV_PREFIX}{hint.upper()}?" if hint else ""
            warnings.warn(f"ignoring unknown environment variable {key}{advice}", stacklevel=3)
            continue
        try:
            values[name] = parse_text_value(name, text)
        except ConfigError as exc:
            raise ConfigError(
                f"environment variable {key}: {exc}", field=name, value=text
            ) from None
    return Layer("environment", values)


def file_layers(profile: str | None) -> list[Layer]:
    """Layers from the user and project files, and the selected profile merged over both."""
    layers: list[Layer] = []
    profiles: dict[str, tuple[dict[str, Any], Path]] = {}
    for candidates in (user_config_candidates(), project_config_candidates()):
        path = first_existing(candidates)
        if path is None:
            continue
        parsed = read_config_file(path)
        layers.append(Layer(str(path), parsed.settings))
        for name, values in parsed.profiles.items():
            merged = {**profiles.get(name, ({}, path))[0], **values}
            profiles[name] = (merged, path)
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none are defined"
            raise ConfigError(
                f"profile '{profile}' is not defined in any config file (profiles: {known})",
                field="profile",
                value=profile,
            )
        values, path = profiles[profile]
        layers.append(Layer(f"profile '{profile}' ({path})", values))
    return layers


class _Session:
    """The process-wide configure() layer; replaced wholesale, never edited in place."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, Any] = {}


_session = _Session()


def configure(**settings: Any) -> ClusterConfig:
    """Set settings for this process (above files and environment, below decorator arguments).

    Returns the resulting effective configuration. Values are validated at once.
    """
    check_names(settings, "configure()")
    validated = {name: validate_value(name, value) for name, value in settings.items()}
    with _session.lock:
        _session.values = {**_session.values, **validated}
    return get_config()


def reset_config() -> None:
    """Forget everything set by configure() and load_config() in this process."""
    with _session.lock:
        _session.values = {}


def session_layer() -> Layer:
    with _session.lock:
        return Layer("configure()", dict(_session.values))


@dataclass(frozen=True)
class ResolvedConfig:
    """An effective configuration with the source of every value."""

    config: ClusterConfig
    sources: Mapping[str, str]


def resolve_config(
    profile: str | None = None, overrides: Mapping[str, Any] | None = None
) -> ResolvedConfig:
    """Compute the effective configuration from every layer, lowest first."""
    profile = profile or os.environ.get(PROFILE_ENV) or None
    layers = [*file_layers(profile), environment_layer(), session_layer()]
    if overrides:
        check_names(overrides, "the decorator arguments")
        layers.append(Layer("@cluster arguments", overrides))
    merged: dict[str, Any] = {}
    sources = {name: DEFAULT_SOURCE for name in FIELD_NAMES}
    for layer in layers:
        for name, value in layer.values.items():
            merged[name] = value
            sources[name] = layer.source
    return ResolvedConfig(ClusterConfig(**merged), sources)


def get_config(profile: str | None = None) -> ClusterConfig:
    """The effective configuration now, for ``profile`` (or $CLUSTRIX_PROFILE) if given."""
    return resolve_config(profile).config


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read a config file and apply its settings for this process, like ``configure()``."""
    parsed = read_config_file(path)
    return configure(**parsed.settings)


def save_config(path: str | os.PathLike[str], config: ClusterConfig | None = None) -> Path:
    """Write ``config`` (default: the effective one) to YAML or JSON; the password is left out."""
    config = config or get_config()
    return write_config_file(path, config.to_dict())
