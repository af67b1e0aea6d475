"""Fixtures shared by the tests; plain helpers (paths, the CLI runner, clip makers) are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_clip


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory) -> Path:
    """A 2 s, 160x120, 25 fps H.264 clip (two frames sampled at 1 fps), made once per session."""
    return make_clip(tmp_path_factory.mktemp("clips") / "small.mp4", duration=2, size="160x120")
