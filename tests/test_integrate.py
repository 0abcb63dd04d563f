"""The reward hook: bonuses at the right steps, autoreset, Sync/Async vector envs, shaping, the wrapper, views."""

from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401 - registers the MiniGrid envs
import numpy as np
import pytest
from minigrid.wrappers import FullyObsWrapper

from cleanrl_vlmcar.confine import ProgramWorker
from cleanrl_vlmcar.errors import UsageError, WorkerError
from cleanrl_vlmcar.integrate import RewardHook, ViewInfoWrapper, VLMCaRRewardWrapper, advance, completion_steps
from cleanrl_vlmcar.program import load_program
from cleanrl_vlmcar.views import ViewError, all_specs, get_spec, make_view

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "MiniGrid-KeyCorridorS3R1-v0"
# Seed 0 of KeyCorridorS3R1: agent at (3,1) facing down; yellow key (1,1) behind a closed blue door (2,1);
# locked yellow door (4,1); purple ball (5,1). 0 left, 1 right, 2 forward, 3 pickup, 4 drop, 5 toggle.
SCRIPT = [1, 5, 2, 3, 0, 0, 2, 5, 0, 0, 2, 4, 0, 0, 2, 2, 3]
#          1  2  3  4* 5  6  7  8* 9 10 11 12 13 14 15 16 17*   (* = sub-task completed on that step)
EXPECTED_STEPS = {4: 0, 8: 1, 17: 2}


def keycorridor_program():
    env = gym.make(ENV_ID)
    constants = get_spec(env, "state").constants()
    return load_program((ROOT / "examples" / "keycorridor_state.py").read_text(), constants, "keycorridor_state.py")


def make_env():
    return gym.make(ENV_ID)


def test_scripted_episode_gets_bonuses_at_expected_steps():
    program = keycorridor_program()
    envs = gym.vector.SyncVectorEnv([make_env, make_env])
    _, infos = envs.reset(seed=[0, 0])
    hook = RewardHook(program, envs, bonus=0.5)
    hook.reset(infos)
    for t, a in enumerate(SCRIPT, start=1):
        _, reward, term, trunc, infos = envs.step(np.array([a, a]))
        shaped = hook.step(reward, term, trunc, infos)
        if t in EXPECTED_STEPS:
            k = EXPECTED_STEPS[t]
            assert hook.completed[:, k].all() and hook.completed.sum() == 2, t
            np.testing.assert_allclose(hook.bonus, [0.5, 0.5])
        else:
            assert not hook.completed.any(), t
            np.testing.assert_allclose(hook.bonus, 0.0)
        np.testing.assert_allclose(shaped, reward + hook.bonus, rtol=1e-6)
        np.testing.assert_allclose(hook.env_reward, reward)
        # what ppo_vlmcar.py --subtask-obs shows the policy: the sub-tasks completed so far in this episode
        assert hook.next_subtask.tolist() == [sum(s <= t for s in EXPECTED_STEPS)] * 2, t
    assert term.all() and (reward > 0).all()
    assert [(e.env_index, e.subtasks_completed, e.task_completed, e.length) for e in hook.episodes] == \
        [(0, 3, True, 17), (1, 3, True, 17)]
    assert hook.episodes[0].shaped_return == pytest.approx(reward[0] + 1.5)
    assert hook.episodes[0].env_return == pytest.approx(reward[0])
    # next-step autoreset: the reset step pays nothing and progress starts over
    _, reward, term, trunc, infos = envs.step(np.array([3, 3]))
    shaped = hook.step(reward, term, trunc, infos)
    np.testing.assert_allclose(shaped, 0.0)
    assert not hook.completed.any() and (hook.next_subtask == 0).all()
    assert hook.check_failures == 0


def test_bonus_paid_once_per_subtask_per_episode():
    # dropping and picking the key up again must not pay sub-task 1 twice
    program = keycorridor_program()
    envs = gym.vector.SyncVectorEnv([make_env])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs)
    hook.reset(infos)
    total = 0.0
    for a in [1, 5, 2, 3, 4, 3, 4, 3]:
        _, r, te, tr, infos = envs.step(np.array([a]))
        hook.step(r, te, tr, infos)
        total += hook.bonus.sum()
    assert total == 1.0


