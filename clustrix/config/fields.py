"""The settings: their names, types, bounds and help, and the frozen ``ClusterConfig``.

``FIELD_SPECS`` is the one description of every setting: validation, parsing from text,
``clustrix config`` and the settings reference of the documentation are all made from it.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import ConfigError
from ..local.kinds import KINDS
from ..schedulers import SCHEDULERS
from .validation import check_value, parse_text, plain_value

#: Where calls can run: the local machine, or a scheduler (or plain SSH) of the registry.
CLUSTER_TYPES = ("local", *SCHEDULERS)
PLANNED_CLUSTER_TYPES = ("kubernetes",)
#: How a cluster_host is reached (``make_transport`` in remote/backend.py decides ``auto``).
SSH_CLIENTS = ("auto", "paramiko", "openssh")
#: How local calls run (``local_executor``, ``@cluster(executor=...)``, ``LocalExecutor``).
LOCAL_EXECUTORS = KINDS  # one list, kept with the pools

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
    "gpus": "default_gpus",
}

# Settings that existed once, and why they went: a file, variable or configure() call that
# still names one is told so and goes on, rather than failing as a typo would.
RETIRED_SETTINGS = {
    "prefer_local_parallel": (
        "it was never read: safe loops run in parallel where the call runs, as "
        "@cluster(parallel=...) or auto_parallel asks"
    ),
}


@dataclass(frozen=True)
class FieldSpec:
    """How one setting is typed, bounded and explained."""

    #: str, optional_str, int, float, bool, list, dict, choice, memory, time; and for
    #: decorator arguments, requirements (a string or a list of them) and exceptions.
    kind: str
    help: str
    #: The values of a choice; for a bool, the words it takes besides true and false.
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    nullable: bool = False  # None allowed: absence means "ask someone else" or "not given"
    #: What the text of a str, list or dict setting may hold: "line" (one line without
    #: control characters), "name" (a line without whitespace either: it is written on
    #: scheduler directive lines) or "multiline" (shell commands and quoted values: anything
    #: but NUL). Secrets are not checked.
    text: str = "line"
    #: Choices known but not supported by this version, refused with a message saying so.
    planned: tuple[str, ...] = ()
    #: What errors say is allowed, where the words derived from ``kind`` would not fit.
    expected: str = ""


FIELD_SPECS: dict[str, FieldSpec] = {
    "cluster_type": FieldSpec(
        "choice",
        "Where calls run: the local machine, a scheduler, or a plain SSH host.",
        choices=CLUSTER_TYPES,
        planned=PLANNED_CLUSTER_TYPES,
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
    "ssh_client": FieldSpec(
        "choice",
        "How cluster_host is reached: paramiko (built in, one connection per process), "
        "openssh (the system ssh with one ControlMaster connection: ProxyCommand, Match, "
        "certificates, hardware keys, Kerberos, login prompts answered once; no password "
        "setting), or auto (paramiko, unless the host's ~/.ssh/config entry needs openssh).",
        choices=SSH_CLIENTS,
    ),
    "password": FieldSpec(
        "optional_str", "SSH password; prefer keys. Never written by save_config.", secret=True
    ),
    "default_cores": FieldSpec("int", "CPU cores per job.", minimum=1),
    "default_memory": FieldSpec("memory", "Memory per job, e.g. '4GB' (1GB = 1024MB)."),
    "default_time": FieldSpec("time", "Time limit per job, e.g. '01:00:00' or '90m'."),
    "default_gpus": FieldSpec("int", "GPUs per job; 0 asks for none.", minimum=0),
    "default_partition": FieldSpec("optional_str", "SLURM partition.", text="name"),
    "default_queue": FieldSpec("optional_str", "SGE or PBS queue.", text="name"),
    "account": FieldSpec("optional_str", "Scheduler account to charge.", text="name"),
    "qos": FieldSpec("optional_str", "SLURM quality of service.", text="name"),
    "remote_work_dir": FieldSpec(
        "str", "Folder for job files on the cluster; under home, which compute nodes share."
    ),
    "conda_env_name": FieldSpec("optional_str", "Existing conda environment to run jobs in."),
    "environment_build": FieldSpec(
        "choice",
        "Where a job's Python environment is built: on the login node (login), or in a short "
        "scheduler job of its own (job: 1 core, 2GB, 30 minutes; on cluster_type 'ssh', a "
        "background process on the host) for sites that forbid builds on login nodes.",
        choices=("login", "job"),
    ),
    "package_source": FieldSpec(
        "choice",
        "Where an environment build gets its packages: the cluster's pip or uv reaches a "
        "package index (index), or the client downloads wheels for the cluster's platform and "
        "ships them with the build (client), for clusters without internet access.",
        choices=("index", "client"),
    ),
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
    "max_requeues": FieldSpec(
        "int",
        "Times a job warned of its time limit puts itself back in the queue (SLURM, Grid "
        "Engine), its call resuming from its last clustrix.checkpoint; also "
        "@cluster(requeue=N). 0: a job reaching its limit fails.",
        minimum=0,
    ),
    "requeue_grace": FieldSpec(
        "int",
        "Seconds before the time limit at which a job with requeues left is warned, to save "
        "a last checkpoint and requeue itself.",
        minimum=1,
    ),
    "cache": FieldSpec(
        "bool",
        "Keep each call's value and return it, without running the call, when the same "
        "function (its code and that of your functions it calls) is called with the same "
        "arguments in the same environment; also @cluster(cache=True).",
    ),
    "cache_dir": FieldSpec("str", "Folder of the cached call values (mode 700, files 600)."),
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
    ssh_client: str = "auto"
    password: str | None = field(default=None, repr=False)
    default_cores: int = 1
    default_memory: str = "4GB"
    default_time: str = "01:00:00"
    default_gpus: int = 0
    default_partition: str | None = None
    default_queue: str | None = None
    account: str | None = None
    qos: str | None = None
    remote_work_dir: str = "~/clustrix"
    conda_env_name: str | None = None
    environment_build: str = "login"
    package_source: str = "index"
    python_executable: str | None = None
    auto_parallel: bool = False
    max_parallel_jobs: int = 100
    job_poll_interval: float = 5.0
    status_check_patience: float = 600.0
    cleanup_on_success: bool = True
    local_parallel_threshold: float = 0.1
    local_executor: str = "auto"
    max_array_size: int | None = None
    job_store: str = "~/.clustrix/jobs.db"
    max_requeues: int = 0
    requeue_grace: int = 120
    cache: bool = False
    cache_dir: str = "~/.clustrix/cache"
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


def validate_value(name: str, value: Any) -> Any:
    """Check ``value`` for setting ``name`` and return its normalised form."""
    return check_value(name, value, FIELD_SPECS[name])


def parse_text_value(name: str, text: str) -> Any:
    """Type a setting given as text (environment variable or CLI), then validate it."""
    return validate_value(name, parse_text(name, text, FIELD_SPECS[name]))


# --------------------------------------------------------------------------- names


def closest_setting(name: str) -> str | None:
    if name in _ALIASES:
        return _ALIASES[name]
    matches = difflib.get_close_matches(name, FIELD_NAMES, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_field_error(name: str, where: str) -> ConfigError:
    if name in RETIRED_SETTINGS:
        return ConfigError(
            f"setting '{name}' in {where} is no longer used ({RETIRED_SETTINGS[name]})",
            field=name,
            value=None,
        )
    hint = closest_setting(name)
    suggestion = (
        f"; did you mean '{hint}'?" if hint else f"; valid settings: {', '.join(FIELD_NAMES)}"
    )
    return ConfigError(f"unknown setting '{name}' in {where}{suggestion}", field=name, value=None)


def check_names(values: Mapping[str, Any], where: str) -> None:
    for name in values:
        if name not in FIELD_SPECS:
            raise unknown_field_error(str(name), where)


def warn_retired(name: str, where: str, stacklevel: int = 2) -> None:
    """Say that the retired setting ``name``, found in ``where``, is ignored and why."""
    warnings.warn(
        f"ignoring setting '{name}' in {where}, which is no longer used ({RETIRED_SETTINGS[name]})",
        stacklevel=stacklevel + 1,
    )


def drop_retired(values: Mapping[str, Any], where: str, stacklevel: int = 2) -> dict[str, Any]:
    """``values`` without retired settings, with a warning for each one ``where`` names."""
    for name in values:
        if name in RETIRED_SETTINGS:
            warn_retired(name, where, stacklevel + 1)
    return {name: value for name, value in values.items() if name not in RETIRED_SETTINGS}
