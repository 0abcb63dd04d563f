"""Environment families: the registry, the generic family for any gymnasium env, and MountainCar end to end."""

from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401
import numpy as np
import pytest

from cleanrl_vlmcar import families
from cleanrl_vlmcar.errors import NoProgramError, UnsupportedEnvError, VLMCaRError
from cleanrl_vlmcar.families import Family, family_for_id, family_of, make_env, register
from cleanrl_vlmcar.families.generic import numeric_info, success as generic_success
from cleanrl_vlmcar.integrate import RewardHook
from cleanrl_vlmcar.program import load_program
from cleanrl_vlmcar.trajectories import TrajectoryStore, load_demos, rollout
from cleanrl_vlmcar.views import ViewError, get_spec, make_view

ROOT = Path(__file__).resolve().parents[1]
MC = "MountainCar-v0"


def energy_pumping(obs):
    return 2 if obs[1] >= 0 else 0


def mountaincar_program():
    import json

    entry = json.loads(next((ROOT / "reward_cache").glob(f"{MC}__obs__*.json")).read_text())
    return load_program(entry["program"], {}, "mountaincar")


def test_each_env_goes_to_its_family_and_unknown_ones_to_generic():
    assert family_of(gym.make("MiniGrid-KeyCorridorS3R1-v0")).name == "minigrid"
    assert family_of(make_env("PandaReach-v3")).name == "panda"
    assert family_of(gym.make("CartPole-v1")).name == "generic"
    assert [f.name for f in families.families()][-1] == "generic"
    assert family_for_id("MiniGrid-DoorKey-5x5-v0").name == "minigrid"
    assert family_for_id("PandaPush-v3").name == "panda"
    assert family_for_id(MC).name == "generic"


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(UnsupportedEnvError, match="cannot make environment 'NoSuchEnv-v9'.*MODULE:ENV_ID"):
        make_env("NoSuchEnv-v9")
    assert issubclass(UnsupportedEnvError, VLMCaRError) and issubclass(ViewError, UnsupportedEnvError)
    assert issubclass(NoProgramError, VLMCaRError)


def test_generic_obs_view_is_documented_from_the_observation_space():
    env = make_env(MC)
    spec = get_spec(env, "obs")
    doc = spec.doc()
    assert "| `obs` | np.ndarray (2,) float32; bounds per entry: [-1.2, 0.6], [-0.07, 0.07]" in doc
    assert "`info`" in doc and spec.family == "generic"
    with pytest.raises(ViewError, match=r"MountainCar-v0 \(generic family\) has no 'state' view; choose one of: obs, pixels"):
        get_spec(env, "state")
    dict_env = gym.make("MiniGrid-Empty-5x5-v0")  # a Dict space documents one key per entry (claimed by minigrid,
    from cleanrl_vlmcar.families.generic import obs_fields  # so build the generic fields directly)

    names = [f.name for f in obs_fields(dict_env)]
    assert names == ["direction", "image", "mission", "info"]


def test_generic_obs_view_needs_the_observation_and_keeps_numeric_info():
    env = make_env(MC)
    adapter = make_view(env, "obs")
    assert adapter.needs_obs
    obs, info = env.reset(seed=0)
    with pytest.raises(UnsupportedEnvError, match="needs the observation"):
        adapter.reset()
    view = adapter.reset(obs, {"x": np.float32(1.5), "flag": np.bool_(True), "_mask": 1, "text": "no",
                               "nan": float("nan"), "arr": np.zeros(3)})
    assert view["obs"].tolist() == obs.tolist() and view["obs"] is not obs  # a copy the env cannot change
    assert view["info"] == {"x": 1.5, "flag": True}
    assert numeric_info(None) == {}


def test_generic_pixels_view_renders_or_says_how_to():
    view = make_view(make_env(MC), "pixels")  # made with render_mode="rgb_array" by make_env
    view.env.reset(seed=0)
    rgb = view.reset()["rgb"]
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.std() > 0
    plain = make_view(gym.make(MC), "pixels")
    plain.env.reset(seed=0)
    with pytest.raises(UnsupportedEnvError, match="render_mode='rgb_array'"):
        plain.reset()


def test_generic_success_rule():
    assert generic_success(-1.0, True, {}) is True  # MountainCar: termination is the flag
    assert generic_success(1.0, False, {}) is False
    assert generic_success(1.0, True, {"is_success": False}) is False  # an env that says so wins


