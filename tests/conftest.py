"""Fixtures every test folder shares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.pull import default_model_path


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The pulled default model; `make test` pulls it first, so missing is a failure."""
    path = default_model_path(os.environ)
    assert path.is_file(), f"default model missing: {path} (run `make model` first)"
    return path
