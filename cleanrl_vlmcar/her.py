"""Hindsight experience replay (HER; Andrychowicz et al., 2017) for goal-conditioned environments, with the reward
program's sub-task bonuses recomputed for the new goal. Used by `sac_vlmcar.py --her`; see docs/her.md.

Goal-conditioned envs (panda-gym, gymnasium-robotics) return a Dict observation with `observation`,
`achieved_goal` and `desired_goal`, and compute their reward from the two goals (`env.unwrapped.compute_reward`).
`HindsightRelabeller` records each episode whole; when it ends, every transition gets k relabelled copies whose
desired goal is the achieved goal of a later step of the same episode ("future" strategy). A copy's reward is what
the reward hook would have paid had that goal been the episode's own:

* the environment's reward, `compute_reward(achieved goal after the step, new goal)`, and its termination
  (panda-gym ends an episode on success: `task.is_success`; gymnasium-robotics: `compute_terminated`);
* plus, with a reward program (`--reward vlmcar`, `--shaping bonus`), the program's bonuses on the relabelled
  views: `goal_pos` is replaced by the new goal in every view of the episode (the reset view, `start`, too) and the
  episode is walked again through the hook's in-order rule in a confined worker (`ProgramWorker.walk`, one call per
  new goal, covering the episode up to the step that achieved it). Programs are pure functions of the view, so
  these are exactly the bonuses the hook would have paid.

The policy observation is `sac_vlmcar.py`'s `GoalObservation`: `observation` then `desired_goal`, flattened; the
relabelled copies get the new goal in that last slice. The wrapper also passes the raw achieved goal in
`info["achieved_goal"]`, which is where the relabeller reads it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gymnasium as gym
import numpy as np

from .confine import ProgramWorker
from .errors import UsageError, WorkerError
from .program import pack
from .views import get_spec, make_view

log = logging.getLogger(__name__)

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")
#: the view field the relabelling replaces (panda-gym's `state` view)
GOAL_FIELD = "goal_pos"
#: the info key that carries the raw achieved goal (sac_vlmcar.py's GoalObservation puts it there)
ACHIEVED_GOAL_INFO = "achieved_goal"
WALK_TIMEOUT_S = 60.0


def _env_id(env: gym.Env) -> str:
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _terminated_fn(env: gym.Env):
    """Whether a relabelled goal ends the episode: gymnasium-robotics' `compute_terminated(ag, g, info)`, or
    panda-gym's `task.is_success(ag, g)` (a panda-gym episode ends when it succeeds); None when neither exists."""
    u = env.unwrapped
    if callable(getattr(u, "compute_terminated", None)):
        return lambda ag, g: np.asarray(u.compute_terminated(ag, g, {}), dtype=bool)
    task = getattr(u, "task", None)
    if callable(getattr(task, "is_success", None)):
        return lambda ag, g: np.asarray(task.is_success(ag, g), dtype=bool)
    return None


def check_her(envs: gym.vector.VectorEnv, reward: str = "vlmcar", view: str = "state", shaping: str = "bonus",
              k: int = 4) -> None:
    """Raise UsageError, saying what to change, unless hindsight relabelling can work for this run: a
    SyncVectorEnv of goal-conditioned envs whose policy observation is `observation` + `desired_goal`, the `sparse`
    or `vlmcar` reward, for `vlmcar` a view with a `goal_pos` field (the `state` view) and bonus shaping, and k >= 1
    relabelled copies per transition."""
    if k < 1:
        raise UsageError(f"--her-k must be at least 1, not {k}")
    if not isinstance(envs, gym.vector.SyncVectorEnv):
        raise UsageError("--her reads each sub-environment's goals and views: use a SyncVectorEnv")
    env = envs.envs[0]
    space = env.unwrapped.observation_space
    if not (isinstance(space, gym.spaces.Dict) and set(GOAL_KEYS) <= set(space.spaces)
            and callable(getattr(env.unwrapped, "compute_reward", None))):
        raise UsageError(f"--her relabels goals, so it needs a goal-conditioned environment (a Dict observation with "
                         f"{', '.join(GOAL_KEYS)} and env.unwrapped.compute_reward, as in panda-gym); "
                         f"{_env_id(env)} is not one: drop --her")
    if _terminated_fn(env) is None:
        raise UsageError(f"--her cannot tell when a relabelled goal ends an episode of {_env_id(env)} (no "
                         "compute_terminated, no task.is_success): drop --her")
    obs_dim = int(np.prod(space["observation"].shape)) + int(np.prod(space["desired_goal"].shape))
    if envs.single_observation_space.shape != (obs_dim,):
        raise UsageError("--her puts the new goal in the policy observation, which must be `observation` then "
                         "`desired_goal`, flattened (sac_vlmcar.py's GoalObservation)")
    if reward == "clip":
        raise UsageError("--her recomputes each relabelled transition's reward; the CLIP reward reads rendered frames, "
                         "which show the original goal: use --reward vlmcar or --reward sparse with --her")
    if reward != "vlmcar":
        return
    fields = {f.name for f in get_spec(env, view).fields}
    if view != "state" or GOAL_FIELD not in fields:
        raise UsageError(f"--her relabels the goal in the reward program's view, which only the state view can do "
                         f"(its {GOAL_FIELD} field), not --view {view}: use --view state, or --reward sparse")
    if shaping != "bonus":
        raise UsageError(f"--her recomputes the sub-task bonuses of --shaping bonus; --shaping {shaping} is not "
                         "supported with --her")


