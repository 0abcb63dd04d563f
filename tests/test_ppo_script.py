"""ppo_vlmcar.py end to end with tiny budgets (as CleanRL's own tests do): tags, reward variants, failures."""

import json
from pathlib import Path

import pytest

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.program import check_source
from script_runs import assert_every_frame_rewarded, only_run, run_script, scalars

pytestmark = pytest.mark.slow  # every test runs the script in a subprocess

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "ppo_vlmcar.py")
TINY = ["--num-envs", "2", "--num-steps", "128", "--total-timesteps", "1024", "--update-epochs", "1"]


def run(args, cwd, env=None, timeout=300):
    return run_script(SCRIPT, args, cwd, env, timeout)


@pytest.mark.parametrize("reward", ["sparse", "vlmcar"])
def test_minigrid_runs_and_logs_tags(tmp_path, reward):
    # a bonus-friendly env: KeyCorridorS3R1's key is next to the agent, random agents pick it up often
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--reward", reward, "--seed", "3", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert f"__ppo_vlmcar-{reward}__3__" in run_dir.name
    tags = scalars(run_dir)
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
                "losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl",
                "charts/success_rate"]:
        assert tag in tags, (tag, sorted(tags))
    if reward == "vlmcar":
        assert len(tags["charts/episodic_return"]) == len(tags["charts/shaped_return"])
        for k in (1, 2, 3):
            assert f"vlmcar/subtask_{k}_rate" in tags
        # bonuses were paid: shaped returns exceed the environment's own returns
        diffs = [s - e for s, e in zip(tags["charts/shaped_return"], tags["charts/episodic_return"])]
        assert max(diffs) >= 1.0 - 1e-6
        assert tags["vlmcar/subtask_1_rate"][-1] > 0
    else:  # the sparse variant trains on the env's return itself: no separate shaped return is written
        assert not any(t.startswith("vlmcar/") for t in tags) and "charts/shaped_return" not in tags


