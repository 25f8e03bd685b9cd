"""Walking what a function's code reaches without running it.

Both the environment detection (which modules a call needs) and the traceback repair (which
file a frame came from) need the same walk: the function, the code nested in it, and the
functions it refers to by global name or closure, transitively.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reached:
    """One function met by the walk, with its code objects and the values it refers to."""

    function: Any
    codes: list[types.CodeType]
    referenced: list[Any]  # values of the globals and closure cells its code names


def nested_codes(code: types.CodeType) -> list[types.CodeType]:
    """``code`` and every code object defined inside it (lambdas, inner functions...)."""
    codes = [code]
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            codes.extend(nested_codes(constant))
    return codes


def reachable(
    func: Callable[..., Any],
    limit: int = 500,
    follow: Callable[[Any], bool] | None = None,
) -> Iterator[Reached]:
    """Every Python function reachable from ``func`` by name, each once, at most ``limit``.

    ``follow``, if given, says which functions besides ``func`` the walk enters (the user's
    own, say): the others are neither yielded nor walked through.
    """
    pending: list[Any] = [func]
    seen: set[int] = set()
    while pending and len(seen) < limit:
        item = pending.pop()
        item = getattr(item, "__wrapped__", item)
        code = getattr(item, "__code__", None)
        if code is None or id(code) in seen:
            continue
        if follow is not None and seen and not follow(item):
            continue
        seen.add(id(code))
        codes = nested_codes(code)
        namespace = getattr(item, "__globals__", {})
        referenced = [
            c.cell_contents for c in (getattr(item, "__closure__", None) or ()) if _filled(c)
        ]
        referenced += [namespace[n] for c in codes for n in c.co_names if n in namespace]
        yield Reached(item, codes, referenced)
        pending.extend(value for value in referenced if _is_function(value))


def _is_function(value: Any) -> bool:
    return isinstance(value, (types.FunctionType, types.MethodType)) or hasattr(
        value, "__wrapped__"
    )


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - probing an empty cell raises
    except ValueError:
        return False
    return True