def future_goals(length: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The "future" strategy for an episode of `length` transitions: k pairs (t, f) per transition t, with f drawn
    uniformly from t..length-1. The new goal of copy (t, f) is the goal achieved by transition f (the state after
    step f + 1), so it always comes from a later state of the same episode."""
    t = np.repeat(np.arange(length), k)
    return t, rng.integers(t, length)


def bonuses_by_step(steps: list[int | None], length: int, bonus: float) -> np.ndarray:
    """The hook's bonus at each view of a walked episode (`steps`: the view at which each sub-task completed, None
    for never; `length` views): `bonus` x the sub-tasks completed there, as EpisodeProgress.step pays it."""
    count = [0] * length
    for s in steps:
        if s is not None:
            count[s] += 1
    return np.array([bonus * c for c in count], dtype=np.float64)


class Episode:
    """One episode of one env as the relabeller records it: transitions, the achieved goal after each step, and
    (with a program) the packed views, `views[0]` the reset view and `views[s]` the view after step s."""

    __slots__ = ("obs", "actions", "next_obs", "achieved", "views")

    def __init__(self):
        self.begin(None)

    def begin(self, view: Any) -> None:
        self.obs, self.actions, self.next_obs, self.achieved = [], [], [], []
        self.views = [] if view is None else [view]

    def __len__(self) -> int:
        return len(self.actions)



class HindsightRelabeller:
    """HER for a SyncVectorEnv of goal-conditioned envs, beside a reward hook (`make_reward_hook`).

    Create it right after the hook (the envs just reset), call `step(...)` after every env step with the arrays the
    training loop stores, and add what it returns to the replay buffer: the relabelled copies (obs, next_obs,
    actions, rewards, dones) of the episodes that ended on this step, `k` per transition. With a reward program in
    the hook, relabelled bonuses are computed in a confined worker of its own (`ProgramWorker.walk`); while the
    hook's program is switched off (`hook.disabled`) relabelled copies get no bonus, as the hook pays none.

    Counters: `relabelled` (copies made), `walks` and `walk_seconds` (program walks), `dropped_episodes` (episodes
    whose copies were dropped because the walk failed; the worker is then restarted).
    """

    def __init__(self, envs: gym.vector.SyncVectorEnv, hook: Any = None, k: int = 4, bonus: float = 1.0,
                 seed: int | None = None, require_confinement: bool = False, view: str = "state",
                 walk_timeout_s: float = WALK_TIMEOUT_S):
        program = getattr(hook, "program", None)
        check_her(envs, "vlmcar" if program is not None else "sparse", view, k=k)
        self.envs, self.hook, self.k, self.bonus = envs, hook, int(k), float(bonus)
        self.num_envs = envs.num_envs
        env = envs.envs[0]
        self.goal_dim = int(np.prod(env.unwrapped.observation_space["desired_goal"].shape))
        self.compute_reward = env.unwrapped.compute_reward
        self.terminated = _terminated_fn(env)
        self.rng = np.random.default_rng(seed)
        self.program, self.walk_timeout_s = program, float(walk_timeout_s)
        self.adapters = self.worker = None
        if program is not None:
            self.adapters = [make_view(e, view) for e in envs.envs]
            self.worker = ProgramWorker(program, require_confinement=require_confinement)
        self.episodes = [Episode() for _ in range(self.num_envs)]
        self.relabelled = self.walks = self.dropped_episodes = 0
        self.walk_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        """Every env starts a new episode (call right after `envs.reset()`; the constructor does)."""
        for i, ep in enumerate(self.episodes):
            ep.begin(pack(self.adapters[i].reset()) if self.adapters else None)

    def status(self) -> str:
        """One console line: the copies made and what the program walks cost."""
        line = f"--her: {self.relabelled} relabelled transitions (k={self.k})"
        if self.program is not None:
            line += f", {self.walks} program walks in {self.walk_seconds:.1f} s"
            if self.dropped_episodes:
                line += f", {self.dropped_episodes} episode(s) dropped after a failed walk"
        return line

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    def step(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, terminations: np.ndarray,
             truncations: np.ndarray, infos: dict, autoreset: np.ndarray) -> tuple[np.ndarray, ...]:
        """Record one vector step (`autoreset`: the envs whose step was gymnasium's next-step reset, whose
        transition is not stored) and return the relabelled copies of the episodes that ended on it (possibly
        none): obs, next_obs, actions, rewards, dones."""
        achieved = infos.get(ACHIEVED_GOAL_INFO) if infos else None
        if achieved is None:
            raise UsageError(f"--her reads the achieved goal from info[{ACHIEVED_GOAL_INFO!r}]: wrap the env with "
                             "sac_vlmcar.py's GoalObservation")
        out = []
        for i, ep in enumerate(self.episodes):
            if autoreset[i]:  # the first view of the next episode
                ep.begin(pack(self.adapters[i].reset()) if self.adapters else None)
                continue
            ep.obs.append(obs[i])
            ep.actions.append(actions[i])
            ep.next_obs.append(next_obs[i])
            ep.achieved.append(np.asarray(achieved[i], dtype=np.float32))
            if self.adapters:
                ep.views.append(pack(self.adapters[i].step()))
            if terminations[i] or truncations[i]:
                copies = self.relabel(ep, *future_goals(len(ep), self.k, self.rng))
                if copies is not None:
                    out.append(copies)
        if not out:
            obs_dim, act_dim = next_obs.shape[1], actions.shape[1]
            return (np.zeros((0, obs_dim), np.float32), np.zeros((0, obs_dim), np.float32),
                    np.zeros((0, act_dim), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return tuple(np.concatenate(parts) for parts in zip(*out))

    def relabel(self, ep: Episode, t: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """Copies of transitions `t` of episode `ep`, each with the goal achieved by transition `f` (f >= t): obs,
        next_obs, actions, rewards (env reward + program bonuses), dones (termination under the new goal). None
        when the program walk failed."""
        t, f = np.asarray(t), np.asarray(f)
        if np.any(f < t) or np.any(f >= len(ep)):
            raise ValueError("relabel: each new goal must come from the same or a later transition of the episode")
        achieved = np.stack(ep.achieved)  # (T, goal_dim) float32, as the env's compute_reward receives it
        new_goal = achieved[f]
        goal64 = new_goal.astype(np.float64)  # the env keeps its goal in float64 (panda-gym: task.goal)
        obs, next_obs = np.stack(ep.obs)[t], np.stack(ep.next_obs)[t]
        obs[:, -self.goal_dim:] = new_goal
        next_obs[:, -self.goal_dim:] = new_goal
        rewards = np.asarray(self.compute_reward(achieved[t], goal64, {}), dtype=np.float64).reshape(-1)
        dones = self.terminated(achieved[t], goal64).reshape(-1).astype(np.float32)
        if self.program is not None and not getattr(self.hook, "disabled", None):
            paid = self._bonuses(ep, np.unique(f))
            if paid is None:
                return None
            rewards = rewards + np.array([paid[fi][ti + 1] for ti, fi in zip(t.tolist(), f.tolist())])
        self.relabelled += len(t)
        return obs, next_obs, np.stack(ep.actions)[t], rewards.astype(np.float32), dones

    def _bonuses(self, ep: Episode, goal_steps: np.ndarray) -> dict[int, np.ndarray] | None:
        """For each goal (the goal achieved by transition f): the bonus the hook pays at each view 0..f+1 of the
        episode with that goal. One walk in the worker per goal, on the views up to the one that achieved it."""
        paid = {}
        t0 = time.perf_counter()
        try:
            for f in goal_steps.tolist():
                goal = pack(np.asarray(ep.achieved[f], dtype=np.float64))
                views = [{**v, GOAL_FIELD: goal} for v in ep.views[:f + 2]]
                result = self.worker.walk(views, progress=False, timeout_s=self.walk_timeout_s)
                paid[f] = bonuses_by_step(result.steps, len(views), self.bonus)
                self.walks += 1
        except WorkerError as e:
            self.dropped_episodes += 1
            log.warning("--her: the program walk failed (%s); this episode's relabelled copies are dropped (%d so "
                        "far) and the worker restarted", e, self.dropped_episodes)
            self.worker.start()
            return None
        finally:
            self.walk_seconds += time.perf_counter() - t0
        return paid
