"""Hindsight experience replay (`sac_vlmcar.py --her`, cleanrl_vlmcar/her.py): a relabelled transition's reward is
exactly what the reward hook pays on an episode whose goal really was the relabelled one (env reward and program
bonuses), the future strategy, the refusals, and a tiny run through the script."""

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from script_runs import only_run, run_script, scalars

from cleanrl_vlmcar.errors import UsageError
from cleanrl_vlmcar.her import HindsightRelabeller, bonuses_by_step, check_her, future_goals
from cleanrl_vlmcar.integrate import RewardHook
from cleanrl_vlmcar.program import load_program
from cleanrl_vlmcar.views import get_spec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "sac_vlmcar.py")

# a PandaReach state-view program; sub-task 1 reads `start`, so the reset view's goal must be relabelled too
REACH_PROGRAM = '''\
import numpy as np

SUBTASKS = ["gripper 0.02 closer to the goal than at the start", "gripper within 0.1 of the goal",
            "gripper within 0.05 of the goal"]


def _d(obs):
    return float(np.linalg.norm(obs["ee_pos"] - obs["goal_pos"]))


def subtask_1(obs, start):
    return _d(obs) < _d(start) - 0.02


def subtask_2(obs, start):
    return _d(obs) < 0.1


def subtask_3(obs, start):
    return _d(obs) < DISTANCE_THRESHOLD
'''


