"""Integrate: a verified reward program becomes a reward hook in the RL loop.

The hook keeps, for each environment of a vector env, the index of the next sub-task. After every step it runs
that sub-task's check on the new view; when it is true the hook pays a bonus (once per episode per sub-task)
and moves on, so sub-tasks count only in order. Shaped reward = environment reward + bonuses.

Two shapings:

* ``bonus``: + `bonus` each time the next sub-task is completed.
* ``potential``: F = gamma * Phi(s') - Phi(s) with Phi = bonus * (completed sub-tasks [+ progress of the next
  one, when `use_progress`]) and Phi = 0 at termination; potential-based shaping keeps the optimal policy
  unchanged (Ng, Harada & Russell, 1999).

Gymnasium 1.x vector envs reset an environment on the step *after* it ended (next-step autoreset): that step
returns the new episode's first observation with reward 0. The hook pays nothing on it and starts the new
episode's progress there.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from .program import RewardProgram
from .views import ViewAdapter, ViewError, make_view

log = logging.getLogger(__name__)

VIEW_INFO_KEY = "vlmcar_view"
SHAPINGS = ("bonus", "potential")


def advance(check: Callable[[int, Any, Any], bool], k: int, num_subtasks: int, obs: Any, start: Any) -> int:
    """The progress rule shared by the hook and verification: from next sub-task `k` (0-based), complete sub-tasks
    in order while their checks hold on `obs`; return the new next index (several may complete in one step)."""
    while k < num_subtasks and check(k, obs, start):
        k += 1
    return k


def completion_steps(check: Callable[[int, Any, Any], bool], num_subtasks: int, views: list) -> list[int | None]:
    """Walk one recorded episode (`views[0]` the reset view, `views[t]` the view after step t) with `advance`:
    the step at which each sub-task was completed, None for those never completed."""
    steps: list[int | None] = [None] * num_subtasks
    k = 0
    for t in range(1, len(views)):
        if k >= num_subtasks:
            break
        new_k = advance(check, k, num_subtasks, views[t], views[0])
        steps[k:new_k] = [t] * (new_k - k)
        k = new_k
    return steps


@dataclass
class EpisodeRecord:
    """What the hook reports when an episode ends."""

    env_index: int
    subtasks_completed: int
    task_completed: bool
    shaped_return: float
    env_return: float
    length: int
    success: bool = False  # the environment's own success signal


class _Box:
    """Keeps a view out of the vector env's info merging (which would split a dict into per-key arrays)."""

    __slots__ = ("view",)

    def __init__(self, view: dict):
        self.view = view


class ViewInfoWrapper(gym.Wrapper):
    """Puts the reward view into `info["vlmcar_view"]`; needed for AsyncVectorEnv, where the hook cannot reach the
    sub-environments. Wrap each sub-env with it in `make_env`."""

    def __init__(self, env: gym.Env, view: str = "state"):
        super().__init__(env)
        self.adapter = make_view(env, view)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info[VIEW_INFO_KEY] = _Box(self.adapter.reset())
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[VIEW_INFO_KEY] = _Box(self.adapter.step())
        return obs, reward, terminated, truncated, info


def check_shaping(shaping: str, use_progress: bool, program: RewardProgram) -> None:
    """Reject a shaping configuration that cannot work, saying which flag to change."""
    if shaping not in SHAPINGS:
        raise ValueError(f"unknown shaping {shaping!r}; choose one of {', '.join(SHAPINGS)}")
    if use_progress and shaping != "potential":
        raise ValueError("dense progress (progress_k functions) is used through a potential: pass --shaping potential "
                         "with --use-progress")
    if use_progress and not program.has_progress:
        raise ValueError("--use-progress was asked for, but the program defines no progress_k functions")


class EpisodeProgress:
    """Sub-task progress and shaping of one episode in one environment (used by the hook and the wrapper)."""

    __slots__ = ("program", "bonus_size", "potential", "gamma", "use_progress", "start", "next_subtask", "phi")

    def __init__(self, program: RewardProgram, bonus: float, shaping: str, gamma: float, use_progress: bool):
        self.program, self.bonus_size, self.gamma, self.use_progress = program, float(bonus), float(gamma), use_progress
        self.potential = shaping == "potential"
        self.start: Any = None
        self.next_subtask = 0
        self.phi = 0.0

    def _phi(self, k: int, view: Any) -> float:
        phi = float(k)
        if self.use_progress and k < self.program.num_subtasks:
            phi += self.program.progress(k, view, self.start)
        return self.bonus_size * phi

    def begin(self, view: Any) -> None:
        """A new episode starts with `view` (no bonus for it)."""
        self.start, self.next_subtask = view, 0
        self.phi = self._phi(0, view) if self.potential else 0.0

    def step(self, view: Any, terminated: bool) -> tuple[int, int, float]:
        """Advance on the view after a step: (previous next sub-task, new next sub-task, bonus)."""
        k = self.next_subtask
        program = self.program
        if k < program.num_subtasks and program.check(k, view, self.start):
            new_k = advance(program.check, k + 1, program.num_subtasks, view, self.start)
            self.next_subtask = new_k
        else:
            new_k = k
        if not self.potential:
            return k, new_k, self.bonus_size * (new_k - k)
        phi_next = 0.0 if terminated else self._phi(new_k, view)
        bonus = self.gamma * phi_next - self.phi
        self.phi = phi_next
        return k, new_k, bonus


