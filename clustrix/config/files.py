"""Config files: where they are looked up, how they are read, validated and written.

A file holds settings at its top level and named sets of them under ``profiles:``. Errors
name the file and the line of the offending key.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .fields import FIELD_SPECS, RETIRED_SETTINGS, unknown_field_error, validate_value, warn_retired
from .validation import plain_value

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


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
        if name in RETIRED_SETTINGS:
            # Parsing is cached per file version: this too warns once per file, not per call.
            warn_retired(name, where, stacklevel=3)
            continue
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