def test_async_vector_env_matches_sync():
    program = keycorridor_program()

    def wrapped():
        return ViewInfoWrapper(gym.make(ENV_ID), "state")

    results = []
    # MiniGrid's Text mission space cannot live in shared memory
    for make_vec in (gym.vector.SyncVectorEnv, lambda fns: gym.vector.AsyncVectorEnv(fns, shared_memory=False)):
        envs = make_vec([wrapped, wrapped])
        _, infos = envs.reset(seed=[0, 0])
        hook = RewardHook(program, envs)
        hook.reset(infos)
        bonuses = []
        for a in SCRIPT + [0, 1, 2]:
            _, r, te, tr, infos = envs.step(np.array([a, a]))
            bonuses.append(hook.step(r, te, tr, infos) - r)
        envs.close()
        results.append(np.array(bonuses))
    np.testing.assert_allclose(results[0], results[1])
    assert results[0].sum() == pytest.approx(6.0)


def test_async_without_view_wrapper_is_a_clear_error():
    program = keycorridor_program()
    envs = gym.vector.AsyncVectorEnv([make_env], shared_memory=False)
    try:
        _, infos = envs.reset(seed=0)
        hook = RewardHook(program, envs)
        with pytest.raises(ValueError, match="ViewInfoWrapper"):
            hook.reset(infos)
    finally:
        envs.close()


def test_potential_shaping_values():
    program = keycorridor_program()
    gamma, bonus = 0.9, 2.0
    envs = gym.vector.SyncVectorEnv([make_env])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs, bonus=bonus, shaping="potential", gamma=gamma)
    hook.reset(infos)
    completed, got, expected = 0, [], []
    for t, a in enumerate(SCRIPT, start=1):
        _, r, te, tr, infos = envs.step(np.array([a]))
        hook.step(r, te, tr, infos)
        before = completed
        completed += t in EXPECTED_STEPS
        phi_next = 0.0 if te[0] else bonus * completed
        expected.append(gamma * phi_next - bonus * before)
        got.append(hook.bonus[0])
    np.testing.assert_allclose(got, expected)
    # potential-based shaping telescopes: the undiscounted sum is not the bonus sum
    assert sum(got) < 3 * bonus


def test_progress_potential_uses_progress_functions():
    source = (
        "SUBTASKS = ['carry something']\n"
        "def subtask_1(obs, start):\n    return obs['carrying'] is not None\n"
        "def progress_1(obs, start):\n    return 1.0 / (1 + abs(obs['agent_pos'][0] - 1))\n"
    )
    program = load_program(source)
    envs = gym.vector.SyncVectorEnv([make_env])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs, shaping="potential", gamma=1.0, use_progress=True)
    hook.reset(infos)
    _, r, te, tr, infos = envs.step(np.array([1]))  # turn: position unchanged, no progress change
    hook.step(r, te, tr, infos)
    assert hook.bonus[0] == pytest.approx(0.0)
    for a in [5, 2]:  # open the door, step left to x=2: progress 1/3 -> 1/2
        _, r, te, tr, infos = envs.step(np.array([a]))
        hook.step(r, te, tr, infos)
    assert hook.bonus[0] == pytest.approx(0.5 - 1 / 3)


def test_raising_check_counts_and_never_crashes(caplog):
    program = load_program("SUBTASKS = ['a']\ndef subtask_1(obs, start):\n    return obs['nope']\n")
    envs = gym.vector.SyncVectorEnv([make_env, make_env])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs)
    hook.reset(infos)
    for _ in range(5):
        _, r, te, tr, infos = envs.step(np.array([0, 0]))
        shaped = hook.step(r, te, tr, infos)
        np.testing.assert_allclose(shaped, r)
    assert hook.check_failures == 10
    assert "KeyError" in caplog.text


@pytest.mark.parametrize("kwargs,match", [
    ({"shaping": "magic"}, "unknown shaping"),
    ({"use_progress": True}, "--shaping potential"),
    ({"use_progress": True, "shaping": "potential"}, "no progress_k"),
])
def test_bad_hook_configuration(kwargs, match):
    envs = gym.vector.SyncVectorEnv([make_env])
    with pytest.raises(ValueError, match=match):
        RewardHook(keycorridor_program(), envs, **kwargs)


def test_wrapper_matches_hook():
    program = keycorridor_program()
    env = VLMCaRRewardWrapper(gym.make(ENV_ID), program, bonus=0.25)
    env.reset(seed=0)
    bonuses = []
    for a in SCRIPT:
        _, r, te, tr, info = env.step(a)
        assert r == pytest.approx(info["vlmcar"]["env_reward"] + info["vlmcar"]["bonus"])
        bonuses.append(info["vlmcar"]["bonus"])
    assert [t for t, b in enumerate(bonuses, 1) if b] == sorted(EXPECTED_STEPS)
    assert info["vlmcar"]["task_completed"] and info["vlmcar"]["newly_completed"] == [3]
    env.reset(seed=1)
    assert env.progress.next_subtask == 0