class RewardHook:
    """The VLM-CaR reward hook for a gymnasium 1.x vector env (SyncVectorEnv or AsyncVectorEnv).

    Usage in a rollout loop::

        hook = RewardHook(program, envs, view="state")
        next_obs, infos = envs.reset(seed=seed)
        hook.reset(infos)
        ...
        next_obs, reward, terminations, truncations, infos = envs.step(action)
        reward = hook.step(reward, terminations, truncations, infos)   # env reward + sub-task bonuses

    After each `step`: `env_reward`, `bonus` (arrays over envs), `completed` (envs x sub-tasks, True where a
    sub-task was completed on this step), `next_subtask`; and `episodes`, the EpisodeRecords of episodes that
    ended on this step. Checks that raise or return a non-bool count as False and are counted in
    `check_failures` (the first few are logged). With `program=None` the hook pays nothing and only keeps the
    episode statistics (the `sparse` variant). With a TensorBoard `writer`, it logs per finished episode
    `charts/shaped_return`, and every LOG_RATES_EVERY episodes `charts/success_rate` and `vlmcar/subtask_k_rate`
    (both over the last `window` episodes) and `vlmcar/check_failures`, at global step = steps x num_envs.
    """

    LOG_RATES_EVERY = 8

    def __init__(self, program: RewardProgram | None, envs: gym.vector.VectorEnv, view: str = "state",
                 bonus: float = 1.0, shaping: str = "bonus", gamma: float = 0.99, use_progress: bool = False,
                 writer=None, window: int = 100):
        if program is not None:
            check_shaping(shaping, use_progress, program)
        mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode not in (gym.vector.AutoresetMode.NEXT_STEP, "NextStep", "next_step"):
            raise ValueError(f"the reward hook needs gymnasium's default next-step autoreset, not {mode}")
        self.program, self.num_envs, self.view = program, envs.num_envs, view
        self.num_subtasks = program.num_subtasks if program is not None else 0
        # Sync: adapters on the sub-envs themselves; Async: views arrive through ViewInfoWrapper in `infos`
        self.adapters: list[ViewAdapter] | None = None
        if program is not None and isinstance(envs, gym.vector.SyncVectorEnv):
            self.adapters = [make_view(env, view) for env in envs.envs]
        self.progress = [EpisodeProgress(program, bonus, shaping, gamma, use_progress) for _ in range(self.num_envs)] \
            if program is not None else []
        self._autoreset = [False] * self.num_envs
        self._shaped_return = [0.0] * self.num_envs
        self._env_return = [0.0] * self.num_envs
        self._length = [0] * self.num_envs
        self._any_completed = False
        self.env_reward = np.zeros(self.num_envs)
        self.bonus = np.zeros(self.num_envs)
        self.completed = np.zeros((self.num_envs, self.num_subtasks), dtype=bool)
        self.episodes: list[EpisodeRecord] = []
        self.writer, self.global_step = writer, 0
        self.recent: deque[EpisodeRecord] = deque(maxlen=window)
        self._since_rates, self._rates_logged = 0, False
        self.logs_shaped_return = program is not None
        self._warned = 0

    @property
    def next_subtask(self) -> np.ndarray:
        return np.array([p.next_subtask for p in self.progress], dtype=np.int64)

    @property
    def check_failures(self) -> int:
        """Checks that raised or returned a non-bool since the start (each counted as False)."""
        return self.program.stats.total if self.program is not None else 0

    def _views_from_infos(self, infos: dict | None) -> list[Any]:
        boxes = None if infos is None else infos.get(VIEW_INFO_KEY)
        if boxes is None:
            raise ValueError("the reward hook cannot reach the sub-environments of this vector env: wrap each env "
                             "with cleanrl_vlmcar.integrate.ViewInfoWrapper(env, view) in make_env, or use "
                             "SyncVectorEnv")
        return [b.view if b is not None else None for b in boxes]

    def _begin(self, i: int, view: Any) -> None:
        if self.program is not None:
            self.progress[i].begin(view)
        self._shaped_return[i] = self._env_return[i] = 0.0
        self._length[i] = 0

    def reset(self, infos: dict | None = None) -> None:
        """Call after `envs.reset()`: every environment starts a new episode."""
        if self.program is None:
            views = [None] * self.num_envs
        elif self.adapters is not None:
            views = [a.reset() for a in self.adapters]
        else:
            views = self._views_from_infos(infos)
        for i, view in enumerate(views):
            self._begin(i, view)
        self._autoreset = [False] * self.num_envs

    def step(self, reward: np.ndarray, terminations: np.ndarray, truncations: np.ndarray,
             infos: dict | None = None, extra: np.ndarray | None = None) -> np.ndarray:
        """Shaped rewards for one vector step (environment reward + bonuses [+ `extra`, e.g. another reward
        model's term, added outside autoreset steps])."""
        if self.program is None and extra is None:
            return self._step_sparse(reward, terminations, truncations, infos)
        # per-env work is plain Python on lists: numpy scalar access would cost more than the checks themselves
        self.global_step += self.num_envs
        rewards = np.asarray(reward, dtype=np.float64).tolist()
        terminated = np.asarray(terminations).tolist()
        done = np.logical_or(terminations, truncations).tolist()
        views = self._views_from_infos(infos) if self.program is not None and self.adapters is None else None
        bonus = [0.0] * self.num_envs if extra is None else np.asarray(extra, dtype=np.float64).tolist()
        if self._any_completed:
            self.completed[:] = False
            self._any_completed = False
        self.episodes = []
        autoreset, adapters, program = self._autoreset, self.adapters, self.program
        for i in range(self.num_envs):
            if program is not None:
                if adapters is not None:
                    view = adapters[i].reset() if autoreset[i] else adapters[i].step()
                else:
                    view = views[i]
            if autoreset[i]:  # the reset step of next-step autoreset: no bonus, progress starts over
                self._begin(i, view if program is not None else None)
                bonus[i] = 0.0
                continue
            if program is not None:
                k, new_k, b = self.progress[i].step(view, terminated[i])
                bonus[i] += b
                if new_k > k:
                    self.completed[i, k:new_k] = True
                    self._any_completed = True
            self._length[i] += 1
            self._env_return[i] += rewards[i]
            self._shaped_return[i] += rewards[i] + bonus[i]
            if done[i]:
                n_done = self.progress[i].next_subtask if program is not None else 0
                self.episodes.append(EpisodeRecord(
                    i, n_done, program is not None and n_done == self.num_subtasks, self._shaped_return[i],
                    self._env_return[i], self._length[i], episode_success(i, rewards[i], terminated[i], infos)))
        self._autoreset = done
        self.env_reward, self.bonus = np.array(rewards), np.array(bonus)
        if self.episodes:
            self._record_episodes()
        if program is not None and program.stats.total > self._warned:
            self._log_failures()
        return (self.env_reward + self.bonus).astype(np.float32)

    def _step_sparse(self, reward, terminations, truncations, infos) -> np.ndarray:
        """The `sparse` variant: the environment's reward unchanged, and the same episode bookkeeping, vectorised."""
        self.global_step += self.num_envs
        self.episodes = []
        rewards = np.asarray(reward, dtype=np.float64)
        done = np.logical_or(terminations, truncations)
        if not isinstance(self._shaped_return, np.ndarray):
            self._env_return = np.asarray(self._env_return, dtype=np.float64)
            self._length = np.asarray(self._length, dtype=np.int64)
            self._shaped_return = self._env_return  # one array: shaped == env return here
            self._autoreset = np.asarray(self._autoreset, dtype=bool)
            self._zeros = np.zeros(self.num_envs)
        if self._autoreset.any():  # reset steps of next-step autoreset start the books over
            self._env_return[self._autoreset] = 0.0
            self._length[self._autoreset] = -1  # gymnasium's reset step has reward 0 and is not counted
        self._env_return += rewards
        self._length += 1
        if done.any():
            for i in np.nonzero(done & ~self._autoreset)[0]:
                self.episodes.append(EpisodeRecord(int(i), 0, False, float(self._env_return[i]),
                                                   float(self._env_return[i]), int(self._length[i]),
                                                   episode_success(i, rewards[i], bool(terminations[i]), infos)))
            if self.episodes:
                self._record_episodes()
        self._autoreset = done
        self.env_reward, self.bonus = rewards, self._zeros
        return rewards.astype(np.float32)

    def _record_episodes(self) -> None:
        self.recent.extend(self.episodes)
        if self.writer is None:
            return
        step = self.global_step
        if self.logs_shaped_return:  # in the sparse variant it would only repeat charts/episodic_return
            for e in self.episodes:
                self.writer.add_scalar("charts/shaped_return", e.shaped_return, step)
        # the window rates change slowly: write them every LOG_RATES_EVERY episodes (and for the first one)
        self._since_rates += len(self.episodes)
        if self._since_rates < self.LOG_RATES_EVERY and self._rates_logged:
            return
        self._since_rates, self._rates_logged = 0, True
        self.writer.add_scalar("charts/success_rate", self.success_rate, step)
        for k in range(self.num_subtasks):
            rate = sum(e.subtasks_completed > k for e in self.recent) / len(self.recent)
            self.writer.add_scalar(f"vlmcar/subtask_{k + 1}_rate", rate, step)
        if self.program is not None:
            self.writer.add_scalar("vlmcar/check_failures", self.check_failures, step)

    @property
    def success_rate(self) -> float:
        """Environment success over the last `window` finished episodes."""
        return sum(e.success for e in self.recent) / len(self.recent) if self.recent else 0.0

    def _log_failures(self) -> None:
        total = self.program.stats.total
        if self._warned < 10 or total // 1000 > self._warned // 1000:
            example = self.program.stats.examples[-1].splitlines()[0] if self.program.stats.examples else ""
            log.warning("reward program check failed (%d so far; counted as False): %s", total, example)
        self._warned = total


