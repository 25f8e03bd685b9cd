"""``@cluster`` arguments, checked with the same specs, and in the same words, as settings.

Some arguments override a setting of another name for the calls of one function (``cores``
is ``default_cores``): they are checked as that setting, under the argument's name, and None
means "not given, the setting decides". The others belong to the function and have specs of
their own here. Either way a mistake is a ConfigError naming the argument, the value and what
is allowed, raised when the decorator is applied rather than when a job is submitted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .fields import FIELD_SPECS, FieldSpec
from .validation import check_value

#: Decorator arguments that override a setting of another name.
ARGUMENT_SETTINGS = {
    "cores": "default_cores",
    "memory": "default_memory",
    "time": "default_time",
    "gpus": "default_gpus",
    "partition": "default_partition",
    "queue": "default_queue",
    "executor": "local_executor",
    "cache": "cache",
    "requeue": "max_requeues",
    "requeue_grace": "requeue_grace",
}

#: Decorator arguments that are not settings. ``expected`` keeps the words users know.
ARGUMENT_SPECS: dict[str, FieldSpec] = {
    "parallel": FieldSpec(
        "bool",
        "Spread the function's safe loops over cores (True) or over a job array ('array'); "
        "None follows auto_parallel.",
        choices=("array",),
        nullable=True,
        expected="True, False, 'array' or None",
    ),
    "environment": FieldSpec(
        "requirements",
        "The packages a job needs: 'auto' (those the call uses), a requirements file, or a "
        "list of requirement strings; None is 'auto'.",
        nullable=True,
        text="multiline",
        expected="'auto', a requirements file path, or a list of requirement strings",
    ),
    "retries": FieldSpec("int", "Times a failed call is run again.", minimum=0),
    "pure": FieldSpec(
        "functions",
        "Functions a parallelised loop may call that the analysis should take as pure.",
        expected="a list of functions",
    ),
    "retry_on": FieldSpec(
        "exceptions",
        "The exceptions that make a call run again; an exception class or a tuple of them.",
        expected="exception classes",
    ),
    "timeout": FieldSpec(
        "float", "Seconds a local call may run; None for no limit.", minimum=0.001, nullable=True
    ),
    "profile": FieldSpec(
        "str",
        "The profile of the config files to use; None for $CLUSTRIX_PROFILE, if set.",
        nullable=True,
        expected="a profile name",
    ),
}


def check_argument(name: str, value: Any) -> Any:
    """Check the ``@cluster`` argument ``name`` and return its normalised value.

    ``retries`` is an int >= 0; ``timeout`` a number > 0 (at least a millisecond) or None;
    ``environment`` None, 'auto', a path or a list of requirement strings (returned as a
    tuple); ``profile`` a non-empty string or None; ``executor`` one of ``LOCAL_EXECUTORS``
    or None; ``parallel`` True, False, None or 'array'; ``retry_on`` an exception class or
    a collection of them (returned as a tuple). The arguments that override a setting
    (``ARGUMENT_SETTINGS``) are checked as that setting, or are None.

    Raises ConfigError for a value that is not allowed, and ValueError for a name that is
    none of these (scheduler options are checked by their scheduler, at submission).
    """
    setting = ARGUMENT_SETTINGS.get(name)
    if setting is not None:
        if value is None:
            return None
        spec = FIELD_SPECS[setting]
        if spec.kind == "optional_str":  # None is "not given", so a string is what is expected
            spec = replace(spec, kind="str")
        return check_value(name, value, spec)
    spec = ARGUMENT_SPECS.get(name)
    if spec is None:
        known = ", ".join([*ARGUMENT_SETTINGS, *ARGUMENT_SPECS])
        raise ValueError(f"{name!r} is not a @cluster argument Clustrix checks; those are {known}")
    return check_value(name, value, spec)