def test_a_registered_family_claims_its_envs_first():
    seen = []

    def task(env):
        seen.append(env)
        return "balance the pole", ""

    custom = Family(name="test-cartpole", claims=lambda u: type(u).__name__ == "CartPoleEnv",
                    views=families.get_family("generic").specs(gym.make("CartPole-v1")), task=task,
                    claims_id=lambda env_id: env_id.startswith("CartPole"))
    register(custom)
    try:
        env = gym.make("CartPole-v1")
        assert family_of(env) is custom and family_for_id("CartPole-v1") is custom
        from cleanrl_vlmcar.generate import task_text

        assert task_text(env) == ("balance the pole", "") and seen == [env]
        assert family_of(make_env(MC)).name == "generic"
    finally:
        families._REGISTRY.pop("test-cartpole")
    assert family_of(gym.make("CartPole-v1")).name == "generic"


def test_generic_views_round_trip_through_the_trajectory_store(tmp_path):
    env = make_env(MC)

    class Pump:
        def reset(self, env, obs, seed=0):
            pass

        def act(self, env, obs):
            return energy_pumping(obs)

    traj = rollout(env, Pump(), 3, ["obs"], stop_on_success=False)
    assert traj.success and traj.views["obs"][0]["info"] == {}
    traj.env_id, traj.policy = MC, "pump"
    store = TrajectoryStore(tmp_path)
    store.save(traj, "obs")
    back = store.load(MC, "obs", "pump", 3)
    assert back.success and len(back.views["obs"]) == len(traj.views["obs"])
    np.testing.assert_array_equal(back.views["obs"][-1]["obs"], traj.views["obs"][-1]["obs"])
    assert back.views["obs"][-1]["info"] == {}


def test_shipped_mountaincar_demos_replay_to_the_flag():
    demos = load_demos(ROOT / "examples" / "mountaincar_demos.npz", MC, "obs")
    assert len(demos) == 40 and all(t.success for t in demos)
    assert all(min(v["obs"][0] for v in t.views["obs"]) <= -0.9 for t in demos)  # the swing the program expects


def test_hook_pays_mountaincar_subtasks_in_order_with_the_generic_success_rule():
    """Energy pumping in two envs through the queued hook (flushed every 32 steps, as a rollout): four bonuses
    each, in order, and the episodes end with the generic family's success (termination)."""
    program = mountaincar_program()
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(MC) for _ in range(2)])
    obs, infos = envs.reset(seed=[0, 1])
    hook = RewardHook(program, envs, view="obs")
    hook.reset(infos, obs)
    shaped, episodes = [], []
    for t in range(160):
        obs, reward, term, trunc, infos = envs.step(np.array([energy_pumping(o) for o in obs]))
        hook.submit(reward, term, trunc, infos, obs)
        if (t + 1) % 32 == 0:
            shaped.append(hook.flush())
            episodes += hook.flushed_episodes
            if len(episodes) >= 2:
                break
    hook.close()
    episodes = episodes[:2]
    shaped = np.concatenate(shaped)
    env_steps = [e.length for e in sorted(episodes, key=lambda e: e.env_index)]
    # shaped = -1 per step (the env's reward) + the bonuses; the reset step after an episode pays 0
    bonus_total = [float(shaped[:n, i].sum() + n) for i, n in enumerate(env_steps)]
    assert sorted(e.env_index for e in episodes) == [0, 1]
    assert all(e.success and e.task_completed and e.subtasks_completed == 4 for e in episodes)
    assert bonus_total == [4.0, 4.0]
    assert hook.task_without_success == 0.0