def episode_success(i: int, reward: float, terminated: bool, infos: dict | None) -> bool:
    """The environment's own success for env `i` at the end of an episode: `info["is_success"]` where the env
    reports it (panda-gym), else termination with a positive reward (MiniGrid)."""
    if infos and "is_success" in infos:
        mask = infos.get("_is_success")
        if mask is None or mask[i]:
            return bool(infos["is_success"][i])
    return bool(terminated and reward > 0)


class VLMCaRRewardWrapper(gym.Wrapper):
    """The reward hook as a plain gymnasium wrapper around one environment, for other RL libraries
    (Stable-Baselines3, custom loops). `info["vlmcar"]` carries the env reward, bonus and sub-task progress."""

    def __init__(self, env: gym.Env, program: RewardProgram, view: str = "state", bonus: float = 1.0,
                 shaping: str = "bonus", gamma: float = 0.99, use_progress: bool = False):
        super().__init__(env)
        check_shaping(shaping, use_progress, program)
        self.program, self.view = program, view
        self.adapter = make_view(env, view)
        self.progress = EpisodeProgress(program, bonus, shaping, gamma, use_progress)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.progress.begin(self.adapter.reset())
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        k, new_k, bonus = self.progress.step(self.adapter.step(), bool(terminated))
        info = dict(info)
        info["vlmcar"] = {"env_reward": float(reward), "bonus": float(bonus), "subtasks_completed": new_k,
                          "newly_completed": list(range(k + 1, new_k + 1)),
                          "task_completed": new_k == self.program.num_subtasks}
        return obs, float(reward) + bonus, terminated, truncated, info