def test_unsupported_views_are_clear_errors():
    """Any environment has the generic family's views; a view its family lacks names the ones it has."""
    with pytest.raises(ViewError, match=r"CartPole-v1 \(generic family\) has no 'state' view; choose one of: obs, "
                                        "pixels"):
        make_view(gym.make("CartPole-v1"), "state")
    with pytest.raises(ViewError, match="no 'depth' view"):
        make_view(gym.make(ENV_ID), "depth")
    with pytest.raises(ViewError, match=r"\(generic family\) has no 'state' view"):
        VLMCaRRewardWrapper(gym.make("CartPole-v1"), keycorridor_program())


@pytest.mark.parametrize("env_id", ["MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-DoorKey-5x5-v0",
                                    "MiniGrid-UnlockPickup-v0", "MiniGrid-BlockedUnlockPickup-v0",
                                    "MiniGrid-Dynamic-Obstacles-5x5-v0"])
def test_incremental_state_view_equals_fully_obs_wrapper(env_id):
    env = FullyObsWrapper(gym.make(env_id))
    view = make_view(env, "state")
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    v = view.reset()
    for t in range(1500):
        assert (v["grid"] == obs["image"]).all(), t
        assert v["agent_pos"] == tuple(env.unwrapped.agent_pos) and v["agent_dir"] == env.unwrapped.agent_dir
        obs, _, te, tr, _ = env.step(int(rng.integers(6)))
        v = view.step()
        if te or tr:
            obs, _ = env.reset(seed=t)
            v = view.reset()


@pytest.mark.parametrize("env_id", ["MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-DoorKey-5x5-v0",
                                    "MiniGrid-BlockedUnlockPickup-v0", "MiniGrid-Dynamic-Obstacles-5x5-v0"])
def test_incremental_pixels_view_equals_the_full_frame(env_id):
    """The pixels view draws only the cells a step can change; every frame equals minigrid's own full frame,
    through pick-ups, drops, doors, boxes, episode ends and the non-incremental Dynamic-Obstacles."""
    from cleanrl_vlmcar.views.minigrid import TILE_SIZE

    env = gym.make(env_id)
    view = make_view(env, "pixels")
    assert view.incremental == ("Dynamic" not in env_id)
    rng = np.random.default_rng(1)
    env.reset(seed=0)
    v = view.reset()
    frames = []
    for t in range(600):
        full = env.unwrapped.get_frame(highlight=False, tile_size=TILE_SIZE)
        assert np.array_equal(v["rgb"], full), t
        frames.append(v["rgb"])
        _, _, te, tr, _ = env.step(int(rng.integers(6)))
        v = view.step()
        if te or tr:
            env.reset(seed=t)
            v = view.reset()
    assert len({f.tobytes() for f in frames}) > 20  # the agent moved, turned and changed the grid
    assert frames[0] is not frames[1] and not np.shares_memory(frames[0], frames[1])


def test_views_are_independent_copies():
    env = gym.make(ENV_ID)
    view = make_view(env, "state")
    env.reset(seed=0)
    start = view.reset()
    grid0 = start["grid"].copy()
    for a in [1, 5, 2, 3]:
        env.step(a)
        v = view.step()
    assert (start["grid"] == grid0).all()
    assert v["carrying"] == (5, 4) and start["carrying"] is None  # yellow key


def test_pixels_view_shape_and_doc():
    env = gym.make(ENV_ID)
    env.reset(seed=0)
    v = make_view(env, "pixels").reset()
    assert v["rgb"].shape == (3 * 16, 7 * 16, 3) and v["rgb"].dtype == np.uint8
    assert v["mission"] == "pick up the purple ball"
    docs = {(s.family, s.view): s.doc() for s in all_specs()}
    assert set(docs) >= {("minigrid", "state"), ("minigrid", "pixels"), ("panda", "state"), ("panda", "pixels")}
    assert "`grid`" in docs[("minigrid", "state")] and "OBJECT_TO_IDX" in docs[("minigrid", "state")]


@pytest.mark.slow
def test_panda_state_view_matches_observation():
    import panda_gym  # noqa: F401
    env = gym.make("PandaPush-v3")
    obs, _ = env.reset(seed=0)
    v = make_view(env, "state").reset()
    np.testing.assert_allclose(v["ee_pos"], obs["observation"][:3], atol=1e-6)
    np.testing.assert_allclose(v["object_pos"], obs["observation"][6:9], atol=1e-6)
    np.testing.assert_allclose(v["goal_pos"], obs["desired_goal"], atol=1e-6)
    assert "fingers_width" not in v  # Push blocks the gripper
    assert make_view(env, "pixels").reset()["rgb"].shape == (128, 128, 3)
    env.close()