def test_cartpole_sparse_and_save_model(tmp_path):
    import numpy as np
    import torch

    r = run(["--env-id", "CartPole-v1", "--reward", "sparse", "--save-model", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert (run_dir / "ppo_vlmcar.cleanrl_model").exists()
    policy = torch.jit.load(str(run_dir / "policy.pt"))
    logits = policy(torch.zeros(1, 4))
    assert logits.shape == (1, 2) and np.isfinite(logits.detach().numpy()).all()
    assert "charts/episodic_return" in scalars(run_dir)


def test_subtask_obs_feeds_the_programs_progress_to_the_policy(tmp_path):
    import torch

    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--subtask-obs", "--save-model", "--seed", "3", *TINY],
            tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run(tmp_path)
    weights = torch.load(run_dir / "ppo_vlmcar.cleanrl_model")
    extra = weights["actor.0.weight"].shape[1] - 7 * 7 * 20  # the one-hot view + the next sub-task, one-hot
    assert extra == weights["critic.0.weight"].shape[1] - 7 * 7 * 20
    tags = scalars(run_dir)
    subtasks = sum(t.startswith("vlmcar/subtask_") and t.endswith("_rate") for t in tags)
    assert subtasks >= 1 and extra == subtasks + 1  # sub-tasks 0..K-1 next, or all done
    # bonuses were paid through the synchronous path: shaped returns exceed the env's returns somewhere
    diffs = [s - e for s, e in zip(tags["charts/shaped_return"], tags["charts/episodic_return"])]
    assert max(diffs) >= 1.0 - 1e-6
    assert not (run_dir / "policy.pt").exists()  # the policy needs the progress: no observation-only TorchScript
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--subtask-obs", "--reward", "sparse", *TINY], tmp_path)
    assert r.returncode != 0 and "--subtask-obs needs --reward vlmcar" in r.stderr


def test_vlmcar_on_unsupported_env_says_use_sparse(tmp_path):
    r = run(["--env-id", "CartPole-v1", *TINY], tmp_path)
    assert r.returncode != 0
    assert "--reward sparse" in r.stderr and "CartPole-v1 (generic family) has no 'state' view; choose one of: obs, " \
        "pixels" in r.stderr


def test_missing_cached_program_names_the_ways_out(tmp_path):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    r = run(["--env-id", "MiniGrid-DoorKey-5x5-v0", *TINY], tmp_path, env={"VLMCAR_REWARD_CACHE": str(empty)})
    assert r.returncode != 0
    for way in ("--vlm openai", "--vlm hf", "--vlm manual"):
        assert way in r.stderr


def test_bad_flags_and_env_ids(tmp_path):
    r = run(["--reward", "magic", *TINY], tmp_path)
    assert r.returncode != 0 and "magic" in r.stderr
    r = run(["--env-id", "MiniGrid-NoSuchEnv-v0", "--reward", "sparse", *TINY], tmp_path)
    assert r.returncode != 0 and "NoSuchEnv" in r.stderr
    r = run(["--view", "depth", *TINY], tmp_path)
    assert r.returncode != 0 and "depth" in r.stderr
    # each of these says what to change, and leaves no run folder behind
    for args, says in [(["--env-id", "NoSuchEnv-v0", "--reward", "sparse", *TINY], "cannot create environment"),
                       (["--env-id", "Pendulum-v1", "--reward", "sparse", *TINY], "use sac_vlmcar.py"),
                       (["--num-envs", "0"], "--num-envs must be at least 1"),
                       (["--num-steps", "-5"], "--num-steps must be at least 1"),
                       (["--total-timesteps", "10"], "less than one rollout"),
                       (["--reward", "sparse", "--subtask-obs", *TINY], "--subtask-obs needs --reward vlmcar")]:
        r = run(args, tmp_path)
        assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


DICT_ENV = """
import gymnasium as gym
import numpy as np


class DictCorridor(gym.Env):
    observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(0, 9, (1,), np.float32),
                                         "goal": gym.spaces.Discrete(10)})
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def _obs(self):
        return {"pos": np.array([self.pos], np.float32), "goal": 9}

    def step(self, action):
        self.pos = max(0, min(9, self.pos + (1 if action == 1 else -1)))
        return self._obs(), float(self.pos == 9), self.pos == 9, False, {}


gym.register("DictCorridor-v0", entry_point=DictCorridor, max_episode_steps=30)
"""


def test_sparse_trains_on_a_custom_env_with_dict_observations(tmp_path):
    """Any discrete-action env trains with --reward sparse: structured observations are flattened."""
    (tmp_path / "dictcorridor.py").write_text(DICT_ENV)
    r = run(["--env-id", "dictcorridor:DictCorridor-v0", "--reward", "sparse", *TINY], tmp_path,
            env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "charts/episodic_return" in scalars(only_run(tmp_path))


def test_clip_reward_variant(tmp_path, tiny_clip):
    # threshold 0: every frame is rewarded, so the shaped return (CLIP reward) is the episode length
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--reward", "clip", "--clip-model", tiny_clip,
             "--clip-threshold", "0.0", *TINY], tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert "-clip__" in run_dir.name
    tags = scalars(run_dir)
    assert_every_frame_rewarded(tags)
    # every frame is paid, and few of the 1024 frames end an episode: counted up to nearly all of them
    paid = tags["clip/paid_before_env_end"]
    assert paid == sorted(paid) and 0.9 * 1024 <= paid[-1] < 1024


def test_clip_missing_checkpoint_is_clear(tmp_path):
    r = run(["--reward", "clip", "--clip-model", str(tmp_path / "no_such_clip"), *TINY], tmp_path,
            env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and "no_such_clip" in r.stderr


def test_clip_end_episode(tmp_path, tiny_clip):
    # threshold 0: the CLIP reward fires on every step, so with --clip-end-episode every episode lasts one step
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--reward", "clip", "--clip-model", tiny_clip,
             "--clip-threshold", "0.0", "--clip-end-episode", "--num-envs", "2", "--num-steps", "64",
             "--total-timesteps", "256", "--update-epochs", "1"], tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    tags = scalars(only_run(tmp_path))
    lengths = tags["charts/episodic_length"]
    assert len(lengths) >= 100 and set(lengths) == {1.0}
    assert tags["clip/episodes_ended"][-1] == len(lengths)
    assert 0 < tags["clip/paid_before_env_end"][-1] <= len(lengths)  # each one ended an episode here
    assert tags["charts/success_rate"][-1] == 0.0  # ending on CLIP's word is not the env's success


def test_reward_program_file_is_verified_then_trained_on(tmp_path):
    """--reward-program FILE: the file is verified at startup, then the run trains on it (worker confined)."""
    program = ROOT / "examples" / "keycorridor_state.py"
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--reward-program", str(program), *TINY], tmp_path,
            env={"VLMCAR_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    tags = scalars(only_run(tmp_path))
    for tag in ("vlmcar/subtask_1_rate", "vlmcar/task_without_success", "vlmcar/check_failures",
                "vlmcar/worker_restarts"):
        assert tag in tags, (tag, sorted(tags))
    assert tags["vlmcar/check_failures"][-1] == 0 and tags["vlmcar/worker_restarts"][-1] == 0
    # the console and the run record say which program was used
    assert f"VLM-CaR reward program: {program}" in r.stdout and "3 sub-task(s):" in r.stdout
    recorded = json.loads((only_run(tmp_path) / "args.json").read_text())
    assert recorded["reward_program"] == str(program) and recorded["torch_threads"] == 0
    assert recorded["vlmcar_program"]["file"] == str(program)
    assert recorded["vlmcar_program"]["subtasks"][0] == "pick up the key that matches the locked door"


def test_console_reports_success_rate_return_and_subtask_rates_and_the_cached_program(tmp_path):
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--num-envs", "2", "--num-steps", "64",
             "--total-timesteps", "1280", "--update-epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    status = [line for line in r.stdout.splitlines() if line.startswith("global_step=")]
    assert status and "success_rate=" in status[-1] and "episodic_return=" in status[-1]
    path, entry = cache.lookup("MiniGrid-KeyCorridorS3R1-v0", "state")  # the shipped program the script uses
    subtasks = check_source(entry["program"]).subtasks
    assert "subtask_rates=" in status[-1] and status[-1].count("/") == len(subtasks) - 1
    recorded = json.loads((only_run(tmp_path) / "args.json").read_text())["vlmcar_program"]
    assert recorded["cache_key"] == entry["key"] and recorded["file"] == str(path)
    assert recorded["subtasks"] == list(subtasks)


def test_reward_program_that_fails_verification_stops_before_training(tmp_path):
    bad = tmp_path / "always.py"  # completes every sub-task on the first step: random play "solves" the task
    bad.write_text("SUBTASKS = ['everything']\ndef subtask_1(obs, start):\n    return True\n")
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--reward-program", str(bad), *TINY], tmp_path,
            env={"VLMCAR_CACHE": str(tmp_path / "cache")})
    assert r.returncode != 0
    assert "failed verification" in r.stderr and "random trajectories" in r.stderr
    assert not list((tmp_path / "runs").iterdir())  # nothing half-made is left behind


def test_reward_program_refused_statically_and_missing_file(tmp_path):
    evil = tmp_path / "evil.py"
    evil.write_text("import os\nSUBTASKS = ['x']\ndef subtask_1(obs, start):\n    return os.system('true') == 0\n")
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--reward-program", str(evil), *TINY], tmp_path)
    assert r.returncode != 0 and "import of 'os' is not allowed" in r.stderr
    r = run(["--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--reward-program", str(tmp_path / "nope.py"), *TINY], tmp_path)
    assert r.returncode != 0 and "cannot read --reward-program" in r.stderr