REWARDS = ("sparse", "vlmcar", "clip")


def make_reward_hook(envs: gym.vector.VectorEnv, args: Any, writer=None, infos: dict | None = None):
    """The one startup call of the training scripts: a reward hook for `args.reward`, after `envs.reset()`.

    Reads these fields of `args` (missing ones take the defaults shown): reward ("vlmcar"), env_id, view
    ("state"), vlm (None: the cached verified program only), vlm_model (""), vlm_base_url (None), bonus (1.0),
    shaping ("bonus"), gamma (0.99), use_progress (False), and for `clip` the clip_* fields. Fails before
    training, with a message that says what to do, when no verified program exists or the env/view is not
    supported.
    """
    kind = getattr(args, "reward", "vlmcar")
    if kind not in REWARDS:
        raise ValueError(f"unknown --reward {kind!r}; choose one of {', '.join(REWARDS)}")
    if kind == "clip":
        from .clip_reward import make_clip_hook

        hook = make_clip_hook(envs, args, writer)
        hook.reset(infos)
        return hook
    program = None
    view = getattr(args, "view", "state")
    if kind == "vlmcar":
        from .generate import reward_program

        backend_kwargs = {k: v for k, v in (("model", getattr(args, "vlm_model", "")),
                                            ("base_url", getattr(args, "vlm_base_url", None))) if v}
        try:
            program = reward_program(args.env_id, view, getattr(args, "vlm", None), **backend_kwargs)
        except ViewError as e:
            raise ViewError(f"{e} (or train on the environment's own reward with --reward sparse)") from None
        log.info("VLM-CaR reward program %s:\n%s", getattr(program, "cache_path", ""), program.summary())
    hook = RewardHook(program, envs, view=view, bonus=getattr(args, "bonus", 1.0),
                      shaping=getattr(args, "shaping", "bonus"), gamma=getattr(args, "gamma", 0.99),
                      use_progress=getattr(args, "use_progress", False), writer=writer)
    hook.reset(infos)
    return hook
