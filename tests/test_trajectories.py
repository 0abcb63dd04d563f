"""Trajectories: the store, rollouts, the expert, noisy and checkpoint policies, replayed demonstrations."""

from pathlib import Path

import numpy as np
import pytest

from cleanrl_vlmcar.trajectories import (TrajectoryStore, collect, load_demos, make_env, make_policy, parse_policy,
                                         rollout)
from cleanrl_vlmcar.verify import verify_env

ROOT = Path(__file__).resolve().parents[1]
KC = "MiniGrid-KeyCorridorS3R1-v0"
GOOD_KC = (ROOT / "examples" / "keycorridor_state.py").read_text()


def test_store_roundtrip_and_no_resimulation(tmp_path):
    store = TrajectoryStore(tmp_path)
    trajs, dropped = collect(KC, "state", "expert", 3, seed=5, store=store, successful_only=True, progress=False)
    assert dropped == 0 and all(t.success for t in trajs)
    files = sorted(tmp_path.rglob("*.npz"))
    assert [f.name for f in files] == ["seed5.npz", "seed6.npz", "seed7.npz"]
    assert files[0].parent.name == "expert" and files[0].parent.parent.name == "state"
    loaded = store.load(KC, "state", "expert", 5)
    orig = trajs[0]
    assert loaded.success and len(loaded.views["state"]) == len(orig.views["state"])
    for a, b in zip(loaded.views["state"], orig.views["state"]):
        assert (a["grid"] == b["grid"]).all() and a["carrying"] == b["carrying"]
        assert a["agent_pos"] == b["agent_pos"] and a["mission"] == b["mission"] and a["agent_dir"] == b["agent_dir"]
    np.testing.assert_array_equal(loaded.actions, orig.actions)
    mtime = files[0].stat().st_mtime_ns
    collect(KC, "state", "expert", 3, seed=5, store=store, successful_only=True, progress=False)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not re-simulated


def test_corrupt_trajectory_file_is_resimulated(tmp_path):
    store = TrajectoryStore(tmp_path)
    collect(KC, "state", "random", 1, seed=0, store=store, progress=False)
    path = store.path(KC, "state", "random", 0)
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="re-simulating"):
        trajs, _ = collect(KC, "state", "random", 1, seed=0, store=store, progress=False)
    assert len(trajs) == 1 and store.load(KC, "state", "random", 0) is not None


def test_noisy_expert_and_policy_names():
    assert parse_policy("noisy0.3") == ("expert", 0.3)
    assert parse_policy("noisy0.5") == ("expert", 0.5)
    for bad in ("noisy", "noisy1.5", "novice", "policy:"):
        with pytest.raises(ValueError, match="unknown policy"):
            parse_policy(bad)
    env = make_env(KC)
    expert_steps = [rollout(env, make_policy("expert", env), s, ["state"], True).length for s in range(5)]
    noisy_steps = [rollout(env, make_policy("noisy0.5", env), s, ["state"], True).length for s in range(5)]
    assert sum(noisy_steps) > sum(expert_steps)


def test_expert_for_unsupported_env_is_clear():
    import gymnasium as gym

    with pytest.raises(ValueError, match="demos"):
        make_policy("expert", gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="cannot make environment 'MiniGrid-Nope-v0'"):
        make_env("MiniGrid-Nope-v0")


def test_demos_roundtrip_and_bad_files(tmp_path):
    env = make_env(KC)
    trajs = [rollout(env, make_policy("expert", env), s, ["state"], True) for s in (0, 1, 2, 3)]
    width = max(t.length for t in trajs)
    actions = np.zeros((4, width), dtype=np.int64)
    for i, t in enumerate(trajs):
        actions[i, : t.length] = t.actions
    path = tmp_path / "demos.npz"
    np.savez(path, seeds=np.array([0, 1, 2, 3]), lengths=np.array([t.length for t in trajs]), actions=actions)
    demos = load_demos(path, KC, "state")
    assert [d.success for d in demos] == [True] * 4
    assert (demos[1].views["state"][-1]["grid"] == trajs[1].views["state"][-1]["grid"]).all()
    # the first n successful demos are the feedback set, the next n the held-out set
    report = verify_env(GOOD_KC, KC, "state", n=2, expert_source="demos", demos=str(path), cache_dir=tmp_path,
                        progress=False)
    assert report.passed and report.expert_n == 2 and report.holdout.expert_n == 2
    assert report.settings["demos_sha256"] and report.settings["expert_source"] == "demos"
    report = verify_env(GOOD_KC, KC, "state", n=3, expert_source="demos", demos=str(path), cache_dir=tmp_path,
                        progress=False)  # 4 demos: 3 for feedback, 1 left for the held-out set of 3
    assert not report.passed and any("only 1 successful expert trajectories for the held-out set (needs 3; with "
                                     "demonstrations the file needs 6" in r for r in report.reasons)
    with pytest.raises(ValueError, match="SHA-256 differs"):  # a recorded entry names its demos file by hash
        verify_env(GOOD_KC, KC, "state", n=2, expert_source="demos", demos=str(path), cache_dir=tmp_path,
                   progress=False, demos_sha256="0" * 64)
    np.savez(tmp_path / "bad.npz", seeds=np.array([0]))
    with pytest.raises(ValueError, match="lacks the array"):
        load_demos(tmp_path / "bad.npz", KC, "state")
    with pytest.raises(ValueError, match="does not exist"):
        load_demos(tmp_path / "missing.npz", KC, "state")


def test_checkpoint_policy(tmp_path):
    import torch

    class Greedy(torch.nn.Module):  # logits that always prefer action 2 (forward)
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((x.shape[0],), 2), 7).float()

    torch.jit.trace(Greedy(), torch.zeros(1, 7, 7, 3)).save(str(tmp_path / "policy.pt"))
    env = make_env(KC)
    policy = make_policy(f"policy:{tmp_path}", env)
    traj = rollout(env, policy, 0, ["state"], stop_on_success=True)
    assert set(traj.actions.tolist()) == {2}
    with pytest.raises(ValueError, match="--save-model"):
        make_policy(f"policy:{tmp_path / 'nothing'}", env)
