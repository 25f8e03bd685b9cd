"""Where settings come from, and which wins: files, profiles, environment, configure().

The effective configuration of a call is computed from layers, lowest first (see the package
docstring); each layer is read and validated on its own, and a new frozen ``ClusterConfig``
is built from them, so nothing is mutated behind the user's back.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from .fields import (
    DEFAULT_SOURCE,
    FIELD_NAMES,
    FIELD_SPECS,
    RETIRED_SETTINGS,
    ClusterConfig,
    check_names,
    closest_setting,
    drop_retired,
    parse_text_value,
    validate_value,
    warn_retired,
)
from .files import (
    CONFIG_SUFFIXES,
    first_existing,
    project_config_candidates,
    read_config_file,
    user_config_candidates,
    write_config_file,
)

ENV_PREFIX = "CLUSTRIX_"
PROFILE_ENV = "CLUSTRIX_PROFILE"
# CLUSTRIX_* variables that are not settings, so they are not reported as typos.
# CLUSTRIX_CHECKPOINT: a running call's checkpoint file (clustrix.checkpointing).
NON_FIELD_ENV = {PROFILE_ENV, "CLUSTRIX_REQUIRE_CLUSTER", "CLUSTRIX_IN_JOB", "CLUSTRIX_CHECKPOINT"}
NON_FIELD_ENV_PREFIXES = ("CLUSTRIX_TEST",)


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
        if name in RETIRED_SETTINGS:
            warn_retired(name, f"environment variable {key}", stacklevel=3)
            continue
        if name not in FIELD_SPECS:
            hint = closest_setting(name)
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
    """The process-wide configure() layer; replaced wholesale, never edited in place.

    ``generation`` counts the changes, so that a resolved configuration can be reused
    until the next one.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, Any] = {}
        self.generation = 0


_session = _Session()


def configure(**settings: Any) -> ClusterConfig:
    """Set settings for this process (above files and environment, below decorator arguments).

    Returns the resulting effective configuration. Values are validated at once.
    """
    settings = drop_retired(settings, "configure()")
    check_names(settings, "configure()")
    validated = {name: validate_value(name, value) for name, value in settings.items()}
    with _session.lock:
        _session.values = {**_session.values, **validated}
        _session.generation += 1
    return get_config()


def reset_config() -> None:
    """Forget everything set by configure() and load_config() in this process."""
    with _session.lock:
        _session.values = {}
        _session.generation += 1


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
    """Compute the effective configuration from every layer, lowest first.

    Every decorated call asks for it, so a result is reused for as long as nothing it was
    made from has changed: the config files (their size and modification time), the
    ``CLUSTRIX_*`` variables, ``configure()``, the working folder and the arguments.
    """
    profile = profile or os.environ.get(PROFILE_ENV) or None
    key = _inputs_key(profile, overrides)
    resolved = _resolved.get(key) if key is not None else None
    if resolved is None:
        resolved = _resolve(profile, overrides)
        if key is not None:
            if len(_resolved) >= 64:
                _resolved.clear()
            _resolved[key] = resolved
    return resolved


_resolved: dict[tuple[Any, ...], ResolvedConfig] = {}
_ENVIRONMENT_NAMES = (PROFILE_ENV, *(ENV_PREFIX + name.upper() for name in FIELD_SPECS))
_ENVIRONMENT_KEYS = tuple(os.fsencode(name) for name in _ENVIRONMENT_NAMES)


def _environment_values() -> tuple[Any, ...]:
    """The values of the variables that can change a setting (None where unset).

    Every decorated call asks, so this is read from the environment's undecoded table where
    CPython keeps one on POSIX systems: a lookup in ``os.environ`` encodes the name and
    raises inside for each unset variable, which costs more than the rest of the key.
    """
    raw = getattr(os.environ, "_data", None)
    if os.name == "posix" and isinstance(raw, dict):
        return tuple(map(raw.get, _ENVIRONMENT_KEYS))
    return tuple(map(os.environ.get, _ENVIRONMENT_NAMES))


def _inputs_key(profile: str | None, overrides: Mapping[str, Any] | None) -> tuple | None:
    """What a resolution depends on, or None when the arguments cannot be a key."""
    home, cwd = os.path.expanduser("~"), os.getcwd()
    files = []
    for folder, stem in ((os.path.join(home, ".clustrix"), "config"), (cwd, "clustrix")):
        for suffix in CONFIG_SUFFIXES:
            try:
                found = os.stat(os.path.join(folder, stem + suffix))
            except OSError:
                files.append(None)
            else:
                files.append((found.st_ino, found.st_size, found.st_mtime_ns))
    environment = _environment_values()
    key = (profile, _session.generation, environment, tuple(files), home, cwd)
    try:
        arguments = tuple(sorted((overrides or {}).items()))
        hash(arguments)
    except TypeError:
        return None
    return (*key, arguments)


def _resolve(profile: str | None, overrides: Mapping[str, Any] | None) -> ResolvedConfig:
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
    return ResolvedConfig(ClusterConfig(**merged), MappingProxyType(sources))


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