def test_advance_chains_and_stops_in_order():
    truth = [True, True, False, True]
    assert advance(lambda k, o, s: truth[k], 0, 4, None, None) == 2
    assert advance(lambda k, o, s: truth[k], 3, 4, None, None) == 4
    assert advance(lambda k, o, s: True, 4, 4, None, None) == 4


def test_completion_steps_walks_an_episode_in_order():
    # views are the x reached after each step; sub-task k holds when x >= k + 1; the reset view is never checked
    views = [9, 1, 0, 3, 2]
    assert completion_steps(lambda k, o, s: o >= k + 1, 3, views) == [1, 3, 3]
    assert completion_steps(lambda k, o, s: o >= k + 1, 4, views) == [1, 3, 3, None]
    assert completion_steps(lambda k, o, s: False, 2, views) == [None, None]
    assert completion_steps(lambda k, o, s: True, 2, views[:1]) == [None, None]  # reset view only


def test_sparse_hook_matches_record_episode_statistics():
    # the vectorised `sparse` path keeps the same books as gymnasium's own episode statistics
    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))
                                     for _ in range(3)])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(None, envs)
    hook.reset(infos)
    ours, theirs = [], []
    rng = np.random.default_rng(0)
    for _ in range(600):
        _, r, te, tr, infos = envs.step(rng.integers(0, 2, size=3))
        shaped = hook.step(r, te, tr, infos)
        np.testing.assert_allclose(shaped, r)
        ours += [(e.env_index, e.env_return, e.length) for e in hook.episodes]
        if "episode" in infos:
            theirs += [(int(i), float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i]))
                       for i in np.nonzero(infos["_episode"])[0]]
    assert len(ours) > 20 and ours == theirs


@pytest.mark.slow
def test_panda_pixels_doc_is_measured_and_still_true():
    """The panda pixels view's documentation comes from measurements (colours, camera, pixels per metre); measuring
    again gives the committed numbers, and the doc the VLM reads carries them."""
    import json

    from cleanrl_vlmcar.views import panda_camera

    committed = json.loads(panda_camera.MEASURED.read_text())
    fresh = panda_camera.measure(seeds=2)
    assert fresh["camera"] == committed["camera"] and fresh["table_centre_px"] == committed["table_centre_px"]
    for axis in ("x", "y"):
        assert fresh["pixels_per_metre_at_table"][axis] == pytest.approx(committed["pixels_per_metre_at_table"][axis])
    for name in ("cube", "target", "table", "gripper"):
        assert np.abs(np.subtract(fresh["colours"][name], committed["colours"][name])).max() <= 30, name
    from cleanrl_vlmcar.trajectories import make_env as make
    doc = get_spec(make("PandaPush-v3"), "pixels").doc()
    assert "5 cm success radius is about" in doc and str(committed["colours"]["table"][0]) in doc


@pytest.mark.parametrize("form", ["columns", "items"])
def test_runner_answers_queued_steps_in_order_as_if_waited_for_one_by_one(form):
    """Steps submitted before earlier answers are read: the worker carries each env's next sub-task itself, so the
    answers equal those of waiting for every step. More steps than ProgramWorker.BATCH_STEPS, with views that go as
    columns and views that do not fit columns (env 1's view has another key)."""
    from cleanrl_vlmcar.integrate import ProgramRunner

    program = load_program("SUBTASKS = ['a', 'b']\ndef subtask_1(obs, start):\n    return obs['x'] > 0\n"
                           "def subtask_2(obs, start):\n    return obs['x'] > 1\n")
    xs = [(0, 1), (1, 2), (0, 0), (2, 1), (5, 0), (0, 3)] + [(0, 0), (1, 0), (0, 2)] * 2
    resets = {3: 1, 8: 1}  # env 1 begins a new episode with step 3's view and with step 8's
    assert len(xs) > ProgramWorker.BATCH_STEPS
    view1 = (lambda x: {"x": x}) if form == "columns" else (lambda x: {"x": x, "other": (1, 2)})
    answers = []
    for queued in (False, True):
        runner = ProgramRunner(program, 2)
        got = [list(runner.step([(0, -1, {"x": 0}), (1, -1, {"x": 0})])[0])]
        for t, (x0, x1) in enumerate(xs):
            items = [(0, None, {"x": x0}), (1, -1 if resets.get(t) == 1 else None, view1(x1))]
            if queued:
                runner.submit(items)
            else:
                got.append(list(runner.step(items)[0]))
        if queued:
            assert runner.in_flight == len(xs)
            got += [list(runner.collect()[0]) for _ in xs]
        assert runner.in_flight == 0 and runner.check_failures == 0
        with pytest.raises(ValueError, match="-1 .a new episode. or None"):  # the worker keeps k, not the caller
            runner.submit([(0, 1, {"x": 0})])
        runner.close()
        answers.append(got)
    assert answers[0] == answers[1]
    assert answers[0][:7] == [[0, 0], [0, 1], [1, 2], [1, 2], [2, 0], [2, 0], [2, 2]]
    assert answers[0][-4:] == [[2, 0], [2, 0], [2, 0], [2, 2]]  # a new episode at step 8, both sub-tasks at 11