@pytest.mark.slow
def test_ppo_on_mountaincar_with_the_default_view_names_the_generic_views(tmp_path):
    from script_runs import run_script

    res = run_script(str(ROOT / "ppo_vlmcar.py"), ["--env-id", MC, "--total-timesteps", "512", "--num-envs", "2",
                                                   "--num-steps", "64"], cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "MountainCar-v0 (generic family) has no 'state' view; choose one of: obs, pixels" in res.stderr + res.stdout
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_ppo_trains_on_mountaincar_with_the_shipped_program(tmp_path):
    from script_runs import only_run, run_script, scalars

    res = run_script(str(ROOT / "ppo_vlmcar.py"), ["--env-id", MC, "--view", "obs", "--total-timesteps", "2048",
                                                   "--num-steps", "128"], cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "MountainCar-v0__obs__" in res.stdout  # the program in use is printed
    tags = scalars(only_run(tmp_path))
    assert "vlmcar/subtask_1_rate" in tags and "charts/episodic_return" in tags


def test_view_doc_goes_into_the_prompt_and_bad_files_are_clear_errors(tmp_path, capsys):
    from cleanrl_vlmcar.__main__ import main

    doc = tmp_path / "doc.md"
    doc.write_text("obs[0] is the position; the flag is at 0.5")
    manual = tmp_path / "manual"
    base = ["synthesize", "--env-id", MC, "--view", "obs", "--vlm", "manual", "--manual-dir", str(manual),
            "--expert-source", "demos", "--demos", str(ROOT / "examples" / "mountaincar_demos.npz"), "--n", "3",
            "--reward-cache", str(tmp_path / "rc"), "--cache-dir", str(tmp_path / "traj")]
    assert main(base + ["--view-doc", str(doc)]) == 3
    prompt = next(manual.glob("*/prompt.md")).read_text()
    assert "the user's description" in prompt and "the flag is at 0.5" in prompt
    assert main(base + ["--view-doc", str(tmp_path / "missing.md")]) == 2
    assert "cannot read --view-doc" in capsys.readouterr().err


@pytest.mark.slow
def test_reward_program_as_a_cache_entry_is_verified_with_its_recorded_demos(tmp_path):
    """--reward-program ENTRY.json: a generic-family env has no scripted expert, so the entry is verified again with
    the demonstrations its verification settings record; a .py program says to pass an entry instead."""
    from types import SimpleNamespace

    from cleanrl_vlmcar.rewards import program_for_run

    entry = next(p for p in (ROOT / "reward_cache").glob(f"{MC}__obs__*.json") if p.stem.count("__") == 2)
    program = program_for_run(SimpleNamespace(env_id=MC, view="obs", reward_program=str(entry)))
    assert program.num_subtasks >= 4 and str(program.cache_path) == str(entry)
    source = tmp_path / "p.py"
    source.write_text(mountaincar_program().source)
    with pytest.raises(UnsupportedEnvError, match="pass a verified cache entry instead"):
        program_for_run(SimpleNamespace(env_id=MC, view="obs", reward_program=str(source)))
    with pytest.raises(VLMCaRError, match="not MiniGrid-KeyCorridorS3R1-v0"):
        program_for_run(SimpleNamespace(env_id="MiniGrid-KeyCorridorS3R1-v0", view="obs", reward_program=str(entry)))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(NoProgramError, match="corrupt"):
        program_for_run(SimpleNamespace(env_id=MC, view="obs", reward_program=str(broken)))


def test_training_without_an_expert_says_how_to_synthesize_with_demonstrations(tmp_path, monkeypatch):
    """A training script asked to synthesize for an env without a scripted expert cannot take demonstrations:
    the error names the record-demos and synthesize commands, not flags the script lacks."""
    from types import SimpleNamespace

    from cleanrl_vlmcar.errors import UnsupportedEnvError
    from cleanrl_vlmcar.rewards import program_for_run

    empty = tmp_path / "cache"
    empty.mkdir()
    monkeypatch.setenv("VLMCAR_REWARD_CACHE", str(empty))
    monkeypatch.setenv("VLMCAR_CACHE", str(tmp_path / "store"))
    args = SimpleNamespace(env_id="CartPole-v1", view="obs", vlm="manual", vlm_model="", vlm_base_url=None)
    with pytest.raises(UnsupportedEnvError) as e:
        program_for_run(args)
    text = str(e.value)
    assert "record-demos --env-id CartPole-v1" in text and "synthesize --env-id CartPole-v1 --view obs" in text
    assert "--reward sparse" in text and "pass --expert-source" not in text


def test_has_scripted_expert_imports_the_family_first():
    """Panda ids register only when panda_gym is imported: asked in a fresh interpreter, PandaReach still has an
    expert, so the no-program message adds no demonstrations note for it (and does for CartPole)."""
    import subprocess
    import sys

    code = ("from cleanrl_vlmcar.families import has_scripted_expert\n"
            "from cleanrl_vlmcar.generate import no_program_message\n"
            "print(has_scripted_expert('PandaReach-v3'), has_scripted_expert('CartPole-v1'),\n"
            "      'no scripted expert' in no_program_message('PandaReach-v3', 'state'),\n"
            "      'no scripted expert' in no_program_message('CartPole-v1', 'obs'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["True", "False", "False", "True"], out.stderr[-2000:]
