"""Fixtures shared by several test files."""

import pytest


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP checkpoint folder (see tiny_clip.py), built once per test session."""
    from tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))