def _rollout(hook, envs, actions, queued, rollout=16):
    """Shaped rewards per step and the episodes booked, with `step` or with `submit` + `flush` every `rollout`
    steps."""
    shaped, episodes = [], []
    for t, a in enumerate(actions):
        _, reward, term, trunc, infos = envs.step(a)
        if queued:
            assert hook.submit(reward, term, trunc, infos) is None
            if (t + 1) % rollout == 0 or t == len(actions) - 1:
                out = hook.flush()
                assert out.shape == ((t % rollout) + 1, envs.num_envs) and out.dtype == np.float32
                shaped += list(out)
                episodes += hook.flushed_episodes
        else:
            shaped.append(hook.step(reward, term, trunc, infos))
            episodes += hook.episodes
    return np.array(shaped), [(e.env_index, e.subtasks_completed, e.shaped_return, e.length, e.success)
                              for e in episodes]


@pytest.mark.parametrize("with_program", [True, False])
def test_queued_submit_pays_exactly_what_step_pays(with_program):
    """`submit` queues steps and `flush` returns their shaped rewards; over a random rollout with episodes ending
    and autoresets, rewards and episodes equal those of `step` (the PPO script relies on it)."""
    program = keycorridor_program() if with_program else None
    rng = np.random.default_rng(3)
    # the scripted solution for env 0, random actions elsewhere, so sub-tasks, success and timeouts all happen
    actions = rng.integers(0, 6, size=(260, 3))
    actions[:len(SCRIPT), 0] = SCRIPT
    results = []
    for queued in (False, True):
        envs = gym.vector.SyncVectorEnv([make_env, make_env,
                                         lambda: gym.make(ENV_ID, max_steps=20)])
        _, infos = envs.reset(seed=[0, 1, 2])
        hook = RewardHook(program, envs, bonus=0.5)
        hook.reset(infos)
        results.append(_rollout(hook, envs, actions, queued))
        hook.close()
        envs.close()
    (sync_r, sync_e), (queued_r, queued_e) = results
    assert sync_r.shape == queued_r.shape == (260, 3)
    np.testing.assert_array_equal(sync_r, queued_r)
    assert sync_e == queued_e and len(sync_e) >= 10
    if with_program:
        assert sync_r[:len(SCRIPT), 0].sum() > 1.4  # three bonuses of 0.5 plus the env's reward were paid


@pytest.mark.parametrize("with_program", [True, False])
def test_flush_lists_each_episode_once_when_one_ends_on_the_last_step(with_program):
    """An episode that ends on the last step before `flush` is in `flushed_episodes` once, with or without terms."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID, max_steps=4)])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(keycorridor_program() if with_program else None, envs)
    hook.reset(infos)
    for _ in range(4):  # four turns: the episode is truncated on the fourth step
        _, reward, term, trunc, infos = envs.step(np.array([0]))
        hook.submit(reward, term, trunc, infos)
    assert hook.flush().shape == (4, 1)
    assert [(e.env_index, e.length) for e in hook.flushed_episodes] == [(0, 4)]
    hook.close()
    envs.close()


def test_queued_hook_counts_a_hanging_step_and_goes_on():
    """A program that hangs on one view while later steps are queued behind it: at flush its answer misses the
    deadline, the worker restarts, the checks of every step it had not answered count as failures, and the next
    steps (sent to the new worker with the episode's progress and start) are paid again."""
    program = load_program("SUBTASKS = ['reach x = 2', 'reach x = 3 (hangs at x = 7)']\n"
                           "def subtask_1(obs, start):\n"
                           "    return obs['agent_pos'][0] == 2\n"
                           "def subtask_2(obs, start):\n"
                           "    if obs['agent_pos'][0] == 7:\n"
                           "        return sum(range(10 ** 12)) > 0\n"
                           "    return obs['agent_pos'][0] == 3 and start['agent_pos'][0] == 1\n")
    envs = gym.vector.SyncVectorEnv([make_env])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs, deadline_s=0.5)
    xs = iter([2, 7, 1, 1, 1, 3, 1, 1])  # the first sub-task on step 1, the hang on step 2, the second on step 6
    hook.adapters[0].reset = lambda: {"agent_pos": (1, 1)}
    hook.adapters[0].step = lambda: {"agent_pos": (next(xs), 1)}
    hook.reset(infos)
    paid = []
    for t in range(8):
        _, reward, term, trunc, infos = envs.step(np.array([0]))
        hook.submit(reward, term, trunc, infos)
        if t in (3, 7):
            paid += [float(r[0]) for r in hook.flush()]
    assert hook.worker_restarts == 1 and hook.check_failures == 3 and hook.disabled is None
    assert paid == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert hook.next_subtask[0] == 2
    hook.close()


