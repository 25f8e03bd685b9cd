"""Checking one value against its ``FieldSpec``, and typing values given as text.

Settings and decorator arguments are checked here alike, each by the kind its spec declares.
A mistake is reported the same way whatever its source: a ConfigError naming the field, the
value and what is allowed. The file, line or variable it came from is added by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..resources import check_number, invalid, parse_memory, parse_time
from ..scripttext import TEXT_ALLOWED, VARIABLE_NAME, text_problem

if TYPE_CHECKING:
    from .fields import FieldSpec


def check_value(name: str, value: Any, spec: FieldSpec) -> Any:
    """Check ``value`` for the field ``name`` described by ``spec``; return its normalised form."""
    if value is None and spec.nullable:
        return None
    try:
        check = _CHECKS[spec.kind]
    except KeyError:  # pragma: no cover - a FieldSpec with a kind nobody checks
        raise AssertionError(f"unhandled kind {spec.kind}") from None
    return check(name, value, spec)


def _expected(spec: FieldSpec, allowed: str) -> str:
    """What is allowed, as the spec words it if it does, else as its kind does."""
    return spec.expected or allowed


def _check_text(name: str, value: Any, spec: FieldSpec, text: str, allowed: str) -> None:
    """Refuse ``text`` (``value`` or a part of it) unfit for the setting's text rule;
    ``allowed`` says what is expected, with ``{}`` where the rule's description goes."""
    if spec.secret:
        return
    problem = text_problem(text, spec.text)
    if problem:
        raise invalid(
            name, value, allowed.format(TEXT_ALLOWED[spec.text]) + f" (it contains {problem})"
        )


def _check_choice(name: str, value: Any, spec: FieldSpec) -> Any:
    if value in spec.planned:
        raise ConfigError(
            f"{name}={value!r} is not supported yet; supported: {', '.join(spec.choices)}",
            field=name,
            value=value,
        )
    if value not in spec.choices:
        raise invalid(name, value, _expected(spec, "one of " + ", ".join(spec.choices)))
    return value


def _check_optional_str(name: str, value: Any, spec: FieldSpec) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, value, _expected(spec, "a non-empty string, or null"))
    _check_text(name, value, spec, value, "{}, or null")
    return value


def _check_str(name: str, value: Any, spec: FieldSpec) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, value, _expected(spec, "a non-empty string"))
    _check_text(name, value, spec, value, "{}")
    return value


def _check_bool(name: str, value: Any, spec: FieldSpec) -> bool | str:
    # ``choices`` of a bool field are the words it takes besides true and false.
    if isinstance(value, bool) or (isinstance(value, str) and value in spec.choices):
        return value
    raise invalid(name, value, _expected(spec, "true or false"))


def _check_number(name: str, value: Any, spec: FieldSpec) -> int | float:
    integer = spec.kind == "int"
    number = check_number(name, value, integer=integer, minimum=spec.minimum, maximum=spec.maximum)
    return number if integer else float(number)


def _check_memory(name: str, value: Any, spec: FieldSpec) -> str:
    parse_memory(value, field=name)
    return str(value) if not isinstance(value, str) else value


def _check_time(name: str, value: Any, spec: FieldSpec) -> str | int:
    parse_time(value, field=name)
    return value


def _check_list(name: str, value: Any, spec: FieldSpec) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise invalid(name, value, _expected(spec, "a list of strings"))
    if not all(isinstance(item, str) for item in value):
        raise invalid(name, value, _expected(spec, "a list of strings"))
    for item in value:
        _check_text(name, value, spec, item, "a list of strings, each {}")
    return tuple(value)


