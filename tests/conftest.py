"""Fixtures shared by several test files."""

import pytest


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP checkpoint folder (see tiny_clip.py), built once per test session."""
    from tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """Nothing may land in the repository: the default reward cache and the cwd-relative .vlmcar go to tmp."""
    from helpers_vlm import scrub_openai_env

    from cleanrl_vlmcar import cache

    scrub_openai_env(monkeypatch)
    monkeypatch.setattr(cache, "DEFAULT_DIR", tmp_path / "default_reward_cache")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def traj_cache(tmp_path_factory):
    """One trajectory cache for the module (trajectories are deterministic; sharing only saves time)."""
    return tmp_path_factory.mktemp("traj")
