"""The effect tables: which functions and methods a parallel loop body may call.

Why a whitelist: a loop runs in parallel only if every call in its body is known to leave all
state outside the iteration alone and to give the same value in a worker process as in the
caller. Calls are resolved to objects when the function is analysed (``np.sqrt`` is whatever
``np`` names in the function's module), and looked up here by identity, so an alias or a
shadowing definition is never mistaken for the vetted function.

Nothing here is imported lazily: modules that are not installed (numpy) simply contribute no
entries.
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

__all__ = [
    "OWNED_TYPES",
    "PURE_METHODS",
    "SEQUENCE_TYPES",
    "TARGET_METHODS",
    "is_pure_object",
    "method_allowed",
    "returns_fresh",
]

# builtins that neither mutate their arguments nor depend on per-process state. Absent on
# purpose: id and hash (differ between processes), next (advances an iterator), iter is fine.
_PURE_BUILTIN_NAMES = [
    "abs",
    "all",
    "any",
    "ascii",
    "bin",
    "bool",
    "bytes",
    "callable",
    "chr",
    "complex",
    "dict",
    "divmod",
    "enumerate",
    "filter",
    "float",
    "format",
    "frozenset",
    "getattr",
    "hasattr",
    "hex",
    "int",
    "isinstance",
    "issubclass",
    "iter",
    "len",
    "list",
    "map",
    "max",
    "min",
    "oct",
    "ord",
    "pow",
    "range",
    "repr",
    "reversed",
    "round",
    "set",
    "slice",
    "sorted",
    "str",
    "sum",
    "tuple",
    "type",
    "zip",
    "print",
    "ValueError",
    "TypeError",
    "KeyError",
    "IndexError",
    "ZeroDivisionError",
    "ArithmeticError",
    "RuntimeError",
    "Exception",
    "StopIteration",
    "AssertionError",
    "LookupError",
    "OverflowError",
    "NotImplementedError",
    "UnicodeError",
    "AttributeError",
]

# builtins whose result is a new object (or an immutable one): in-place operators and item
# assignment on a name bound to such a result touch nothing outside the iteration.
_FRESH_BUILTIN_NAMES = [
    "abs",
    "bin",
    "bool",
    "bytes",
    "chr",
    "complex",
    "dict",
    "divmod",
    "float",
    "format",
    "frozenset",
    "hex",
    "int",
    "len",
    "list",
    "oct",
    "ord",
    "pow",
    "range",
    "repr",
    "round",
    "set",
    "sorted",
    "str",
    "sum",
    "tuple",
    "bytearray",
]

_IMPURE_OPERATOR = set(
    [
        "iadd",
        "iand",
        "iconcat",
        "ifloordiv",
        "ilshift",
        "imod",
        "imul",
        "imatmul",
        "ior",
        "ipow",
        "irshift",
        "isub",
        "itruediv",
        "ixor",
        "setitem",
        "delitem",
    ]
)


def _callables(module: Any, skip: set[str] = frozenset()) -> list[Any]:  # type: ignore[assignment]
    return [
        getattr(module, name)
        for name in dir(module)
        if not name.startswith("_") and name not in skip and callable(getattr(module, name))
    ]


def _build_pure() -> tuple[dict[int, Any], dict[int, Any]]:
    pure: list[Any] = [getattr(builtins, n) for n in _PURE_BUILTIN_NAMES]
    fresh: list[Any] = [getattr(builtins, n) for n in _FRESH_BUILTIN_NAMES]
    pure += _callables(math) + _callables(cmath)
    fresh += _callables(math) + _callables(cmath)
    pure += _callables(operator, _IMPURE_OPERATOR)
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


_NUMPY_FRESH = [
    "abs",
    "absolute",
    "add",
    "all",
    "allclose",
    "amax",
    "amin",
    "any",
    "arange",
    "arccos",
    "arcsin",
    "arctan",
    "arctan2",
    "argmax",
    "argmin",
    "argsort",
    "around",
    "array",
    "array_equal",
    "average",
    "bincount",
    "ceil",
    "clip",
    "concatenate",
    "convolve",
    "copy",
    "corrcoef",
    "cos",
    "cosh",
    "count_nonzero",
    "cov",
    "cross",
    "cumprod",
    "cumsum",
    "deg2rad",
    "degrees",
    "diag",
    "diff",
    "divide",
    "dot",
    "einsum",
    "equal",
    "exp",
    "exp2",
    "expm1",
    "eye",
    "fabs",
    "flip",
    "floor",
    "floor_divide",
    "fmax",
    "fmin",
    "fmod",
    "full",
    "full_like",
    "gradient",
    "greater",
    "greater_equal",
    "hstack",
    "hypot",
    "identity",
    "inner",
    "interp",
    "isclose",
    "isfinite",
    "isinf",
    "isnan",
    "kron",
    "less",
    "less_equal",
    "linspace",
    "log",
    "log10",
    "log1p",
    "log2",
    "logaddexp",
    "logical_and",
    "logical_not",
    "logical_or",
    "logical_xor",
    "logspace",
    "matmul",
    "max",
    "maximum",
    "mean",
    "median",
    "meshgrid",
    "min",
    "minimum",
    "mod",
    "multiply",
    "nan_to_num",
    "nanmax",
    "nanmean",
    "nanmin",
    "nansum",
    "negative",
    "nonzero",
    "not_equal",
    "ones",
    "ones_like",
    "outer",
    "percentile",
    "polyfit",
    "polyval",
    "power",
    "prod",
    "ptp",
    "quantile",
    "rad2deg",
    "radians",
    "real",
    "reciprocal",
    "remainder",
    "repeat",
    "rint",
    "round",
    "sign",
    "sin",
    "sinh",
    "sort",
    "sqrt",
    "square",
    "stack",
    "std",
    "subtract",
    "sum",
    "take",
    "tan",
    "tanh",
    "tile",
    "trace",
    "transpose",
    "true_divide",
    "trunc",
    "unique",
    "var",
    "vstack",
    "where",
    "zeros",
    "zeros_like",
    "histogram",
    "searchsorted",
    "float64",
    "float32",
    "int64",
    "int32",
    "int8",
    "int16",
    "uint8",
    "complex128",
    "bool_",
    "column_stack",
]
# numpy functions that may return their argument itself (or a view of it): pure, not fresh
_NUMPY_VIEWS = [
    "asarray",
    "ascontiguousarray",
    "atleast_1d",
    "atleast_2d",
    "ravel",
    "reshape",
    "squeeze",
]
_NUMPY_LINALG = [
    "norm",
    "solve",
    "inv",
    "det",
    "eig",
    "eigh",
    "eigvals",
    "svd",
    "qr",
    "cholesky",
    "lstsq",
    "pinv",
    "matrix_rank",
]
_NUMPY_RANDOM_CONSTRUCTORS = [
    "default_rng",
    "Generator",
    "SeedSequence",
    "PCG64",
    "Philox",
    "MT19937",
]


def _numpy_tables(np: Any) -> tuple[list[Any], list[Any]]:
    fresh = [getattr(np, n) for n in _NUMPY_FRESH if hasattr(np, n)]
    fresh += [getattr(np.linalg, n) for n in _NUMPY_LINALG if hasattr(np.linalg, n)]
    fresh += [getattr(np.random, n) for n in _NUMPY_RANDOM_CONSTRUCTORS if hasattr(np.random, n)]
    pure = fresh + [getattr(np, n) for n in _NUMPY_VIEWS if hasattr(np, n)]
    return pure, fresh


_PURE, _FRESH = _build_pure()


def is_pure_object(obj: Any) -> bool:
    """Whether ``obj`` is a vetted pure function, type or constructor."""
    return id(obj) in _PURE and _PURE[id(obj)] is obj


def returns_fresh(obj: Any) -> bool:
    """Whether calling ``obj`` returns a new or immutable object (never one of its arguments)."""
    return id(obj) in _FRESH and _FRESH[id(obj)] is obj


# Method names that never mutate the receiver or an argument, on every type they are allowed
# for. The receiver's type is checked when the call runs (see ``method_allowed``).
_STR_METHODS = {
    name for name in dir(str) if not name.startswith("_") and callable(getattr(str, name))
}
_BYTES_METHODS = {
    name for name in dir(bytes) if not name.startswith("_") and callable(getattr(bytes, name))
}
_LIST_PURE = {"index", "count", "copy"}
_DICT_PURE = {"get", "keys", "values", "items", "copy"}
_SET_PURE = {
    "union",
    "intersection",
    "difference",
    "symmetric_difference",
    "issubset",
    "issuperset",
    "isdisjoint",
    "copy",
}
_NUMBER_PURE = {
    "bit_length",
    "bit_count",
    "conjugate",
    "is_integer",
    "as_integer_ratio",
    "hex",
    "to_bytes",
}
_ARRAY_PURE = {
    "all",
    "any",
    "argmax",
    "argmin",
    "argsort",
    "astype",
    "clip",
    "conj",
    "copy",
    "cumprod",
    "cumsum",
    "diagonal",
    "dot",
    "flatten",
    "item",
    "max",
    "mean",
    "min",
    "nonzero",
    "prod",
    "ravel",
    "repeat",
    "reshape",
    "round",
    "searchsorted",
    "squeeze",
    "std",
    "sum",
    "swapaxes",
    "take",
    "tolist",
    "trace",
    "transpose",
    "var",
}
_DECIMAL_PURE = {"quantize", "sqrt", "exp", "ln", "log10", "is_nan", "is_zero", "normalize"}


def _method_table() -> dict[type, set[str]]:
    table: dict[type, set[str]] = {
        str: _STR_METHODS,
        bytes: _BYTES_METHODS,
        list: _LIST_PURE,
        tuple: {"index", "count"},
        dict: _DICT_PURE,
        collections.OrderedDict: _DICT_PURE,
        collections.defaultdict: _DICT_PURE,
        collections.Counter: _DICT_PURE | {"most_common", "elements", "total"},
        set: _SET_PURE,
        frozenset: _SET_PURE,
        int: _NUMBER_PURE,
        float: _NUMBER_PURE,
        bool: _NUMBER_PURE,
        complex: {"conjugate"},
        range: {"index", "count"},
        decimal.Decimal: _DECIMAL_PURE,
        fractions.Fraction: {"limit_denominator", "as_integer_ratio"},
        type({}.keys()): {"isdisjoint"},
        type({}.items()): {"isdisjoint"},
    }
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return table
    table[np.ndarray] = _ARRAY_PURE
    for scalar in (np.float64, np.float32, np.int64, np.int32, np.bool_, np.complex128):
        table[scalar] = _ARRAY_PURE | _NUMBER_PURE
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
