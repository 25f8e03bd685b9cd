"""Every test runs with its own HOME and working folder, and no CLUSTRIX_* settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import clustrix


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for name in list(os.environ):
        if name.startswith("CLUSTRIX_") and not name.startswith("CLUSTRIX_TEST"):
            monkeypatch.delenv(name)
    clustrix.reset_config()
    yield home
    clustrix.reset_config()
    clustrix.set_login_prompt(None)