def test_queued_hook_reads_a_raising_checks_traceback_without_a_restart():
    """A check that raises while later steps are queued counts as one failure per raising call, as with `step`:
    the traceback is read once no step is in flight (replies come in order), not in the middle of the queue,
    where it would read the next step's answer as the traceback and restart the worker."""
    program = load_program("SUBTASKS = ['never']\n"
                           "def subtask_1(obs, start):\n"
                           "    if obs['agent_dir'] == 2:\n"
                           "        raise ValueError('facing left')\n"
                           "    return False\n")
    actions = np.random.default_rng(0).integers(0, 3, size=(64, 3))
    counts = []
    for queued in (False, True):
        envs = gym.vector.SyncVectorEnv([make_env] * 3)
        _, infos = envs.reset(seed=[0, 1, 2])
        hook = RewardHook(program, envs)
        hook.reset(infos)
        _rollout(hook, envs, actions, queued, rollout=32)
        assert hook.worker_restarts == 0 and hook.disabled is None
        assert "ValueError: facing left" in hook.runner.first_error
        counts.append(hook.check_failures)
        hook.close()
        envs.close()
    assert counts[0] == counts[1] > 0
    worker = ProgramWorker(program)
    worker.send_step([(0, -1, {"agent_dir": 0}, None)], 1, False, 5.0)
    with pytest.raises(RuntimeError, match="in flight"):  # a request waited for would read the step's answer
        worker.call("subtask", 0, {"agent_dir": 0}, {"agent_dir": 0})
    assert worker.recv_step()[1] == [0]
    assert worker.call("subtask", 0, {"agent_dir": 2}, {"agent_dir": 0})[1].endswith("ValueError: facing left")
    worker.close()


def test_reset_drops_submitted_steps_and_misuse_is_an_error():
    program = keycorridor_program()
    envs = gym.vector.SyncVectorEnv([make_env])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs)
    hook.reset(infos)
    for a in SCRIPT[:2]:
        _, reward, term, trunc, infos = envs.step(np.array([a]))
        assert hook.submit(reward, term, trunc, infos) is None
    with pytest.raises(UsageError, match="flush"):
        hook.step(reward, term, trunc, infos)
    _, infos = envs.reset(seed=0)
    hook.reset(infos)  # the answers in flight are read and dropped: the next submit starts clean
    assert hook.flush() is None and hook.runner.in_flight == 0
    for a in SCRIPT[:4]:
        _, reward, term, trunc, infos = envs.step(np.array([a]))
        hook.submit(reward, term, trunc, infos)
    assert hook.flush()[:, 0].tolist() == [0.0, 0.0, 0.0, 1.0] and hook.next_subtask[0] == 1  # the key at step 4
    worker = hook.runner.worker
    with pytest.raises(RuntimeError, match="no step request in flight"):
        worker.recv_step()
    hook.close()


def test_worker_answers_queued_requests_in_order_and_rejects_answers_that_go_backwards():
    program = load_program("SUBTASKS = ['x']\ndef subtask_1(obs, start):\n    return obs['x'] > 0\n")
    worker = ProgramWorker(program)
    worker.send_step([(0, -1, {"x": 0}, None)], 1, False, 5.0)
    worker.send_step([(0, None, {"x": 1}, None)], 1, False, 5.0)
    worker.send_step([(0, None, {"x": 0}, None)], 1, False, 5.0)  # a sub-task never un-completes
    assert worker.pending == 3
    assert [worker.recv_step()[1] for _ in range(3)] == [[0], [1], [1]]
    worker.send_step([(0, -1, {"x": 0}, None)], 1, False, 5.0)  # a new episode: the worker answers 0 ...
    worker._queue[0] = (1, [(0, None)], 5.0)  # ... where the learner expects at least the last answer, 1
    with pytest.raises(WorkerError, match="out of range"):
        worker.recv_step()
    assert not worker.alive
    worker.close()


