"""sac_vlmcar.py end to end with tiny budgets (as CleanRL's own tests do): tags, reward variants, saved policy,
clear failures before training."""

import json
from pathlib import Path

import numpy as np
import pytest
from script_runs import assert_every_frame_rewarded, only_run, run_script, scalars

pytestmark = pytest.mark.slow  # every test runs the script in a subprocess

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "sac_vlmcar.py")
# 300 steps: six 50-step panda-gym episodes, 200 gradient steps, losses logged at steps 200 and 300
TINY = ["--total-timesteps", "300", "--learning-starts", "100", "--batch-size", "32"]

# a PandaPush state-view program whose first sub-task always holds, so every episode earns at least one bonus
PUSH_PROGRAM = '''\
import numpy as np

SUBTASKS = ["the episode has started", "gripper near the cube", "cube at the goal"]


def subtask_1(obs, start):
    return True


def subtask_2(obs, start):
    return bool(np.linalg.norm(obs["ee_pos"] - obs["object_pos"]) < 0.05)


def subtask_3(obs, start):
    return bool(np.linalg.norm(obs["object_pos"] - obs["goal_pos"]) < DISTANCE_THRESHOLD)
'''


def run(args, cwd, env=None, timeout=300):
    return run_script(SCRIPT, args, cwd, env, timeout)


def no_runs(cwd: Path) -> bool:
    return not (cwd / "runs").exists() or not any((cwd / "runs").iterdir())


@pytest.fixture()
def push_cache(tmp_path):
    """A reward cache in a temp folder (never reward_cache/) with one passing PandaPush-v3 state program."""
    from cleanrl_vlmcar import cache

    folder = tmp_path / "reward_cache"
    entry = {"env_id": "PandaPush-v3", "view": "state", "backend": "test", "model": "", "rounds": [],
             "program": PUSH_PROGRAM, "passed": True, "report": {}, "created": cache.now()}
    cache.write_entry(entry, cache.entry_path("PandaPush-v3", "state", "test0000", folder))
    return folder


CLEANRL_TAGS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/qf1_values",
                "losses/qf2_values", "losses/qf1_loss", "losses/qf2_loss", "losses/qf_loss", "losses/actor_loss",
                "losses/alpha", "losses/alpha_loss"]


