"""Resource requests (cores, memory, time, GPUs, partition, queue) parsed once.

Users write memory and time in many spellings; schedulers each want their own. Parsing into
one normalised value object here means every scheduler module renders from plain integers and
never parses user strings itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

# Binary multiples, as every HPC scheduler interprets memory units: 1G means 1024M.
_MEMORY_UNITS_MB = {
    "k": 1 / 1024,
    "m": 1,
    "g": 1024,
    "t": 1024 * 1024,
}
_MEMORY_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgt])?(i?b)?\s*$", re.IGNORECASE)
_MEMORY_HELP = "a positive size such as 512MB, 8GB, 8G, 1.5TB, 16GiB, or an int in MB"

_TIME_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TIME_PART_PATTERN = re.compile(r"(\d+(?:\.\d+)?)([smhd])", re.IGNORECASE)
_CLOCK_PATTERN = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?$")
_TIME_HELP = (
    "a positive duration such as 'HH:MM:SS', 'D-HH:MM:SS', 'MM:SS', '90m', '2h', '1h30m', "
    "'1d', or an int in minutes"
)


def invalid(field: str, value: object, allowed: str) -> ConfigError:
    """The error for a value that is not allowed, in the one style of every check."""
    return ConfigError(
        f"{field}={value!r} is not valid: expected {allowed}", field=field, value=value
    )


def check_number(
    field: str,
    value: object,
    *,
    integer: bool,
    minimum: float | None = None,
    maximum: float | None = None,
) -> int | float:
    """Return ``value`` if it is an int (or any real number, unless ``integer``) in bounds.

    Booleans are refused although Python counts them as ints: ``cores=True`` is a mistake.
    This is the numeric check of resource requests, settings and decorator arguments alike,
    so they all say the same thing, e.g. ``cores=0 is not valid: expected an integer >= 1``.
    """
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    allowed = f"{'an integer' if integer else 'a number'} {' and '.join(bounds)}".strip()
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise invalid(field, value, allowed)
    if math.isnan(value) or (  # NaN compares false with every bound, so it would pass
        (minimum is not None and value < minimum) or (maximum is not None and value > maximum)
    ):
        raise invalid(field, value, allowed)
    return value


def parse_memory(value: str | int | float, field: str = "memory") -> int:
    """Return a memory request in MiB (rounded up), from a string with units or an int of MB."""
    if isinstance(value, bool):
        raise invalid(field, value, _MEMORY_HELP)
    if isinstance(value, (int, float)):
        megabytes = float(value)
    elif isinstance(value, str):
        match = _MEMORY_PATTERN.match(value)
        if not match:
            raise invalid(field, value, _MEMORY_HELP)
        number, unit, _suffix = match.groups()
        if unit is None and _suffix:  # "100B" or "100iB": bytes are not a useful request
            raise invalid(field, value, _MEMORY_HELP)
        megabytes = float(number) * _MEMORY_UNITS_MB[(unit or "m").lower()]
    else:
        raise invalid(field, value, _MEMORY_HELP)
    if not math.isfinite(megabytes) or megabytes <= 0:
        raise invalid(field, value, _MEMORY_HELP)
    return math.ceil(megabytes)


def parse_time(value: str | int, field: str = "time") -> int:
    """Return a time limit in whole seconds, from a clock string, unit string or int minutes."""
    if isinstance(value, bool):
        raise invalid(field, value, _TIME_HELP)
    if isinstance(value, int):
        seconds = value * 60
    elif isinstance(value, str):
        seconds = _parse_time_string(value.strip(), field)
    else:
        raise invalid(field, value, _TIME_HELP)
    if seconds <= 0:
        raise invalid(field, value, _TIME_HELP)
    return seconds


def _parse_time_string(text: str, field: str) -> int:
    if text.isdigit():
        return int(text) * 60
    clock = _CLOCK_PATTERN.match(text)
    if clock:
        days, first, second, third = clock.groups()
        if third is None:
            if days is not None:  # "D-HH:MM"
                hours, minutes, seconds = int(first), int(second), 0
            else:  # "MM:SS"
                hours, minutes, seconds = 0, int(first), int(second)
        else:
            hours, minutes, seconds = int(first), int(second), int(third)
        if minutes >= 60 or seconds >= 60 or (days is not None and hours >= 24):
            raise invalid(field, text, _TIME_HELP)
        return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds
    parts = _TIME_PART_PATTERN.findall(text)
    if parts and "".join(n + u for n, u in parts) == text.replace(" ", ""):
        return math.ceil(sum(float(n) * _TIME_UNITS_S[u.lower()] for n, u in parts))
    raise invalid(field, text, _TIME_HELP)


def format_clock(seconds: int) -> str:
    """``HH:MM:SS`` with hours unbounded, the form SGE and PBS accept."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def format_slurm_time(seconds: int) -> str:
    """``D-HH:MM:SS``, SLURM's own form, rounded up to whole minutes as SLURM does anyway."""
    days, rest = divmod(seconds, 86400)
    clock = format_clock(rest)
    return f"{days}-{clock}" if days else clock


#: The arguments a resource request is made of; each has a setting ``default_<name>``.
RESOURCE_ARGUMENTS = ("cores", "memory", "time", "gpus", "partition", "queue")


@dataclass(frozen=True)
class Resources:
    """What one job asks of the machine that runs it, in normalised units."""

    cores: int = 1
    memory_mb: int | None = None
    time_seconds: int | None = None
    gpus: int = 0
    partition: str | None = None
    queue: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Resources:
        """The request of a configuration: its ``default_<name>`` settings (None: not set)."""
        values = {name: getattr(settings, f"default_{name}") for name in RESOURCE_ARGUMENTS}
        return cls.parse(**{name: value for name, value in values.items() if value is not None})

    @classmethod
    def parse(
        cls,
        *,
        cores: int = 1,
        memory: str | int | None = None,
        time: str | int | None = None,
        gpus: int = 0,
        partition: str | None = None,
        queue: str | None = None,
    ) -> Resources:
        """Validate user-facing spellings; each error names the offending field."""
        for name, text in (("partition", partition), ("queue", queue)):
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise invalid(name, text, "a non-empty string")
        return cls(
            cores=int(check_number("cores", cores, integer=True, minimum=1)),
            memory_mb=None if memory is None else parse_memory(memory),
            time_seconds=None if time is None else parse_time(time),
            gpus=int(check_number("gpus", gpus, integer=True, minimum=0)),
            partition=partition,
            queue=queue,
        )