def test_an_answer_that_arrived_counts_even_when_read_after_its_deadline():
    """The learner may come back to a queued answer late (a slow rollout): what the worker already sent is used,
    not declared a timeout."""
    import time

    program = load_program("SUBTASKS = ['x']\ndef subtask_1(obs, start):\n    return obs['x'] > 0\n")
    worker = ProgramWorker(program)
    worker.send_step([(0, -1, {"x": 0}, None)], 1, False, 0.2)
    time.sleep(0.5)
    assert worker.recv_step()[1] == [0]
    worker.send_step([(0, 0, {"x": 1}, None)], 1, False, 0.2)
    time.sleep(0.5)
    assert worker.recv_step()[1] == [1]
    worker.close()


class _Constant:
    """A reward term that pays `value` on every step (the protocol: send, collect, and the optional rest)."""

    def __init__(self, value, replaces=False):
        from cleanrl_vlmcar.integrate import RewardTerm

        self.term = type("Constant", (RewardTerm,), {"replaces_env_reward": replaces,
                                                     "collect": lambda s, step: [value] * len(step.reward)})()


@pytest.mark.parametrize("replaces", [False, True])
def test_reward_terms_compose_with_the_program_term(replaces):
    """The hook adds every term to the env reward (or, with a term that replaces it, leaves the env reward out of
    the shaped reward but still books it); reset steps pay nothing; the program term's bonuses are unchanged."""
    program = keycorridor_program()
    envs = gym.vector.SyncVectorEnv([make_env])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs, bonus=0.5, terms=[_Constant(0.1, replaces).term])
    hook.reset(infos)
    for t, a in enumerate(SCRIPT, start=1):
        _, reward, term, trunc, infos = envs.step(np.array([a]))
        shaped = hook.step(reward, term, trunc, infos)
        program_bonus = 0.5 if t in EXPECTED_STEPS else 0.0
        assert hook.bonus[0] == pytest.approx(program_bonus + 0.1), t
        assert shaped[0] == pytest.approx((0.0 if replaces else reward[0]) + program_bonus + 0.1), t
    (episode,) = hook.episodes
    assert episode.task_completed and episode.subtasks_completed == 3 and episode.success
    assert episode.env_return == pytest.approx(reward[0])  # the env's own return is booked either way
    assert episode.shaped_return == pytest.approx((0.0 if replaces else reward[0]) + 1.5 + 0.1 * len(SCRIPT))
    _, reward, term, trunc, infos = envs.step(np.array([0]))  # the autoreset step pays nothing
    assert hook.step(reward, term, trunc, infos)[0] == 0.0
    hook.close()


def test_terms_without_a_program_and_the_sparse_hook_agree_on_the_books():
    envs = [gym.vector.SyncVectorEnv([make_env, make_env]) for _ in range(2)]
    hooks = [RewardHook(None, envs[0]), RewardHook(None, envs[1], terms=[_Constant(0.0).term])]
    actions = np.random.default_rng(0).integers(0, 6, size=(400, 2))
    records = []
    for e, h in zip(envs, hooks):
        _, infos = e.reset(seed=[4, 5])
        h.reset(infos)
        got = []
        for a in actions:
            _, reward, term, trunc, infos = e.step(a)
            h.step(reward, term, trunc, infos)
            got += [(r.env_index, r.env_return, r.length, r.success) for r in h.episodes]
        records.append(got)
    assert records[0] == records[1] and len(records[0]) >= 2


