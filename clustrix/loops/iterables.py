"""The iterable of a loop: rebuilt from its parts, and whether its type is vouched for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import purity

__all__ = ["Source", "vouched"]


class Source:
    """``enumerate``/``zip``/``reversed`` of parts, built only when the loop needs it."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def _iterables(self) -> list[Any]:
        return list(self.args) if self.fn is zip else list(self.args[:1])

    def build(self) -> Any:
        args = [a.build() if isinstance(a, Source) else a for a in self.args]
        return self.fn(*args, **self.kwargs)

    def leaves(self) -> list[Any]:
        out: list[Any] = []
        for part in self._iterables():
            out.extend(part.leaves() if isinstance(part, Source) else [part])
        return out

    def length(self) -> int:
        sizes = [p.length() if isinstance(p, Source) else len(p) for p in self._iterables()]
        return min(sizes) if sizes else 0


def vouched(leaves: list[Any]) -> bool:
    """Whether every part iterated is of a type a parallel loop may iterate."""
    return all(type(leaf) in purity.SEQUENCE_TYPES for leaf in leaves)
