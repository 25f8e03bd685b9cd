"""The ``clustrix`` command: parsing arguments and printing; the logic lives in the library."""

from __future__ import annotations

from . import cache as _cache  # noqa: F401  (registers ``clustrix cache``)
from . import pools as _pools  # noqa: F401  (registers ``clustrix pools`` and ``clustrix pool``)
from .commands import main, set_yaml_setting

__all__ = ["main", "set_yaml_setting"]