def test_step_views_sent_as_columns_answer_like_views_sent_one_by_one():
    """The worker gets a vector step's views as columns when they share keys, shapes and dtypes; the answers are the
    same as with one packed view per env, and each env's arrays are over their own bytes (`.base` of a view's
    array never leads to another env's view)."""
    from cleanrl_vlmcar.confine import ProgramWorker
    from cleanrl_vlmcar.program import pack_columns

    program = load_program("SUBTASKS = ['x is set', 'own bytes only']\n"
                           "def subtask_1(obs, start):\n    return obs['a'][0, 0] > 0\n"
                           "def subtask_2(obs, start):\n"
                           "    return len(obs['a'].base.base) == obs['a'].nbytes and obs['t'][1] == 'b'\n")
    rng = np.random.default_rng(0)
    views = [{"a": rng.integers(0, 2, size=(2, 3)).astype(np.int16), "t": (1, "b"), "m": "same"} for _ in range(5)]
    assert pack_columns(views) is not None
    assert pack_columns(views[:2] + [{"a": np.zeros((3, 3), np.int16), "t": (1, "b"), "m": "same"}]) is None
    assert pack_columns(views[:2] + [{"t": (1, "b"), "a": views[0]["a"], "m": "same"}]) is None  # key order differs
    with pytest.raises(TypeError, match="object arrays"):
        pack_columns([{"a": np.zeros(2, dtype=object)}, {"a": np.zeros(2, dtype=object)}])
    answers = []
    with ProgramWorker(program, memory_mb=256) as w:
        for columns in (True, False):
            assert w.step([(i, -1, v, None) for i, v in enumerate(views)], 5, False, 10.0)[1] == [0] * 5
            items = [(i, 0, v, None) for i, v in enumerate(views)]
            if not columns:  # a start view to register forces the one-by-one form
                items[0] = (0, 0, views[0], views[0])
            answers.append(w.step(items, 5, False, 10.0)[1])
    expected = [2 if v["a"][0, 0] > 0 else 0 for v in views]
    assert answers[0] == answers[1] == expected


def _short_keycorridor():
    return gym.make(ENV_ID, max_steps=40)  # short episodes: env 0 finishes several in a short rollout


FACE_LEFT_THEN_RIGHT = ("SUBTASKS = ['face left', 'then face right']\n"
                        "def subtask_1(obs, start):\n"
                        "    return obs['agent_dir'] == 2\n"
                        "def subtask_2(obs, start):\n"
                        "    return obs['agent_dir'] == 0\n")


@pytest.mark.parametrize("queued", [False, True])
@pytest.mark.parametrize("which", ["keycorridor", "turning"])
def test_purity_audit_agrees_with_a_pure_program(queued, which):
    """The purity audit replays finished episodes of env 0 in a fresh worker: a pure program always agrees, so it
    is audited and keeps paying, with `step` and with queued `submit`/`flush`. The turning program completes its
    sub-tasks in every episode, so the steps training booked are compared, not only empty lists."""
    program = keycorridor_program() if which == "keycorridor" else load_program(FACE_LEFT_THEN_RIGHT)
    envs = gym.vector.SyncVectorEnv([_short_keycorridor] * 2)
    _, infos = envs.reset(seed=[0, 1])
    hook = RewardHook(program, envs, audit_every_s=0.0)
    hook.reset(infos)
    actions = np.random.default_rng(0).integers(0, 6, size=(200, 2))
    _rollout(hook, envs, actions, queued, rollout=32)
    assert hook.runner.audits >= 2 and hook.runner.audit_errors == 0  # every other episode: one recording at a time
    assert hook.disabled is None
    hook.close()
    envs.close()


def test_purity_audit_switches_off_a_program_a_fresh_worker_disagrees_with():
    """What a fresh worker answers is what verification saw. When it disagrees with the training worker on the
    same episode (here: the audit's worker is handed a program that completes its sub-task on other views, as a
    program counting its calls or reading the clock would), the program is switched off and training goes on."""
    src = ("SUBTASKS = ['face left']\n"
           "def subtask_1(obs, start):\n"
           "    return obs['agent_dir'] == 2\n")
    other = src.replace("== 2", "== 0")
    envs = gym.vector.SyncVectorEnv([_short_keycorridor] * 2)
    _, infos = envs.reset(seed=[0, 1])
    hook = RewardHook(load_program(src), envs, audit_every_s=0.0)
    hook.reset(infos)
    hook.runner.program = load_program(other)  # what the audit's fresh worker will run
    actions = np.tile([[0, 0]], (120, 1))  # turning left: every direction, every episode
    shaped, _ = _rollout(hook, envs, actions, queued=True, rollout=32)
    assert hook.disabled is not None and "not a pure function of its view" in hook.disabled
    assert hook.runner.audits == 1
    # the bonus was paid before the audit and never after it
    paid = np.nonzero(shaped[:, 0] > 0)[0]
    assert len(paid) > 0 and paid.max() < 45
    hook.close()
    envs.close()


def test_purity_audit_is_off_when_asked_and_records_nothing():
    program = keycorridor_program()
    envs = gym.vector.SyncVectorEnv([_short_keycorridor])
    _, infos = envs.reset(seed=0)
    hook = RewardHook(program, envs, audit_every_s=None)
    hook.reset(infos)
    _rollout(hook, envs, np.zeros((90, 1), dtype=np.int64), queued=True)
    assert hook.runner.audits == 0 and hook.runner._recording is None
    hook.close()
    envs.close()
