"""Shared fixtures. Helpers live in tests/support.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import REPO


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave things a person may want to look at (screenshots, logs)."""
    path = REPO / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