def test_sparse_reach_logs_tags_and_saves_model(tmp_path):
    import torch

    r = run(["--env-id", "PandaReach-v3", "--reward", "sparse", "--seed", "3", "--save-model", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert run_dir.name.startswith("PandaReach-v3__sac_vlmcar-sparse__3__")
    assert json.loads((run_dir / "args.json").read_text())["gamma"] == 0.95
    tags = scalars(run_dir)
    for tag in CLEANRL_TAGS + ["charts/success_rate"]:
        assert tag in tags, (tag, sorted(tags))
    assert len(tags["charts/episodic_return"]) >= 5
    # sparse trains on the env's own return: no vlmcar tags and no separate shaped return
    assert not any(t.startswith("vlmcar/") for t in tags) and "charts/shaped_return" not in tags
    assert all(0.0 <= x <= 1.0 for x in tags["charts/success_rate"])

    # the checkpoint: a dict of the actor's and q-networks' state_dicts
    model = torch.load(run_dir / "sac_vlmcar.cleanrl_model", weights_only=True)
    assert {"actor", "qf1", "qf2"} <= set(model)
    # the TorchScript policy: flattened observation (Reach: 6 + 3 goal) -> deterministic action in the box
    policy = torch.jit.load(str(run_dir / "policy.pt"))
    action = policy(torch.zeros(1, 9)).detach().numpy()
    assert action.shape == (1, 3) and np.isfinite(action).all() and (np.abs(action) <= 1.0).all()
    again = policy(torch.zeros(1, 9)).detach().numpy()
    assert np.array_equal(action, again)  # deterministic


def test_vlmcar_push_pays_bonuses(tmp_path, push_cache):
    r = run(["--env-id", "PandaPush-v3", "--reward", "vlmcar", *TINY], tmp_path,
            env={"VLMCAR_REWARD_CACHE": str(push_cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert "__sac_vlmcar-vlmcar__1__" in run_dir.name
    tags = scalars(run_dir)
    for tag in CLEANRL_TAGS + ["charts/shaped_return", "charts/success_rate", "vlmcar/check_failures"]:
        assert tag in tags, (tag, sorted(tags))
    for k in (1, 2, 3):
        assert f"vlmcar/subtask_{k}_rate" in tags
    assert tags["vlmcar/subtask_1_rate"][-1] == 1.0
    assert tags["vlmcar/check_failures"][-1] == 0
    # the always-true first sub-task pays one bonus in every episode
    assert len(tags["charts/episodic_return"]) == len(tags["charts/shaped_return"]) >= 5
    for s, e in zip(tags["charts/shaped_return"], tags["charts/episodic_return"]):
        assert s - e >= 1.0 - 1e-5


def test_unknown_env_id_fails_before_training(tmp_path):
    r = run(["--env-id", "PandaNoSuchTask-v3", "--reward", "sparse", *TINY], tmp_path)
    assert r.returncode != 0
    assert "PandaNoSuchTask-v3" in r.stderr and "Traceback" not in r.stderr
    assert no_runs(tmp_path)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MiniGrid-DoorKey-5x5-v0", "minigrid:MiniGrid-DoorKey-5x5-v0"])
def test_discrete_env_says_use_ppo(tmp_path, env_id):
    """Discrete envs, MiniGrid's too (its id resolves without a prefix; its Dict observation with a text mission is
    not flattened first), get the same message and leave nothing behind."""
    r = run(["--env-id", env_id, "--reward", "sparse", *TINY], tmp_path)
    assert r.returncode != 0
    assert "continuous action space" in r.stderr and "use ppo_vlmcar.py" in r.stderr and "Traceback" not in r.stderr
    assert no_runs(tmp_path)


def test_missing_cached_program_names_the_ways_out(tmp_path):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    r = run(["--env-id", "PandaPush-v3", "--reward", "vlmcar", *TINY], tmp_path,
            env={"VLMCAR_REWARD_CACHE": str(empty)})
    assert r.returncode != 0
    for way in ("--vlm openai", "--vlm hf", "--vlm manual"):
        assert way in r.stderr
    assert "Traceback" not in r.stderr
    assert no_runs(tmp_path)


def test_clip_reward_variant_on_panda(tmp_path, tiny_clip):
    # threshold 0: every rendered frame is rewarded, so the shaped return (the CLIP reward, which replaces the
    # env's) equals the episode length, while charts/episodic_return stays the env's own (-1 per unsolved step)
    r = run(["--env-id", "PandaReach-v3", "--reward", "clip", "--clip-model", tiny_clip, "--clip-threshold", "0.0",
             "--total-timesteps", "110", "--learning-starts", "60", "--batch-size", "32"], tmp_path,
            env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert "__sac_vlmcar-clip__1__" in run_dir.name
    tags = scalars(run_dir)
    assert_every_frame_rewarded(tags)
    # two 50-step episodes (+ reset steps) fit in 110 steps; a third may end early when the policy reaches the
    # target (SAC's runs here are not bit-for-bit repeatable, so the count is not pinned)
    assert len(tags["charts/shaped_return"]) >= 2
    assert all(ret <= 0.0 for ret in tags["charts/episodic_return"])  # panda-gym's own sparse reward


def test_reward_program_file_is_verified_then_trained_on(tmp_path):
    """--reward-program FILE in the SAC script: the shipped PandaPush program, verified at startup, then trained on."""
    from cleanrl_vlmcar import cache

    _, entry = cache.lookup("PandaPush-v3", "state")
    program = tmp_path / "push.py"
    program.write_text(entry["program"])
    r = run(["--env-id", "PandaPush-v3", "--reward-program", str(program), *TINY], tmp_path,
            env={"VLMCAR_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    tags = scalars(only_run(tmp_path))
    assert "vlmcar/task_without_success" in tags and tags["vlmcar/worker_restarts"][-1] == 0

    program.write_text(PUSH_PROGRAM.replace("return True", "return obs['nope']"))  # raises on every view
    r = run(["--env-id", "PandaPush-v3", "--reward-program", str(program), *TINY], tmp_path,
            env={"VLMCAR_CACHE": str(tmp_path / "cache")})
    assert r.returncode != 0 and "failed verification" in r.stderr and "KeyError" in r.stderr
