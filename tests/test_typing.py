"""The public API and the core under it type-check (mypy, configured in pyproject.toml)."""
from __future__ import annotations

import os
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes_on_the_configured_packages(tmp_path):
    cwd = os.getcwd()
    os.chdir(ROOT)          # mypy reads [tool.mypy] (files, options) from the repository's pyproject.toml
    try:
        out, err, status = api.run(["--cache-dir", str(tmp_path / "cache")])
    finally:
        os.chdir(cwd)
    assert status == 0, out + err
    assert "Success" in out and "symdsl" in (ROOT / "pyproject.toml").read_text()
