"""The effect tables: which functions and methods a parallel loop body may call, as objects.

Why a whitelist: a loop runs in parallel only if every call in its body is known to leave all
state outside the iteration alone and to give the same value in a worker process as in the
caller. Calls are resolved to objects when the function is analysed (``np.sqrt`` is whatever
``np`` names in the function's module), and looked up here by identity, so an alias or a
shadowing definition is never mistaken for the vetted function.

Nothing here is imported lazily: modules that are not installed (numpy) simply contribute no
entries. The names themselves are listed in :mod:`.vetted`; this module resolves them and answers
the lookups.
"""

from __future__ import annotations

import bisect
import builtins
import cmath
import collections
import copy
import decimal
import fractions
import functools
import heapq
import itertools
import json
import math
import operator
import os.path
import re
import statistics
import string
import time
import unicodedata
import warnings
from typing import Any

from .vetted import (
    ARRAY_PURE,
    BYTES_METHODS,
    DECIMAL_PURE,
    DICT_PURE,
    FRESH_BUILTIN_NAMES,
    IMPURE_OPERATOR,
    LIST_PURE,
    NUMBER_PURE,
    NUMPY_FRESH,
    NUMPY_LINALG,
    NUMPY_RANDOM_CONSTRUCTORS,
    NUMPY_VIEWS,
    PURE_BUILTIN_NAMES,
    SET_PURE,
    STR_METHODS,
)

__all__ = [
    "OWNED_TYPES",
    "PURE_METHODS",
    "SEQUENCE_TYPES",
    "TARGET_METHODS",
    "is_pure_object",
    "method_allowed",
    "returns_fresh",
]


def _callables(module: Any, skip: set[str] = frozenset()) -> list[Any]:  # type: ignore[assignment]
    return [
        getattr(module, name)
        for name in dir(module)
        if not name.startswith("_") and name not in skip and callable(getattr(module, name))
    ]


def _build_pure() -> tuple[dict[int, Any], dict[int, Any]]:
    pure: list[Any] = [getattr(builtins, n) for n in PURE_BUILTIN_NAMES]
    fresh: list[Any] = [getattr(builtins, n) for n in FRESH_BUILTIN_NAMES]
    pure += _callables(math) + _callables(cmath)
    fresh += _callables(math) + _callables(cmath)
    pure += _callables(operator, IMPURE_OPERATOR)
    pure += _callables(statistics, {"NormalDist"})
    pure += [bisect.bisect, bisect.bisect_left, bisect.bisect_right]
    pure += [heapq.nlargest, heapq.nsmallest, heapq.merge]
    pure += [functools.reduce, functools.partial, functools.cmp_to_key]
    pure += [copy.copy, copy.deepcopy]
    fresh += [copy.copy, copy.deepcopy]
    pure += [json.dumps, json.loads, string.capwords]
    pure += [re.match, re.fullmatch, re.search, re.sub, re.subn, re.split, re.findall]
    pure += [re.escape, re.compile, re.finditer]
    pure += [os.path.join, os.path.basename, os.path.dirname, os.path.splitext]
    pure += [os.path.split, os.path.normpath]
    pure += [unicodedata.normalize, unicodedata.category, unicodedata.name]
    pure += [time.sleep]  # waits, changes nothing
    pure += [warnings.warn]  # recorded in the worker, re-emitted in order by the caller
    # itertools constructors (consuming an outer iterator is caught at run time)
    pure += _callables(itertools, {"tee"})
    fresh += [collections.Counter, collections.OrderedDict, collections.defaultdict]
    fresh += [collections.deque]
    pure += [collections.Counter, collections.OrderedDict, collections.defaultdict]
    pure += [collections.deque, collections.namedtuple]
    pure += [decimal.Decimal, fractions.Fraction]
    fresh += [decimal.Decimal, fractions.Fraction]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a test dependency
        np = None  # type: ignore[assignment]
    if np is not None:
        pure_np, fresh_np = _numpy_tables(np)
        pure += pure_np
        fresh += fresh_np
    return {id(o): o for o in pure}, {id(o): o for o in fresh}


