"""``check_argument``: the @cluster arguments, checked like settings and in the same words."""

from __future__ import annotations

import pytest

from clustrix import ConfigError
from clustrix.config import ARGUMENT_SETTINGS, ARGUMENT_SPECS, LOCAL_EXECUTORS, check_argument
from clustrix.resources import Resources


@pytest.mark.parametrize(
    ("name", "value", "normalised"),
    [
        ("retries", 0, 0),
        ("retries", 3, 3),
        ("timeout", None, None),
        ("timeout", 2, 2.0),
        ("timeout", 0.5, 0.5),
        ("environment", None, None),
        ("environment", "auto", "auto"),
        ("environment", "requirements.txt", "requirements.txt"),
        ("environment", ["numpy>=1.26", "scipy"], ("numpy>=1.26", "scipy")),
        ("environment", (), ()),
        ("profile", None, None),
        ("profile", "gpu", "gpu"),
        ("executor", None, None),
        *(("executor", kind, kind) for kind in LOCAL_EXECUTORS),
        ("parallel", None, None),
        ("parallel", True, True),
        ("parallel", False, False),
        ("parallel", "array", "array"),
        ("retry_on", (), ()),
        ("retry_on", OSError, (OSError,)),
        ("retry_on", (OSError, KeyError), (OSError, KeyError)),
        ("retry_on", [OSError], (OSError,)),
        ("cores", None, None),
        ("cores", 4, 4),
        ("memory", "8GB", "8GB"),
        ("time", "01:00:00", "01:00:00"),
        ("gpus", 0, 0),
        ("gpus", 2, 2),
        ("partition", "gpu", "gpu"),
        ("queue", None, None),
    ],
)
def test_valid_arguments_are_returned_normalised(name, value, normalised):
    result = check_argument(name, value)
    assert result == normalised
    assert type(result) is type(normalised)


# The messages the decorator gave before it called check_argument, word for word.
@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("retries", -1, "retries=-1 is not valid: expected an integer >= 0"),
        ("retries", 1.5, "retries=1.5 is not valid: expected an integer >= 0"),
        ("retries", True, "retries=True is not valid: expected an integer >= 0"),
        ("timeout", 0, "timeout=0 is not valid: expected a number >= 0.001"),
        ("timeout", "1", "timeout='1' is not valid: expected a number >= 0.001"),
        (
            "environment",
            5,
            "environment=5 is not valid: expected 'auto', a requirements file path, "
            "or a list of requirement strings",
        ),
        (
            "environment",
            ["numpy", 3],
            "environment=['numpy', 3] is not valid: expected 'auto', a requirements file path, "
            "or a list of requirement strings",
        ),
        ("environment", "", "environment='' is not valid: expected 'auto'"),
        ("profile", "", "profile='' is not valid: expected a profile name"),
        ("profile", 3, "profile=3 is not valid: expected a profile name"),
        (
            "executor",
            "gpu",
            "executor='gpu' is not valid: expected one of auto, processes, threads, inline",
        ),
        ("parallel", "yes", "parallel='yes' is not valid: expected True, False, 'array' or None"),
        ("parallel", 1, "parallel=1 is not valid: expected True, False, 'array' or None"),
        (
            "retry_on",
            int,
            "retry_on=(<class 'int'>,) is not valid: expected exception classes",
        ),
        ("retry_on", "OSError", "retry_on='OSError' is not valid: expected exception classes"),
        ("retry_on", 5, "retry_on=5 is not valid: expected exception classes"),
        ("cores", 0, "cores=0 is not valid: expected an integer >= 1"),
        ("cores", "4", "cores='4' is not valid: expected an integer >= 1"),
        ("memory", "8XB", "memory='8XB' is not valid: expected a positive size"),
        ("time", "forever", "time='forever' is not valid: expected a positive duration"),
        ("gpus", -1, "gpus=-1 is not valid: expected an integer >= 0"),
        ("partition", "", "partition='' is not valid: expected a non-empty string"),
        ("queue", 3, "queue=3 is not valid: expected a non-empty string"),
    ],
)
def test_invalid_arguments_name_the_argument_the_value_and_what_is_allowed(name, value, message):
    with pytest.raises(ConfigError) as info:
        check_argument(name, value)
    assert str(info.value).startswith(message)
    assert info.value.field == name


def test_resource_arguments_fail_as_resources_parse_does():
    for name, value in (("cores", 0), ("gpus", -1), ("memory", "lots"), ("partition", "")):
        with pytest.raises(ConfigError) as parsed:
            Resources.parse(**{name: value})
        with pytest.raises(ConfigError) as checked:
            check_argument(name, value)
        assert str(checked.value) == str(parsed.value)


def test_arguments_refuse_text_that_would_break_a_job_script():
    with pytest.raises(ConfigError, match="line break"):
        check_argument("partition", "gpu\ntouch /tmp/marker")
    with pytest.raises(ConfigError, match="NUL"):
        check_argument("environment", ["numpy\x00"])


def test_every_argument_has_a_spec_and_unknown_names_are_a_programming_error():
    assert set(ARGUMENT_SPECS).isdisjoint(ARGUMENT_SETTINGS)
    for spec in ARGUMENT_SPECS.values():
        assert spec.help.endswith(".")
    with pytest.raises(ValueError, match="'job_name' is not a @cluster argument"):
        check_argument("job_name", "x")
