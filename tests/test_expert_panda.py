"""Tests for the scripted panda-gym experts (cleanrl_vlmcar.experts.panda)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

panda_gym = pytest.importorskip("panda_gym")

from cleanrl_vlmcar.experts.panda import PandaExpert, supports  # noqa: E402

SEEDS = range(10)


def _run_episode(env, expert, seed, check_actions=False):
    obs, _ = env.reset(seed=seed)
    expert.reset(env, obs)
    while True:
        action = expert.act(env, obs)
        if check_actions:
            assert isinstance(action, np.ndarray)
            assert action.dtype == np.float32
            assert action.shape == env.action_space.shape
            assert np.all(np.isfinite(action))
            assert env.action_space.contains(action)
        obs, _, terminated, truncated, info = env.step(action)
        if info["is_success"]:
            return True
        if terminated or truncated:
            return False


@pytest.mark.parametrize("env_id", ["PandaReach-v3", "PandaPush-v3", "PandaPickAndPlace-v3"])
def test_expert_succeeds(env_id):
    env = gym.make(env_id)
    try:
        expert = PandaExpert(env)
        successes = sum(_run_episode(env, expert, seed, check_actions=True) for seed in SEEDS)
    finally:
        env.close()
    assert successes >= 9, f"{env_id}: {successes}/10 successes"


def test_slide_runs_with_valid_actions():
    env = gym.make("PandaSlide-v3")
    try:
        expert = PandaExpert(env)
        for seed in range(3):
            _run_episode(env, expert, seed, check_actions=True)
    finally:
        env.close()


def test_supports_and_dense_variant():
    for env_id in ["PandaReach-v3", "PandaPushDense-v3", "PandaSlide-v3", "PandaPickAndPlace-v3"]:
        env = gym.make(env_id)
        try:
            assert supports(env)
        finally:
            env.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "PandaStack-v3", "PandaReachJoints-v3", "PandaPushJoints-v3"])
def test_unsupported_env_raises(env_id):
    env = gym.make(env_id)
    try:
        assert not supports(env)
        with pytest.raises(ValueError, match="PickAndPlace") as excinfo:
            PandaExpert(env)
        message = str(excinfo.value)
        for task in ("Reach", "Push", "Slide"):
            assert task in message
        if "Joints" in env_id:
            assert "control_type" in message
    finally:
        env.close()


def test_non_env_raises():
    assert not supports(object())
    with pytest.raises(ValueError, match="not a panda-gym"):
        PandaExpert("PandaReach-v3")