def _numpy_tables(np: Any) -> tuple[list[Any], list[Any]]:
    fresh = [getattr(np, n) for n in NUMPY_FRESH if hasattr(np, n)]
    fresh += [getattr(np.linalg, n) for n in NUMPY_LINALG if hasattr(np.linalg, n)]
    fresh += [getattr(np.random, n) for n in NUMPY_RANDOM_CONSTRUCTORS if hasattr(np.random, n)]
    pure = fresh + [getattr(np, n) for n in NUMPY_VIEWS if hasattr(np, n)]
    return pure, fresh


_PURE, _FRESH = _build_pure()


def is_pure_object(obj: Any) -> bool:
    """Whether ``obj`` is a vetted pure function, type or constructor."""
    return id(obj) in _PURE and _PURE[id(obj)] is obj


def returns_fresh(obj: Any) -> bool:
    """Whether calling ``obj`` returns a new or immutable object (never one of its arguments)."""
    return id(obj) in _FRESH and _FRESH[id(obj)] is obj


def _method_table() -> dict[type, set[str]]:
    table: dict[type, set[str]] = {
        str: STR_METHODS,
        bytes: BYTES_METHODS,
        list: LIST_PURE,
        tuple: {"index", "count"},
        dict: DICT_PURE,
        collections.OrderedDict: DICT_PURE,
        collections.defaultdict: DICT_PURE,
        collections.Counter: DICT_PURE | {"most_common", "elements", "total"},
        set: SET_PURE,
        frozenset: SET_PURE,
        int: NUMBER_PURE,
        float: NUMBER_PURE,
        bool: NUMBER_PURE,
        complex: {"conjugate"},
        range: {"index", "count"},
        decimal.Decimal: DECIMAL_PURE,
        fractions.Fraction: {"limit_denominator", "as_integer_ratio"},
        type({}.keys()): {"isdisjoint"},
        type({}.items()): {"isdisjoint"},
    }
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return table
    table[np.ndarray] = ARRAY_PURE
    for scalar in (np.float64, np.float32, np.int64, np.int32, np.bool_, np.complex128):
        table[scalar] = ARRAY_PURE | NUMBER_PURE
    return table


_METHODS = _method_table()
PURE_METHODS: frozenset[str] = frozenset(set().union(*_METHODS.values()))


def method_allowed(receiver: Any, name: str) -> bool:
    """Whether ``receiver.name(...)`` is a vetted pure method for the receiver's exact type."""
    allowed = _METHODS.get(type(receiver))
    return allowed is not None and name in allowed


# Types a parallel loop may iterate: finite, iterating them runs no user code and changes
# nothing. Their contents are checked at run time for aliasing with what the loop writes.
def _sequence_types() -> tuple[type, ...]:
    types_: list[type] = [
        list,
        tuple,
        range,
        str,
        bytes,
        dict,
        set,
        frozenset,
        type({}.keys()),
        type({}.values()),
        type({}.items()),
        collections.OrderedDict,
        collections.Counter,
        collections.defaultdict,
    ]
    try:
        import numpy as np

        types_.append(np.ndarray)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types_)


SEQUENCE_TYPES = _sequence_types()

# Containers a reduction or collector may write to (their methods are the builtin ones).
OWNED_TYPES = (
    list,
    dict,
    set,
    bytearray,
    collections.OrderedDict,
    collections.Counter,
    collections.defaultdict,
    collections.deque,
)
# Methods a collector statement may call on its target (replayed in order by the caller).
TARGET_METHODS = frozenset(
    {
        "append",
        "extend",
        "add",
        "update",
        "insert",
        "appendleft",
        "extendleft",
        "discard",
        "get",
        "setdefault",
    }
)
