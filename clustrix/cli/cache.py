"""``clustrix cache list`` and ``clustrix cache clear``: the stored values of cached calls."""

from __future__ import annotations

import time

import click

from ..cache import CacheDir
from ..config import resolve_config
from .commands import main, parse_age


def _folder() -> CacheDir:
    return CacheDir(resolve_config().config.cache_dir)


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # not reached


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


@main.group("cache")
def cache_group() -> None:
    """The values of cached calls (the cache setting, @cluster(cache=True))."""


@cache_group.command("list")
def cache_list() -> None:
    """List cached values: key, function, size, age; then the total."""
    folder = _folder()
    entries = folder.entries()
    if not entries:
        click.echo(f"no cached values in {folder.path}")
        return
    now = time.time()
    rows = [("KEY", "FUNCTION", "SIZE", "AGE")]
    rows += [(e.key[:12], e.function, _size(e.size), _age(now - e.stored)) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    total = sum(e.size for e in entries)
    click.echo(f"total: {len(entries)} value(s), {_size(total)} in {folder.path}")


@cache_group.command("clear")
@click.option(
    "--older-than",
    "older_than",
    default=None,
    help="Only values stored longer ago than this (e.g. 7d, 12h, 30m); default: all.",
)
def cache_clear(older_than: str | None) -> None:
    """Remove cached values: every one, or those older than --older-than."""
    age = None if older_than is None else parse_age(older_than)
    folder = _folder()
    removed = folder.clear(age)
    total = sum(e.size for e in removed)
    click.echo(f"removed {len(removed)} cached value(s), {_size(total)}, from {folder.path}")
