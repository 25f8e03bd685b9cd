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

The modules, each with one responsibility: ``text`` (what text a setting may hold),
``validation`` (checking a value against its spec), ``fields`` (the settings and
``ClusterConfig``), ``arguments`` (decorator arguments), ``files`` (config files) and
``sources`` (the layers and their precedence). This package knows nothing of how jobs run.
"""

# ``text`` comes first, before ``fields`` imports the scheduler registry: the scheduler modules
# import ``text_problem`` and ``VARIABLE_NAME`` from this package while it is being imported.
from ..scripttext import VARIABLE_NAME, text_problem
from .arguments import ARGUMENT_SETTINGS, ARGUMENT_SPECS, check_argument
from .fields import (
    CLUSTER_TYPES,
    DEFAULT_SOURCE,
    FIELD_NAMES,
    FIELD_SPECS,
    LOCAL_EXECUTORS,
    PLANNED_CLUSTER_TYPES,
    RETIRED_SETTINGS,
    ClusterConfig,
    FieldSpec,
    check_names,
    closest_setting,
    drop_retired,
    parse_text_value,
    unknown_field_error,
    validate_value,
    warn_retired,
)
from .files import (
    CONFIG_SUFFIXES,
    ConfigFile,
    first_existing,
    project_config_candidates,
    read_config_file,
    user_config_candidates,
    user_config_dir,
    write_config_file,
)
from .sources import (
    ENV_PREFIX,
    NON_FIELD_ENV,
    NON_FIELD_ENV_PREFIXES,
    PROFILE_ENV,
    Layer,
    ResolvedConfig,
    configure,
    environment_layer,
    file_layers,
    get_config,
    load_config,
    reset_config,
    resolve_config,
    save_config,
    session_layer,
)
from .validation import check_value, plain_value

__all__ = [
    "ARGUMENT_SETTINGS",
    "ARGUMENT_SPECS",
    "CLUSTER_TYPES",
    "CONFIG_SUFFIXES",
    "DEFAULT_SOURCE",
    "ENV_PREFIX",
    "FIELD_NAMES",
    "FIELD_SPECS",
    "LOCAL_EXECUTORS",
    "NON_FIELD_ENV",
    "NON_FIELD_ENV_PREFIXES",
    "PLANNED_CLUSTER_TYPES",
    "PROFILE_ENV",
    "RETIRED_SETTINGS",
    "VARIABLE_NAME",
    "ClusterConfig",
    "ConfigFile",
    "FieldSpec",
    "Layer",
    "ResolvedConfig",
    "check_argument",
    "check_names",
    "check_value",
    "closest_setting",
    "configure",
    "drop_retired",
    "environment_layer",
    "file_layers",
    "first_existing",
    "get_config",
    "load_config",
    "parse_text_value",
    "plain_value",
    "project_config_candidates",
    "read_config_file",
    "reset_config",
    "resolve_config",
    "save_config",
    "session_layer",
    "text_problem",
    "unknown_field_error",
    "user_config_candidates",
    "user_config_dir",
    "validate_value",
    "warn_retired",
    "write_config_file",
]