@pytest.fixture(scope="module")
def sac():
    """sac_vlmcar.py as a module (its make_env and GoalObservation: the env stack the relabeller sees in training)."""
    spec = importlib.util.spec_from_file_location("sac_vlmcar_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reach_envs(sac, seed, num_envs=1):
    return gym.vector.SyncVectorEnv([sac.make_env("PandaReach-v3", seed + i, i, False, "test")
                                     for i in range(num_envs)])


@pytest.mark.slow
def test_relabelled_reward_equals_the_hook_on_a_real_episode_with_that_goal(sac):
    seed, length = 5, 50
    rng = np.random.default_rng(0)
    turn_1, turn_2 = rng.normal(size=3), rng.normal(size=3)  # two legs, so the gripper passes near earlier goals
    actions = np.array([np.clip(0.5 * (turn_1 if s < 25 else turn_2) + 0.3 * rng.normal(size=3), -1, 1)
                        for s in range(length)], dtype=np.float32)

    # episode A: the env's own goal, recorded by the relabeller beside a hook running the program
    envs = reach_envs(sac, seed)
    program = load_program(REACH_PROGRAM, get_spec(envs.envs[0], "state").constants())
    obs, infos = envs.reset(seed=seed)
    hook = RewardHook(program, envs, view="state", bonus=1.0, shaping="bonus")
    hook.reset(infos, obs)
    her = HindsightRelabeller(envs, hook, k=4, bonus=1.0, seed=0)
    autoreset = np.zeros(1, dtype=bool)
    for s in range(length):
        next_obs, reward, terminated, truncated, infos = envs.step(actions[s:s + 1])
        hook.step(reward, terminated, truncated, infos, obs=next_obs)
        copies = her.step(obs, next_obs, actions[s:s + 1], terminated, truncated, infos, autoreset)
        obs = next_obs
        if terminated[0] or truncated[0]:
            break
    episode = her.episodes[0]
    assert len(episode) == length and len(copies[0]) == 4 * length  # A did not reach its own goal: truncated
    # relabel every transition up to f with the goal achieved by transition f
    relabelled = {}
    for f in (20, length - 1):
        t = np.arange(f + 1)
        relabelled[f] = (episode.achieved[f].astype(np.float64), her.relabel(episode, t, np.full_like(t, f)))
    assert 2 < her.walks <= length + 2  # one program walk per distinct goal, not per copy
    her.close()
    hook.close()
    envs.close()

    # episode B: the same seed and actions, with the relabelled goal as the env's own goal
    paid_bonus = 0
    for f, (goal, (r_obs, r_next_obs, r_actions, r_rewards, r_dones)) in relabelled.items():
        envs = reach_envs(sac, seed)
        _, infos = envs.reset(seed=seed)
        env = envs.envs[0]
        env.unwrapped.task.goal = goal.copy()
        raw = env.unwrapped._get_obs()
        assert isinstance(env.env, sac.GoalObservation)
        obs = env.env.observation(raw)[None]  # the policy observation with the new goal
        assert np.array_equal(raw["desired_goal"], goal.astype(np.float32))  # the env really uses the new goal
        assert np.array_equal(obs[0], r_obs[0])
        hook = RewardHook(program, envs, view="state", bonus=1.0, shaping="bonus")
        hook.reset(infos, obs)
        assert np.array_equal(hook.adapters[0].reset()["goal_pos"], goal)
        for s in range(f + 1):
            next_obs, reward, terminated, truncated, infos = envs.step(actions[s:s + 1])
            shaped = hook.step(reward, terminated, truncated, infos, obs=next_obs)
            assert np.array_equal(r_actions[s], actions[s])
            assert np.array_equal(r_next_obs[s], next_obs[0]), s
            assert r_rewards[s] == shaped[0], (f, s, r_rewards[s], shaped[0], hook.env_reward[0], hook.bonus[0])
            assert r_dones[s] == float(terminated[0]), (f, s)
            paid_bonus += hook.bonus[0]
            if terminated[0]:
                break
        # B reached its goal (A never did: every A reward was -1), at the latest where A achieved it
        assert terminated[0] and infos["is_success"][0] and s <= f
        assert hook.next_subtask[0] == program.num_subtasks  # every sub-task paid its bonus on the way
        hook.close()
        envs.close()
    assert paid_bonus == 2 * program.num_subtasks


@pytest.mark.slow
def test_future_strategy_k_copies_and_later_goals_of_the_same_episode(sac):
    k, seed = 3, 11
    envs = reach_envs(sac, seed, num_envs=2)
    envs.action_space.seed(seed)
    obs, infos = envs.reset(seed=seed)
    her = HindsightRelabeller(envs, None, k=k, seed=0)  # no program: the env reward only
    unwrapped = envs.envs[0].unwrapped
    current = [{"obs": [], "actions": [], "achieved": []} for _ in range(2)]
    autoreset = np.zeros(2, dtype=bool)
    checked_episodes = 0
    for _ in range(110):
        actions = envs.action_space.sample()
        next_obs, reward, terminated, truncated, infos = envs.step(actions)
        c_obs, c_next_obs, c_actions, c_rewards, c_dones = her.step(obs, next_obs, actions, terminated, truncated,
                                                                    infos, autoreset)
        for i in range(2):
            if not autoreset[i]:
                current[i]["obs"].append(obs[i])
                current[i]["actions"].append(actions[i])
                current[i]["achieved"].append(infos["achieved_goal"][i])
        ended = [i for i in range(2) if not autoreset[i] and (terminated[i] or truncated[i])]
        assert len(c_actions) == k * sum(len(current[i]["actions"]) for i in ended)
        copies_of = {}
        for j in range(len(c_actions)):
            # the transition this copy was made from (random continuous actions identify it)
            (i, t), = [(i, t) for i in ended for t, a in enumerate(current[i]["actions"])
                       if np.array_equal(a, c_actions[j])]
            copies_of[i, t] = copies_of.get((i, t), 0) + 1
            goal = c_obs[j, -3:]
            assert np.array_equal(c_next_obs[j, -3:], goal)
            assert np.array_equal(c_obs[j, :-3], current[i]["obs"][t][:-3])
            later = current[i]["achieved"][t:]  # achieved after transitions t.. (the states t+1..) of this episode
            assert any(np.array_equal(goal, g) for g in later), (i, t)
            achieved = current[i]["achieved"][t]
            assert c_rewards[j] == unwrapped.compute_reward(achieved, goal.astype(np.float64), {})
            assert c_dones[j] == float(unwrapped.task.is_success(achieved, goal.astype(np.float64)))
        assert all(n == k for n in copies_of.values())
        assert len(copies_of) == sum(len(current[i]["actions"]) for i in ended)
        for i in ended:
            checked_episodes += 1
            current[i] = {"obs": [], "actions": [], "achieved": []}
        autoreset = np.logical_or(terminated, truncated)
        obs = next_obs
    assert checked_episodes >= 4
    envs.close()


def test_future_goals_and_bonus_arithmetic():
    rng = np.random.default_rng(1)
    for length in (1, 2, 7, 50):
        t, f = future_goals(length, 4, rng)
        assert len(t) == len(f) == 4 * length
        assert np.array_equal(np.bincount(t, minlength=length), np.full(length, 4))
        assert (f >= t).all() and (f < length).all()
    t, f = future_goals(5, 2000, rng)
    assert set(f[t == 1].tolist()) == {1, 2, 3, 4}  # every later goal can be drawn
    # two sub-tasks completing on the same view pay two bonuses there, as the hook does
    assert bonuses_by_step([2, 2, None], 4, 0.5).tolist() == [0.0, 0.0, 1.0, 0.0]
    assert bonuses_by_step([1, 3], 4, 1.0).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_refusals(sac):
    import minigrid  # noqa: F401 - registers MiniGrid

    grid = gym.vector.SyncVectorEnv([lambda: gym.make("MiniGrid-Empty-5x5-v0")])
    with pytest.raises(UsageError, match="goal-conditioned"):
        check_her(grid, "sparse")
    grid.close()
    envs = reach_envs(sac, 0)
    check_her(envs, "sparse")
    check_her(envs, "vlmcar", "state", "bonus")
    check_her(envs, "sparse", "pixels")  # the view is the program's: unused without one
    with pytest.raises(UsageError, match="state view"):
        check_her(envs, "vlmcar", "pixels")
    with pytest.raises(UsageError, match="--shaping potential"):
        check_her(envs, "vlmcar", "state", "potential")
    with pytest.raises(UsageError, match="CLIP"):
        check_her(envs, "clip")
    with pytest.raises(UsageError, match="her-k"):
        check_her(envs, "sparse", k=0)
    with pytest.raises(UsageError, match="her-k"):
        HindsightRelabeller(envs, None, k=0)
    envs.close()


@pytest.mark.slow
@pytest.mark.parametrize("flags,says", [
    # MiniGrid is refused by check_her above; sac_vlmcar.py does not register it (and has no discrete actions)
    (["--env-id", "Pendulum-v1"], "goal-conditioned"),
    (["--env-id", "PandaReach-v3", "--view", "pixels"], "state view"),
])
def test_script_refuses_before_training(tmp_path, flags, says):
    r = run_script(SCRIPT, [*flags, "--her", "--total-timesteps", "300"], tmp_path)
    assert r.returncode != 0
    assert says in r.stderr and "--her" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture()
def reach_cache(tmp_path):
    """A reward cache in a temp folder with REACH_PROGRAM as the PandaReach-v3 state program."""
    from cleanrl_vlmcar import cache

    folder = tmp_path / "reward_cache"
    entry = {"env_id": "PandaReach-v3", "view": "state", "backend": "test", "model": "", "rounds": [],
             "program": REACH_PROGRAM, "passed": True, "report": {}, "created": cache.now()}
    cache.write_entry(entry, cache.entry_path("PandaReach-v3", "state", "test0000", folder))
    return folder


@pytest.mark.slow
def test_tiny_her_run_through_the_script(tmp_path, reach_cache):
    r = run_script(SCRIPT, ["--env-id", "PandaReach-v3", "--her", "--total-timesteps", "600", "--learning-starts",
                            "200"], tmp_path, env={"VLMCAR_REWARD_CACHE": str(reach_cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--her:" in r.stdout and " relabelled transitions" in r.stdout
    run_dir = only_run(tmp_path)
    assert "__sac_vlmcar-vlmcar__1__" in run_dir.name
    tags = scalars(run_dir)
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/qf1_values",
                "losses/qf_loss", "losses/actor_loss", "losses/alpha", "losses/alpha_loss", "charts/shaped_return",
                "charts/success_rate", "vlmcar/subtask_1_rate", "vlmcar/check_failures"]:
        assert tag in tags, (tag, sorted(tags))
    assert tags["vlmcar/check_failures"][-1] == 0
