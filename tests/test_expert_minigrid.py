"""Tests for the scripted MiniGrid BFS expert (cleanrl_vlmcar.experts.minigrid)."""

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)
import pytest

from cleanrl_vlmcar.experts.minigrid import MiniGridExpert, supports

PAPER_ENVS = [
    "MiniGrid-DoorKey-5x5-v0",
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-DoorKey-8x8-v0",
    "MiniGrid-Unlock-v0",
    "MiniGrid-UnlockPickup-v0",
    "MiniGrid-BlockedUnlockPickup-v0",
    "MiniGrid-KeyCorridorS3R1-v0",
    "MiniGrid-KeyCorridorS3R2-v0",
    "MiniGrid-KeyCorridorS3R3-v0",
]


def run_episode(env, expert, seed):
    """Play one episode with the expert; return (success, steps)."""
    obs, _ = env.reset(seed=seed)
    expert.reset(env, obs)
    steps = 0
    while True:
        action = expert.act(env, obs)
        assert action in range(env.action_space.n)
        obs, reward, terminated, truncated, _ = env.step(action)
        steps += 1
        if terminated or truncated:
            return terminated and reward > 0, steps


@pytest.mark.parametrize("env_id", PAPER_ENVS)
def test_expert_solves_paper_envs(env_id):
    env = gym.make(env_id)
    assert supports(env)
    expert = MiniGridExpert(env)
    failed = [s for s in range(10) if not run_episode(env, expert, s)[0]]
    assert failed == [], f"{env_id}: expert failed on seeds {failed}"
    env.close()


def test_expert_recovers_after_off_plan_actions():
    """Replans from the true state when another policy took some of the actions."""
    env = gym.make("MiniGrid-BlockedUnlockPickup-v0")
    expert = MiniGridExpert(env)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        expert.reset(env, obs)
        # Off-plan prefix: turn around and walk a little (never touches objects).
        for action in (0, 2, 2, 1, 1, 2):
            obs, *_ = env.step(action)
        while True:
            obs, reward, terminated, truncated, _ = env.step(expert.act(env, obs))
            if terminated or truncated:
                break
        assert terminated and reward > 0


def test_supports_rejects_non_minigrid():
    env = gym.make("CartPole-v1")
    assert not supports(env)
    with pytest.raises(ValueError, match="DoorKey.*KeyCorridor"):
        MiniGridExpert(env)
    env.close()


def test_supports_rejects_unsupported_minigrid_family():
    env = gym.make("MiniGrid-RedBlueDoors-6x6-v0")
    assert not supports(env)
    with pytest.raises(ValueError, match="supported family"):
        MiniGridExpert(env)
