from __future__ import annotations

import pytest

import clustrix
from clustrix import ConfigError, Resources
from clustrix.resources import (
    check_number,
    format_clock,
    format_slurm_time,
    parse_memory,
    parse_time,
)


@pytest.mark.parametrize(
    ("text", "megabytes"),
    [
        ("512MB", 512),
        ("512M", 512),
        ("512mb", 512),
        ("8GB", 8192),
        ("8G", 8192),
        ("8g", 8192),
        ("16GiB", 16384),
        ("1.5TB", 1572864),
        ("2T", 2097152),
        ("1024KB", 1),
        ("100K", 1),  # rounded up to a whole MB
        (" 4 GB ", 4096),
        ("300", 300),
        (300, 300),
        (0.5, 1),
    ],
)
def test_memory_valid(text, megabytes):
    assert parse_memory(text) == megabytes


@pytest.mark.parametrize(
    "text", ["", "GB", "8XB", "-1GB", "0", 0, "8 G B", "1e3MB", "100B", "100iB", True, None, [8]]
)
def test_memory_invalid_names_field_value_and_allowed(text):
    with pytest.raises(ConfigError) as info:
        parse_memory(text, field="memory")
    message = str(info.value)
    assert message.startswith(f"memory={text!r} is not valid")
    assert "512MB" in message and "16GiB" in message
    assert info.value.field == "memory"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:00:00", 3600),
        ("00:00:05", 5),
        ("48:00:00", 172800),
        ("1-00:00:00", 86400),
        ("2-12:30:15", 2 * 86400 + 12 * 3600 + 30 * 60 + 15),
        ("1-06:30", 86400 + 6 * 3600 + 30 * 60),
        ("10:30", 630),
        ("90m", 5400),
        ("2h", 7200),
        ("1h30m", 5400),
        ("45s", 45),
        ("1d", 86400),
        ("1.5h", 5400),
        ("30", 1800),
        (30, 1800),
    ],
)
def test_time_valid(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "1:60:00", "00:00:60", "1-24:00:00", "0", 0, -5, "2 weeks", "h", "1x", "::", 1.5, True],
)
def test_time_invalid_names_field_value_and_allowed(text):
    with pytest.raises(ConfigError) as info:
        parse_time(text, field="time")
    message = str(info.value)
    assert message.startswith("time=") and "is not valid" in message
    assert "HH:MM:SS" in message and "90m" in message


def test_formatting_for_schedulers():
    assert format_clock(5) == "00:00:05"
    assert format_clock(100 * 3600 + 61) == "100:01:01"
    assert format_slurm_time(2 * 86400 + 3661) == "2-01:01:01"
    assert format_slurm_time(3600) == "01:00:00"


def test_resources_parse_normalises_every_field():
    resources = Resources.parse(cores=8, memory="16GB", time="02:00:00", gpus=2, partition="gpu")
    assert resources == Resources(
        cores=8, memory_mb=16384, time_seconds=7200, gpus=2, partition="gpu", queue=None
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cores": 0}, "cores"),
        ({"cores": "4"}, "cores"),
        ({"cores": True}, "cores"),
        ({"gpus": -1}, "gpus"),
        ({"partition": ""}, "partition"),
        ({"queue": 3}, "queue"),
        ({"memory": "lots"}, "memory"),
        ({"time": "soon"}, "time"),
    ],
)
def test_resources_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        Resources.parse(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}=")


def test_resources_and_settings_share_one_number_check():
    # Resources.parse and the settings say the same, since they run the same check.
    with pytest.raises(ConfigError) as resource:
        Resources.parse(gpus=-1)
    with pytest.raises(ConfigError) as setting:
        clustrix.configure(default_gpus=-1)
    assert str(resource.value) == "gpus=-1 is not valid: expected an integer >= 0"
    assert str(setting.value) == "default_gpus=-1 is not valid: expected an integer >= 0"
    with pytest.raises(ConfigError, match="expected a number >= 1"):
        check_number("patience", float("nan"), integer=False, minimum=1)
    assert check_number("port", 22, integer=True, minimum=1, maximum=65535) == 22
