"""Text a setting may hold: what could end a scheduler directive or a script line early.

Settings are written into job scripts (directive lines, ``export`` lines, shell commands), so
their text is checked once here, with the rule each setting declares in its ``FieldSpec``.
This module depends on nothing else in Clustrix: the settings and the scheduler modules
both use it.
"""

from __future__ import annotations

import re
import unicodedata

TEXT_ALLOWED = {
    "line": "one line of text without control characters",
    "name": "a name without whitespace or control characters",
    "multiline": "text without NUL characters",
}
#: Shell variable names: what ``export NAME=...`` accepts in every shell.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def text_problem(text: str, rule: str = "line") -> str | None:
    """What makes ``text`` unfit for ``rule`` (see ``FieldSpec.text``), or None if nothing.

    Line breaks, NUL and the other control characters are what could end a directive or a
    script line early, or start a new one; a "name" holds no whitespace either, because
    qsub splits directive lines on it.
    """
    for char in text:
        if char == "\0":
            return "a NUL character"
        if rule == "multiline":
            continue
        category = unicodedata.category(char)
        if char in "\n\r\v\f\x1c\x1d\x1e\x85" or category in ("Zl", "Zp"):
            return "a line break"
        if category == "Cc":
            return f"a control character ({char!r})"
        if rule == "name" and char.isspace():
            return "whitespace"
    return None
