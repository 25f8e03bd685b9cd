"""Run-time checks: what the analysis could only assume is verified when the loop runs.

A worker checks the types behind method calls and in-place operators (:func:`check_method`,
:func:`check_immutable`) and raises :class:`Unverified` when a value is not what the analysis
relied on; the caller proves, before launching, that what the effects write is not reachable
from what the loop reads (:class:`Reach`) and that effect targets are builtin containers.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import types
from collections.abc import Iterable, Sequence
from typing import Any

from . import purity

__all__ = [
    "REACH_BUDGET",
    "Reach",
    "Unverified",
    "check_immutable",
    "check_method",
    "containers_ok",
    "is_atom",
]

REACH_BUDGET = 2_000_000  # objects walked to prove that effects alias nothing the loop reads


class Unverified(BaseException):
    """A value the analysis relied on the type of has another type: run this part in order."""


_IMMUTABLE: set[type] = {
    int,
    float,
    complex,
    bool,
    str,
    bytes,
    tuple,
    frozenset,
    type(None),
    range,
    decimal.Decimal,
    fractions.Fraction,
}
try:
    import numpy as _np

    _NP_GENERIC: type | None = _np.generic
    _NDARRAY: type | None = _np.ndarray
except ImportError:  # pragma: no cover
    _np = None  # type: ignore[assignment]
    _NP_GENERIC = _NDARRAY = None


def check_method(receiver: Any, name: str) -> Any:
    """``receiver.name`` if it is a vetted pure method of the receiver's type."""
    if purity.method_allowed(receiver, name):
        return getattr(receiver, name)
    raise Unverified(f"`.{name}()` on a {type(receiver).__name__}")


def check_immutable(value: Any) -> None:
    """Raise unless an in-place operator on ``value`` can only rebind the name."""
    kind = type(value)
    if kind in _IMMUTABLE or (_NP_GENERIC is not None and isinstance(value, _NP_GENERIC)):
        if kind is tuple and not all(type(v) in _IMMUTABLE for v in value):
            return  # `t += (x,)` builds a new tuple whatever the items are
        return
    raise Unverified(f"an in-place operator on a {kind.__name__}")


def is_atom(value: Any) -> bool:
    """Whether ``value`` is immutable and holds no other object (a number, a string...)."""
    kind = type(value)
    return (kind in _IMMUTABLE and kind is not tuple) or (
        _NP_GENERIC is not None and isinstance(value, _NP_GENERIC)
    )


class Reach:
    """Mutable objects (and arrays) reachable from some values, within a budget."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.arrays: list[Any] = []
        self.left = REACH_BUDGET
        self.opaque = False  # an iterator, or too much to walk: nothing can be proven

    def add(self, roots: Iterable[Any]) -> Reach:
        stack = list(roots)
        keep: list[Any] = []  # keep walked objects alive, so that their ids stay unique
        while stack and not self.opaque:
            value = stack.pop()
            if is_atom(value):
                continue
            self.left -= 1
            if self.left < 0:
                self.opaque = True
                break
            key = id(value)
            if key in self.ids:
                continue
            self.ids.add(key)
            keep.append(value)
            kind = type(value)
            if _NDARRAY is not None and isinstance(value, _NDARRAY):
                self.arrays.append(value)
                if value.dtype == object:
                    stack.extend(value.ravel().tolist())
                continue
            if isinstance(value, dict):
                stack.extend(value.keys())
                stack.extend(value.values())
            elif isinstance(value, (list, tuple, set, frozenset, collections.deque)):
                stack.extend(value)
            elif kind in (type({}.keys()), type({}.values()), type({}.items())):
                stack.append(value.mapping)
            elif isinstance(value, (types.FunctionType, types.ModuleType, type)):
                continue
            elif hasattr(value, "__next__") or isinstance(value, types.GeneratorType):
                self.opaque = True
            elif hasattr(value, "__dict__"):
                stack.extend(vars(value).values())
        self._keep = keep
        return self

    def meets(self, other: Reach) -> bool:
        if self.opaque or other.opaque or self.ids & other.ids:
            return True
        if self.arrays and other.arrays and _np is not None:
            return any(_np.may_share_memory(a, b) for a in self.arrays for b in other.arrays)
        return False


def containers_ok(targets: Sequence[Any], names: Sequence[str], containers: set[str]) -> bool:
    """Whether the effect targets used as containers are builtin containers (or arrays)."""
    for name, value in zip(names, targets, strict=False):
        if name in containers and not (
            type(value) in purity.OWNED_TYPES or (_NDARRAY is not None and type(value) is _NDARRAY)
        ):
            return False
    return True
