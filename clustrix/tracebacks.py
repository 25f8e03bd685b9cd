"""Put file names and source lines back into tracebacks of functions sent by value.

cloudpickle replaces the file name of every code object it pickles by value with
``<dynamic-code>``, so a remote traceback through a function defined in a script or notebook
would show neither the file nor the failing line. The caller still has that code, so the
traceback text is repaired here, on the caller's side, from the caller's own source.
"""

from __future__ import annotations

import linecache
import re
from collections.abc import Callable
from typing import Any

from .introspect import reachable

_DYNAMIC_FRAME = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (\S+)$')
_MAX_FUNCTIONS = 200


def code_files(func: Callable[..., Any]) -> dict[str, str]:
    """Map function names to their source files, for ``func`` and what it calls by name."""
    found: dict[str, str] = {}
    for reached in reachable(func, _MAX_FUNCTIONS):
        for code in reached.codes:
            found.setdefault(code.co_name, code.co_filename)
    return found


def restore_locations(traceback_text: str, files: dict[str, str]) -> str:
    """Replace ``<dynamic-code>`` frames with the caller's file name and source line."""
    lines = traceback_text.splitlines()
    repaired: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _DYNAMIC_FRAME.match(line)
        filename = files.get(match.group(3)) if match else None
        if match is None or filename is None:
            repaired.append(line)
            index += 1
            continue
        indent, number, name = match.groups()
        repaired.append(f'{indent}File "{filename}", line {number}, in {name}')
        source = linecache.getline(filename, int(number)).strip()
        if source:
            repaired.append(f"{indent}  {source}")
        index += 1
    return "\n".join(repaired) + ("\n" if traceback_text.endswith("\n") else "")