def _check_dict(name: str, value: Any, spec: FieldSpec) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise invalid(name, value, "a mapping of names to string values")
    normalised = {}
    for key, item in value.items():
        if not isinstance(key, str) or not VARIABLE_NAME.fullmatch(key):
            raise invalid(
                name,
                value,
                "variable names that are identifiers of ASCII letters, digits and _, "
                f"not starting with a digit (got {key!r})",
            )
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise invalid(name, value, f"string values (got {item!r} for {key})")
        _check_text(name, value, spec, str(item), f"string values of {{}} ({key})")
        normalised[key] = str(item)
    return _FrozenDict(normalised)


def _check_requirements(name: str, value: Any, spec: FieldSpec) -> str | tuple[str, ...]:
    """A word or a path (one non-empty string), or a list of requirement strings."""
    if isinstance(value, str) and value.strip():
        _check_text(name, value, spec, value, "{}")
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        for item in value:
            _check_text(name, value, spec, item, "a list of strings, each {}")
        return tuple(value)
    raise invalid(name, value, _expected(spec, "a string or a list of strings"))


def _check_exceptions(name: str, value: Any, spec: FieldSpec) -> tuple[type[BaseException], ...]:
    """An exception class, or a collection of them; always returned as a tuple."""
    if isinstance(value, type):
        value = (value,)  # the error below shows the tuple, as the value that was checked
    if isinstance(value, (list, tuple, set, frozenset)) and all(
        isinstance(item, type) and issubclass(item, BaseException) for item in value
    ):
        return tuple(value)
    raise invalid(name, value, _expected(spec, "exception classes"))


def _check_functions(name: str, value: Any, spec: FieldSpec) -> tuple[Callable[..., Any], ...]:
    """A collection of functions (not a string); always returned as a tuple."""
    if isinstance(value, (list, tuple, set, frozenset)) and all(map(callable, value)):
        return tuple(value)
    raise invalid(name, value, _expected(spec, "a list of functions"))


_CHECKS: dict[str, Callable[[str, Any, Any], Any]] = {
    "choice": _check_choice,
    "optional_str": _check_optional_str,
    "str": _check_str,
    "bool": _check_bool,
    "int": _check_number,
    "float": _check_number,
    "memory": _check_memory,
    "time": _check_time,
    "list": _check_list,
    "dict": _check_dict,
    "requirements": _check_requirements,
    "exceptions": _check_exceptions,
    "functions": _check_functions,
}


def plain_value(value: Any) -> Any:
    """Tuples and read-only mappings as plain lists and dicts, for YAML and JSON."""
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain_value(item) for key, item in value.items()}
    return value


class _FrozenDict(dict):
    """A dict that refuses changes, so a frozen config cannot be altered through a field."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("configuration values are read-only; use configure() or replace()")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_FrozenDict, (dict(self),))


# --------------------------------------------------------------------------- values as text

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_text(name: str, text: str, spec: FieldSpec) -> Any:
    """Type a value given as text (environment variable or CLI) by its spec's kind.

    The result still needs ``check_value``; only text that cannot be typed is refused here.
    """
    stripped = text.strip()
    kind = spec.kind
    if kind == "int" and spec.nullable and not stripped:
        return None
    if kind in ("int", "float"):
        try:
            return int(stripped) if kind == "int" else float(stripped)
        except ValueError:
            raise invalid(name, text, "an integer" if kind == "int" else "a number") from None
    if kind == "bool":
        if stripped.lower() not in _TRUE | _FALSE:
            raise invalid(name, text, "one of " + ", ".join(sorted(_TRUE | _FALSE)))
        return stripped.lower() in _TRUE
    if kind == "optional_str":
        return stripped or None
    if kind == "list":
        return _parse_json_or(
            stripped, list, lambda s: [p.strip() for p in s.split(",") if p.strip()]
        )
    if kind == "dict":
        return _parse_json_or(stripped, dict, _parse_pairs(name))
    if kind == "memory" and stripped.isdigit():
        return int(stripped)
    return stripped


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
                raise invalid(name, text, "KEY=VALUE pairs separated by commas, or a JSON object")
            pairs[key.strip()] = item_value
        return pairs

    return parse
