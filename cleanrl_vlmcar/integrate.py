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
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .confine import DEFAULT_MEMORY_MB, ProgramWorker, WorkerError
from .errors import UsageError
from .families import env_success
from .program import RewardProgram, advance, completion_steps, load_program  # noqa: F401 - re-exported
from .views import ViewAdapter, make_view

log = logging.getLogger(__name__)

VIEW_INFO_KEY = "vlmcar_view"
SHAPINGS = ("bonus", "potential")


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
        info[VIEW_INFO_KEY] = _Box(self.adapter.reset(obs, info))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[VIEW_INFO_KEY] = _Box(self.adapter.step(obs, info))
        return obs, reward, terminated, truncated, info


def check_shaping(shaping: str, use_progress: bool, program: RewardProgram) -> None:
    """Reject a shaping configuration that cannot work, saying which flag to change."""
    if shaping not in SHAPINGS:
        raise UsageError(f"unknown shaping {shaping!r}; choose one of {', '.join(SHAPINGS)}")
    if use_progress and shaping != "potential":
        raise UsageError("dense progress (progress_k functions) is used through a potential: pass --shaping potential "
                         "with --use-progress")
    if use_progress and not program.has_progress:
        raise UsageError("--use-progress was asked for, but the program defines no progress_k functions")


class EpisodeProgress:
    """Sub-task progress and shaping of one episode in one environment (used by the hook and the wrapper). It
    only does the arithmetic: the checks run in the confined worker, which sends back the new next sub-task and
    the progress value."""

    __slots__ = ("num_subtasks", "bonus_size", "potential", "gamma", "use_progress", "next_subtask", "phi")

    def __init__(self, num_subtasks: int, bonus: float, shaping: str, gamma: float, use_progress: bool):
        self.num_subtasks, self.bonus_size, self.gamma = num_subtasks, float(bonus), float(gamma)
        self.potential, self.use_progress = shaping == "potential", use_progress
        self.next_subtask = 0
        self.phi = 0.0

    def _phi(self, k: int, progress: float) -> float:
        return self.bonus_size * (k + (progress if self.use_progress and k < self.num_subtasks else 0.0))

    def begin(self, progress: float = 0.0) -> None:
        """A new episode starts (no bonus for its first view); `progress`: progress_1 on that view."""
        self.next_subtask = 0
        self.phi = self._phi(0, progress) if self.potential else 0.0

    def step(self, new_k: int, progress: float, terminated: bool) -> tuple[int, int, float]:
        """The worker's answer for the view after a step: (previous next sub-task, new next sub-task, bonus)."""
        k = self.next_subtask
        self.next_subtask = new_k
        if not self.potential:
            return k, new_k, self.bonus_size * (new_k - k)
        phi_next = 0.0 if terminated else self._phi(new_k, progress)
        bonus = self.gamma * phi_next - self.phi
        self.phi = phi_next
        return k, new_k, bonus

    def hold(self) -> tuple[int, int, float]:
        """No answer for this step (the worker failed or the program is switched off): no change, no bonus."""
        return self.next_subtask, self.next_subtask, 0.0


MIN_DEADLINE_S = 2.0
DEADLINE_FACTOR = 100.0
MAX_DEADLINE_S = 60.0
#: the purity audit: at most one episode replayed in a fresh worker per this many seconds of training
AUDIT_EVERY_S = 120.0
AUDIT_MAX_VIEWS = 10_000  # longer episodes are not recorded


class _Recording:
    """One episode of env 0 as the training worker saw and answered it, for the purity audit."""

    __slots__ = ("views", "steps", "tainted")

    def __init__(self, start: Any, num_subtasks: int):
        self.views = [start]
        self.steps: list[int | None] = [None] * num_subtasks  # where training completed each sub-task
        self.tainted = False  # a step without an answer (worker failure, switched off): nothing to compare


class ProgramRunner:
    """The learner's side of the confined worker: one message per vector step, answers read in order, deadlines,
    restarts, switch-off.

    `submit` queues a vector step's views and returns at once (a rollout queues its steps; the worker checks them
    meanwhile); `collect` returns the answers in the order the steps were submitted. The worker keeps each env's
    next sub-task between its answers, so a step is sent before the previous one's answer is read.

    An answer that misses its deadline, a crash or a malformed answer kills and restarts the worker and counts every
    check of the steps it had not answered as failures (`worker_restarts`, `check_failures`); their `collect` is
    None (the caller pays nothing and holds progress), and the next step sent tells the new worker each env's next
    sub-task and episode start. After `max_failed_replies` failures in a row, or when more than half of at least
    1,000 checks have failed, the program is switched off for the rest of the run (`disabled` holds the reason):
    the caller pays no bonuses from then on.
    """

    def __init__(self, program: RewardProgram, num_envs: int, use_progress: bool = False,
                 deadline_s: float | None = None, require_confinement: bool = False, max_failed_replies: int = 3,
                 memory_mb: int = DEFAULT_MEMORY_MB, audit_every_s: float | None = AUDIT_EVERY_S):
        self.program, self.num_envs, self.use_progress = program, num_envs, use_progress
        # the purity audit (see `_audit`): env 0's episode being recorded, each queued step's place in it
        self.audit_every_s = audit_every_s
        self._audit_due = time.monotonic() if audit_every_s is not None else math.inf
        self._recording: _Recording | None = None
        self._places: deque = deque()  # per submitted step: (recording, t, recording just finished) or None
        self.audits = self.audit_errors = 0
        if deadline_s is None:  # from the verified check cost when the cache entry recorded it
            per_step = num_envs * program.num_subtasks * (program.us_per_check or 0.0) * 1e-6
            deadline_s = max(MIN_DEADLINE_S, DEADLINE_FACTOR * per_step)
        # a cache entry's recorded cost is data: never let it (or a caller) make the learner wait without end
        deadline_s = min(float(deadline_s), MAX_DEADLINE_S)
        if not deadline_s > 0:
            raise UsageError(f"the reward hook's deadline must be positive, not {deadline_s}")
        self.deadline_s, self.max_failed_replies = float(deadline_s), max_failed_replies
        self.worker = ProgramWorker(program, require_confinement=require_confinement, memory_mb=memory_mb)
        self.starts: list[Any] = [None] * num_envs
        self.check_failures = self.worker_restarts = self.checked = 0
        self._failed_in_a_row = 0
        # per submitted step, in order: [sent, checks, envs whose episode begins with it]; sent False: no answer
        self._queue: deque[list] = deque()
        self._answered_k = [0] * num_envs  # next sub-task per env after the last collected step
        self._resync = False  # the worker was restarted: the next step sent gives it every env's k and start
        self.disabled: str | None = None
        self.first_error = ""  # the worker's traceback of the first failed check (sanitised)
        self._error_wanted = False  # a check failed: read its traceback once no step is in flight

    def step(self, items: list[tuple[int, int | None, Any]]) -> tuple[list[int], list[float]] | None:
        """`items`: (env index, -1 when a new episode begins with this view or None, view). Returns the new next
        sub-task and progress value per env, or None when there is no answer for this step."""
        if self._queue:
            raise RuntimeError("ProgramRunner.step with submitted steps not collected")
        self.submit(items)
        return self.collect()

    def submit(self, items: list[tuple[int, int | None, Any]]) -> None:
        """Queue one vector step (see `step`); the worker checks it while the caller goes on."""
        resets = []
        for i, k, view in items:
            if k is not None:  # -1: a new episode begins with this view
                if k != -1:
                    raise ValueError("ProgramRunner.submit: k is -1 (a new episode) or None")
                resets.append(i)
                self.starts[i] = view
        entry = [False, len(items), resets]
        self._queue.append(entry)
        self._places.append(self._record(items))
        if self.disabled:
            return
        self.checked += len(items)
        if self._resync:  # a new worker: each env's next sub-task (from the answers so far) and episode start
            ks = self._expected_k()
            request = [(i, k, view, None) if k is not None else (i, ks[i], view, self.starts[i])
                       for i, k, view in items]
        else:
            request = items
        try:
            self.worker.send_step(request, self.num_envs, self.use_progress, self.deadline_s)
        except WorkerError as e:
            self._failed(e)
            return
        entry[0] = True
        self._resync = False

    def _expected_k(self) -> list[int]:
        """Each env's next sub-task once every queued step is collected, when those not answered yet never will be
        (only new episodes change it)."""
        ks = list(self._answered_k)
        for _, _, resets in self._queue:
            for i in resets:
                ks[i] = 0
        return ks

    @property
    def in_flight(self) -> int:
        """Steps submitted and not collected yet."""
        return len(self._queue)

    def collect(self) -> tuple[list[int], list[float]] | None:
        """The answer to the oldest submitted step, or None when there is none (a failed worker, switched off)."""
        answer = self._collect()
        place = self._places.popleft()
        if place is not None:
            self._book_recording(place, answer)
        return answer

    def _collect(self) -> tuple[list[int], list[float]] | None:
        sent, n, resets = self._queue.popleft()
        for i in resets:
            self._answered_k[i] = 0
        if not sent or self.disabled:
            return None
        try:
            failures, new_k, progress = self.worker.recv_step()
        except WorkerError as e:
            self._failed(e, lost=n)
            return None
        self._failed_in_a_row = 0
        self._answered_k = new_k
        self._error_wanted = self._error_wanted or (failures > 0 and not self.first_error)
        if self._error_wanted and not self.worker.pending:  # asked between steps: the worker answers in order
            self._error_wanted = False
            try:
                self.first_error = self.worker.first_error(self.deadline_s) or "(no traceback)"
            except WorkerError as e:
                self.first_error = f"(could not be read: {e})"
                self._failed(e)
        self.check_failures += failures
        if self.checked >= 1000 and self.check_failures > 0.5 * self.checked:
            self._disable(f"its checks failed {self.check_failures} times in {self.checked} env steps")
        return new_k, progress

    # --- the purity audit -----------------------------------------------------------------------------------
    # Training pays a program because verification found it sound, but verification ran it in other workers, at
    # other times, after fewer calls. Every `audit_every_s` seconds one finished episode of env 0 is walked again
    # in a fresh worker (verification's `walk`), and where each sub-task was completed there must equal where the
    # training worker completed it. A pure function of its view always agrees; a program that counts its calls,
    # reads memory numpy did not clear, reads the clock or behaves per process need not, and on disagreement is
    # switched off like a failing one. It costs one worker start (~0.3 s) per audit.
    def _record(self, items) -> tuple | None:
        """Env 0's view of this step into the episode being recorded. Returns the step's place for `collect`:
        (recording or None, index in it, the recording that ended just before this step or None)."""
        i, k, view = items[0]
        if i != 0:
            return None
        if k == -1:  # env 0 begins an episode: the one recorded so far is complete
            finished, self._recording = self._recording, None
            if time.monotonic() >= self._audit_due and not self.disabled:
                self._recording = _Recording(view, self.program.num_subtasks)
                self._audit_due = math.inf  # one recording at a time; due again after its audit
            return (self._recording, 0, finished) if self._recording or finished else None
        rec = self._recording
        if rec is None:
            return None
        rec.views.append(view)
        if len(rec.views) > AUDIT_MAX_VIEWS:  # too long to keep: record a later episode
            self._recording = None
            self._audit_due = time.monotonic()
            return None
        return rec, len(rec.views) - 1, None

    def _book_recording(self, place: tuple, answer) -> None:
        rec, t, finished = place
        if finished is not None:  # every answer of it has been collected (they came before this step)
            self._audit(finished)
        if rec is None:
            return
        if answer is None:
            rec.tainted = True
        elif t > 0:  # the reset view itself completes nothing (the hook's rule)
            for j in range(min(answer[0][0], len(rec.steps))):  # sub-tasks completed so far; new ones at step t
                if rec.steps[j] is None:
                    rec.steps[j] = t

    def _audit(self, rec: _Recording) -> None:
        if self.disabled:
            return
        self._audit_due = time.monotonic() + self.audit_every_s
        if rec.tainted or len(rec.views) < 2:
            return
        try:
            w = self.worker  # the fresh worker is confined exactly like the training worker
            with ProgramWorker(self.program, memory_mb=w.memory_mb, cpu_s=w.cpu_s,
                               require_confinement=w.require_confinement, skip=w.skip) as fresh:
                result = fresh.walk(rec.views, timeout_s=max(self.deadline_s, 10.0))
        except WorkerError as e:  # inconclusive (a slow machine, a crash in the fresh worker): not a verdict
            self.audit_errors += 1
            log.warning("purity audit of the reward program could not run (%s: %s)", e.kind, e)
            return
        self.audits += 1
        if list(result.steps) != rec.steps:
            self._disable("a fresh worker completed its sub-tasks at other steps than the training worker on the "
                          f"same episode of {len(rec.views)} views (fresh: {list(result.steps)}, training: "
                          f"{rec.steps}): it is not a pure function of its view (it keeps state between calls, "
                          "reads the clock or differs between processes)")

    def _failed(self, error: WorkerError, lost: int = 0) -> None:
        """The worker failed: the step being collected (`lost` checks) and every queued step it had not answered
        are lost (their checks count as failures)."""
        self.check_failures += lost
        for entry in self._queue:
            if entry[0]:
                self.check_failures += entry[1]
                entry[0] = False
        self.first_error = self.first_error or f"no answer from the worker ({error.kind}: {error})"
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= self.max_failed_replies:
            self._disable(f"the worker failed {self._failed_in_a_row} times in a row (last: {error})")
            return
        log.warning("reward program worker failed (%s: %s); restarting it, the checks of the steps it had not "
                    "answered count as failed", error.kind, error)
        self.worker_restarts += 1
        self._resync = True
        try:
            self.worker.start()
        except WorkerError as e:
            self._failed(e)

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        self.worker.close()
        log.error("VLM-CaR reward program switched off for the rest of this run: %s. Training goes on with the "
                  "environment's reward only; run `python -m cleanrl_vlmcar verify` on the program to see why.",
                  reason)

    def close(self) -> None:
        self.worker.close()


@dataclass
class VectorStep:
    """One vector step as the hook and its terms see it (per-env lists; `autoreset[i]`: this step is env i's reset
    step under next-step autoreset, which pays nothing and starts a new episode)."""

    reward: list[float]
    terminations: np.ndarray  # the caller's array: a term may end an episode here (see ClipTerm)
    truncations: np.ndarray
    infos: dict | None
    obs: Any
    autoreset: list[bool]
    extra: np.ndarray | None = None


class RewardTerm:
    """One term of the shaped reward, composed by `RewardHook`.

    Per vector step the hook calls `send(step)` as soon as the step is known (the envs are at that step: a term that
    reads them does it here) and later `collect(step)`, which returns the term's value per env (0 on autoreset
    steps). In between a term may compute elsewhere: the program term's checks run in the confined worker while the
    rollout goes on. `reset(obs, infos)` starts every env's episode; `after_step(hook)` may log the term's own tags
    and warnings; `episode_fields(i)` adds to the EpisodeRecord of env i's episode that ends on this step;
    `status()` is a fragment of the console line. With `replaces_env_reward`, the environment's reward is not
    part of the shaped reward (the CLIP reward of Baumli et al.).
    """

    replaces_env_reward = False
    num_subtasks = 0

    def reset(self, obs: Any, infos: dict | None) -> None:
        pass

    def send(self, step: VectorStep) -> None:
        pass

    def collect(self, step: VectorStep) -> list[float]:
        raise NotImplementedError

    def episode_fields(self, i: int) -> dict:
        return {}

    def after_step(self, hook: "RewardHook") -> None:
        pass

    def status(self) -> str:
        return ""

    def close(self) -> None:
        pass


class ProgramTerm(RewardTerm):
    """The VLM-CaR term: a verified program's sub-task bonuses (`shaping="bonus"`), or potential-based shaping over
    completed sub-tasks and, with `use_progress`, the next sub-task's progress (`shaping="potential"`).

    The program runs in a confined worker (`ProgramRunner`): `send` computes every env's view and sends them in one
    message, `collect` reads the fixed-size answer and applies the in-order rule's arithmetic (`EpisodeProgress`).
    After `collect`: `completed` (envs x sub-tasks, True where a sub-task was completed on this step)."""

    def __init__(self, program: RewardProgram, envs: gym.vector.VectorEnv, view: str = "state", bonus: float = 1.0,
                 shaping: str = "bonus", gamma: float = 0.99, use_progress: bool = False,
                 deadline_s: float | None = None, require_confinement: bool = False,
                 audit_every_s: float | None = AUDIT_EVERY_S):
        check_shaping(shaping, use_progress, program)
        self.program, self.view, self.num_envs = program, view, envs.num_envs
        self.num_subtasks = program.num_subtasks
        # Sync: adapters on the sub-envs themselves; Async: views arrive through ViewInfoWrapper in `infos`
        self.adapters: list[ViewAdapter] | None = None
        if isinstance(envs, gym.vector.SyncVectorEnv):
            self.adapters = [make_view(env, view) for env in envs.envs]
        self._needs_obs = self.adapters is not None and any(a.needs_obs for a in self.adapters)
        self.runner = ProgramRunner(program, self.num_envs, use_progress, deadline_s, require_confinement,
                                    audit_every_s=audit_every_s)
        self.progress = [EpisodeProgress(self.num_subtasks, bonus, shaping, gamma, use_progress)
                         for _ in range(self.num_envs)]
        self.completed = np.zeros((self.num_envs, self.num_subtasks), dtype=bool)
        self._any_completed = False
        self._warned = 0
        self._disabled_reported = False

    def _views(self, infos: dict | None, obs: Any, reset: list[bool]) -> list[Any]:
        """Every env's view: from the adapters (Sync; those that need it get the env's own obs and info) or from
        `infos` (Async with ViewInfoWrapper)."""
        if self.adapters is None:
            boxes = None if infos is None else infos.get(VIEW_INFO_KEY)
            if boxes is None:
                raise UsageError("the reward hook cannot reach the sub-environments of this vector env: wrap each "
                                 "env with cleanrl_vlmcar.integrate.ViewInfoWrapper(env, view) in make_env, or use "
                                 "SyncVectorEnv")
            return [b.view if b is not None else None for b in boxes]
        if not self._needs_obs:
            return [a.reset() if r else a.step() for a, r in zip(self.adapters, reset)]
        views = []
        for i, (a, r) in enumerate(zip(self.adapters, reset)):
            o, info = env_slice(obs, infos, i)
            views.append(a.reset(o, info) if r else a.step(o, info))
        return views

    def reset(self, obs: Any, infos: dict | None) -> None:
        while self.runner.in_flight:  # the answers to steps that the reset discards: read and dropped
            self.runner.collect()
        views = self._views(infos, obs, [True] * self.num_envs)
        answer = self.runner.step([(i, -1, v) for i, v in enumerate(views)])
        for i in range(self.num_envs):
            self.progress[i].begin(answer[1][i] if answer is not None else 0.0)

    def send(self, step: VectorStep) -> None:
        views = self._views(step.infos, step.obs, step.autoreset)
        # the worker keeps each env's next sub-task: it is not known here until the previous steps are collected
        self.runner.submit([(i, -1 if reset else None, view) for i, (reset, view) in
                            enumerate(zip(step.autoreset, views))])

    def collect(self, step: VectorStep) -> list[float]:
        answer = self.runner.collect()
        if self._any_completed:
            self.completed[:] = False
            self._any_completed = False
        bonus = [0.0] * self.num_envs
        terminated = step.terminations.tolist()
        ks, progress = answer if answer is not None else (None, [0.0] * self.num_envs)
        for i, (p, reset) in enumerate(zip(self.progress, step.autoreset)):
            if reset:  # the reset step: progress starts over with this view
                p.begin(progress[i])
                continue
            k, new_k, bonus[i] = p.step(ks[i], progress[i], terminated[i]) if ks is not None else p.hold()
            if new_k > k:
                self.completed[i, k:new_k] = True
                self._any_completed = True
        return bonus

    def episode_fields(self, i: int) -> dict:
        n = self.progress[i].next_subtask
        return {"subtasks_completed": n, "task_completed": n == self.num_subtasks}

    @property
    def next_subtask(self) -> np.ndarray:
        return np.array([p.next_subtask for p in self.progress], dtype=np.int64)

    def after_step(self, hook: "RewardHook") -> None:
        runner = self.runner
        if runner.check_failures > self._warned and runner.first_error:  # the traceback comes between steps
            total = runner.check_failures
            if self._warned < 10 or total // 1000 > self._warned // 1000:
                log.warning("reward program checks failed %d time(s) so far (each counted as False); the first:\n%s",
                            total, runner.first_error)
            self._warned = total
        if runner.disabled and not self._disabled_reported:
            self._disabled_reported = True
            if hook.writer is not None:
                hook.writer.add_scalar("vlmcar/program_disabled", 1, hook.global_step)
                hook.writer.add_text("vlmcar/program_disabled", runner.disabled, hook.global_step)

    def log_rates(self, writer, step: int, hook: "RewardHook") -> None:
        writer.add_scalar("vlmcar/task_without_success", hook.task_without_success, step)
        writer.add_scalar("vlmcar/check_failures", self.runner.check_failures, step)
        writer.add_scalar("vlmcar/worker_restarts", self.runner.worker_restarts, step)
        writer.add_scalar("vlmcar/purity_audits", self.runner.audits, step)

    def status(self) -> str:
        return " (reward program switched off)" if self.runner.disabled else ""

    def close(self) -> None:
        self.runner.close()


class RewardHook:
    """The reward hook for a gymnasium 1.x vector env (SyncVectorEnv or AsyncVectorEnv): it books episodes, logs the
    tags, and adds its reward terms to the environment's reward.

    Usage in a rollout loop::

        hook = RewardHook(program, envs, view="state")      # the VLM-CaR term; or terms=[...] to compose
        next_obs, infos = envs.reset(seed=seed)
        hook.reset(infos, next_obs)
        ...
        next_obs, reward, terminations, truncations, infos = envs.step(action)
        reward = hook.step(reward, terminations, truncations, infos, obs=next_obs)   # env reward + terms

    or queued, as ppo_vlmcar.py does: `hook.submit(...)` per step returns at once (the program checks the views in
    its worker while the rollout goes on) and `rewards[:] = hook.flush()` after the rollout returns every submitted
    step's shaped rewards, (steps, num_envs); episodes are booked and logged then, at their own global steps.

    `program` (a verified RewardProgram) adds a `ProgramTerm` with the given view, bonus, shaping, gamma,
    use_progress, deadline and confinement settings; `terms` adds any other RewardTerms (e.g. a CLIP term). With
    neither, the hook pays the environment's reward and only keeps the episode statistics (the `sparse` variant).
    After each step: `env_reward`, `bonus` (the terms' sum per env), `completed` and `next_subtask` (from the
    program term), and `episodes`, the EpisodeRecords of episodes that ended on this step. With a TensorBoard
    `writer`, it logs per finished episode `charts/shaped_return`, and every LOG_RATES_EVERY episodes
    `charts/success_rate`, `vlmcar/subtask_k_rate` and `vlmcar/task_without_success` (over the last `window`
    episodes), `vlmcar/check_failures` and `vlmcar/worker_restarts`, at global step = steps x num_envs.
    `vlmcar/task_without_success` is the fidelity alarm: the fraction of episodes in which the program completed
    its last sub-task while the environment reported no success (reward hacking, a time bomb or an honest false
    positive); above FIDELITY_ALARM it warns once. `success(reward, terminated, info)` is the environment's own
    success rule (default: the env family's). Every `audit_every_s` seconds (None: never) one finished episode
    of env 0 is replayed in a fresh worker, and a program that answers differently there is switched off (the
    purity audit, `ProgramRunner._audit`).
    """

    LOG_RATES_EVERY = 8
    FIDELITY_ALARM = 0.10
    FIDELITY_MIN_EPISODES = 20

    def __init__(self, program: RewardProgram | None, envs: gym.vector.VectorEnv, view: str = "state",
                 bonus: float = 1.0, shaping: str = "bonus", gamma: float = 0.99, use_progress: bool = False,
                 writer=None, window: int = 100, deadline_s: float | None = None, require_confinement: bool = False,
                 success=None, terms: list[RewardTerm] | tuple = (), audit_every_s: float | None = AUDIT_EVERY_S):
        mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode not in (gym.vector.AutoresetMode.NEXT_STEP, "NextStep", "next_step"):
            raise UsageError(f"the reward hook needs gymnasium's default next-step autoreset, not {mode}")
        self.num_envs = envs.num_envs
        if success is None:  # the env family's own success rule (Async: the common rule unless given)
            from .families import family_of

            success = family_of(envs.envs[0]).success if isinstance(envs, gym.vector.SyncVectorEnv) else env_success
        self.success_rule = success
        self.program_term = ProgramTerm(program, envs, view, bonus, shaping, gamma, use_progress, deadline_s,
                                        require_confinement, audit_every_s) if program is not None else None
        self.terms: list[RewardTerm] = ([self.program_term] if self.program_term else []) + list(terms)
        self.program = program
        self.num_subtasks = self.program_term.num_subtasks if self.program_term else 0
        self._replace_env_reward = any(t.replaces_env_reward for t in self.terms)
        self._autoreset = [False] * self.num_envs
        self._shaped_return = [0.0] * self.num_envs
        self._env_return = [0.0] * self.num_envs
        self._length = [0] * self.num_envs
        self.env_reward = np.zeros(self.num_envs)
        self.bonus = np.zeros(self.num_envs)
        self.episodes: list[EpisodeRecord] = []
        self.writer, self.global_step = writer, 0
        self.recent: deque[EpisodeRecord] = deque(maxlen=window)
        self._since_rates, self._rates_logged = 0, False
        self.logs_shaped_return = bool(self.terms)
        self._fidelity_warned = False
        self._pending: list = []  # submitted steps not booked yet (VectorSteps; without terms, their rewards)
        self.flushed_episodes: list[EpisodeRecord] = []
        self._booked_episodes: list[EpisodeRecord] = []  # booked by `submit` (no terms), not flushed yet

    # --- what the program term knows, for callers and tests --------------------------------------------------
    @property
    def runner(self) -> ProgramRunner | None:
        return self.program_term.runner if self.program_term else None

    @property
    def adapters(self) -> list[ViewAdapter] | None:
        return self.program_term.adapters if self.program_term else None

    @property
    def completed(self) -> np.ndarray:
        return self.program_term.completed if self.program_term else np.zeros((self.num_envs, 0), dtype=bool)

    @property
    def next_subtask(self) -> np.ndarray:
        return self.program_term.next_subtask if self.program_term else np.zeros(self.num_envs, dtype=np.int64)

    @property
    def check_failures(self) -> int:
        """Checks that raised, returned a non-bool, or got no answer in time, since the start (each counted as
        False)."""
        return self.runner.check_failures if self.runner is not None else 0

    @property
    def worker_restarts(self) -> int:
        return self.runner.worker_restarts if self.runner is not None else 0

    @property
    def disabled(self) -> str | None:
        """Why the program was switched off for the rest of the run, or None while it pays bonuses."""
        return self.runner.disabled if self.runner is not None else None

    def close(self) -> None:
        """Release the terms (stops the program's worker; also done at garbage collection or interpreter exit)."""
        for term in self.terms:
            term.close()

    # --- the steps -------------------------------------------------------------------------------------------
    def _books_begin(self, i: int) -> None:
        self._shaped_return[i] = self._env_return[i] = 0.0
        self._length[i] = 0

    def reset(self, infos: dict | None = None, obs: Any = None) -> None:
        """Call after `envs.reset()` (which returned `obs`, `infos`): every environment starts a new episode. Steps
        submitted and not flushed are dropped."""
        self._pending, self._booked_episodes = [], []
        for term in self.terms:
            term.reset(obs, infos)
        for i in range(self.num_envs):
            self._books_begin(i)
        self._autoreset = [False] * self.num_envs

    def step(self, reward: np.ndarray, terminations: np.ndarray, truncations: np.ndarray,
             infos: dict | None = None, extra: np.ndarray | None = None, obs: Any = None) -> np.ndarray:
        """Shaped rewards for one vector step: the environment's reward + the terms [+ `extra`, added outside
        autoreset steps]. `obs`, the step's observations, is needed only by views built from them (the generic
        family's `obs` view). Waits for the terms."""
        if self._pending:
            raise UsageError("RewardHook.step after submit: call flush() for the submitted steps first")
        if not self.terms and extra is None:
            return self._step_sparse(reward, terminations, truncations, infos)
        return self._book(self._send(reward, terminations, truncations, infos, obs, extra))

    def submit(self, reward: np.ndarray, terminations: np.ndarray, truncations: np.ndarray,
               infos: dict | None = None, obs: Any = None) -> None:
        """`step`, queued: send this vector step to the terms and return at once. The program's checks run in
        its worker while the rollout goes on; `flush()` returns the shaped rewards of every step submitted since
        the last flush and books their episodes. Rewards, bonuses, episodes and logs are exactly those of `step`.
        A term that ends episodes (the CLIP term with `end_episode`) does it here, in `terminations`."""
        if not self.terms:  # nothing to wait for: booked now, returned at flush
            self._pending.append(self._step_sparse(reward, terminations, truncations, infos))
            self._booked_episodes += self.episodes
            return
        self._pending.append(self._send(reward, terminations, truncations, infos, obs, None))

    def flush(self) -> np.ndarray | None:
        """The shaped rewards of the steps `submit` queued, (steps, num_envs) float32, in order (None if there are
        none); waits for the terms, then books each step's episodes and logs (`flushed_episodes`: the episodes that
        ended in these steps)."""
        pending, self._pending = self._pending, []
        self.flushed_episodes, self._booked_episodes = self._booked_episodes, []
        if not pending:
            return None
        out = []
        for s in pending:
            if isinstance(s, np.ndarray):  # booked by `submit` (no terms): its episodes are already counted
                out.append(s)
            else:
                out.append(self._book(s))
                self.flushed_episodes += self.episodes
        return np.stack(out)

    def _send(self, reward, terminations, truncations, infos, obs, extra) -> VectorStep:
        step = VectorStep(np.asarray(reward, dtype=np.float64).tolist(), terminations, truncations, infos, obs,
                          self._autoreset, extra)
        for term in self.terms:
            term.send(step)
        # an env whose episode ends here is reset on its next step (read after the terms: a term may end episodes)
        self._autoreset = np.logical_or(terminations, truncations).tolist()
        return step

    def _book(self, step: VectorStep) -> np.ndarray:
        """Finish a step: collect the terms, book the episodes, log."""
        # per-env work is plain Python on lists: numpy scalar access would cost more than the terms themselves
        self.global_step += self.num_envs
        rewards, autoreset = step.reward, step.autoreset
        terminated = np.asarray(step.terminations).tolist()  # read after the terms' send: a term may end episodes
        done = np.logical_or(step.terminations, step.truncations).tolist()
        bonus = [0.0] * self.num_envs if step.extra is None else np.asarray(step.extra, dtype=np.float64).tolist()
        for term in self.terms:
            for i, v in enumerate(term.collect(step)):
                bonus[i] += v
        paid = [0.0] * self.num_envs if self._replace_env_reward else rewards
        self.episodes = []
        for i in range(self.num_envs):
            if autoreset[i]:  # the reset step of next-step autoreset: nothing is paid, the books start over
                self._books_begin(i)
                bonus[i] = 0.0
                continue
            self._length[i] += 1
            self._env_return[i] += rewards[i]
            self._shaped_return[i] += paid[i] + bonus[i]
            if done[i]:
                fields = {"subtasks_completed": 0, "task_completed": False}
                for term in self.terms:
                    fields.update(term.episode_fields(i))
                self.episodes.append(EpisodeRecord(
                    i, fields["subtasks_completed"], fields["task_completed"], self._shaped_return[i],
                    self._env_return[i], self._length[i],
                    episode_success(i, rewards[i], terminated[i], step.infos, self.success_rule)))
        self.env_reward, self.bonus = np.array(rewards), np.array(bonus)
        if self.episodes:
            self._record_episodes()
        for term in self.terms:
            term.after_step(self)
        return (np.array(paid) + self.bonus).astype(np.float32)

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
                success = episode_success(i, rewards[i], bool(terminations[i]), infos, self.success_rule)
                self.episodes.append(EpisodeRecord(int(i), 0, False, float(self._env_return[i]),
                                                   float(self._env_return[i]), int(self._length[i]), success))
            if self.episodes:
                self._record_episodes()
        self._autoreset = done
        self.env_reward, self.bonus = rewards, self._zeros
        return rewards.astype(np.float32)

    def _record_episodes(self) -> None:
        self.recent.extend(self.episodes)
        if self.program is not None and not self._fidelity_warned and len(self.recent) >= self.FIDELITY_MIN_EPISODES \
                and self.task_without_success > self.FIDELITY_ALARM:
            self._fidelity_warned = True
            log.warning("fidelity alarm: the reward program completed its last sub-task in %.0f%% of the last %d "
                        "episodes in which the environment reported no success (alarm above %.0f%%). The program "
                        "may be rewarding something other than the task (reward hacking, a false positive); check "
                        "it with `python -m cleanrl_vlmcar verify`.", 100 * self.task_without_success,
                        len(self.recent), 100 * self.FIDELITY_ALARM)
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
        if self.program_term is not None:
            self.program_term.log_rates(self.writer, step, self)

    def status(self) -> str:
        """One console line: success rate, mean episodic (environment) return and sub-task rates over the last
        `window` episodes."""
        if not self.recent:
            return f"global_step={self.global_step} (no finished episode yet)"
        ret = sum(e.env_return for e in self.recent) / len(self.recent)
        line = f"global_step={self.global_step} success_rate={self.success_rate:.2f} episodic_return={ret:.3f}"
        if self.num_subtasks:
            rates = "/".join(f"{sum(e.subtasks_completed > k for e in self.recent) / len(self.recent):.2f}"
                             for k in range(self.num_subtasks))
            line += f" subtask_rates={rates}"
        return line + "".join(term.status() for term in self.terms)

    @property
    def success_rate(self) -> float:
        """Environment success over the last `window` finished episodes."""
        return sum(e.success for e in self.recent) / len(self.recent) if self.recent else 0.0

    @property
    def task_without_success(self) -> float:
        """Fraction of the last `window` episodes in which the program completed the task and the environment
        reported no success."""
        return sum(e.task_completed and not e.success for e in self.recent) / len(self.recent) if self.recent else 0.0


def episode_success(i: int, reward: float, terminated: bool, infos: dict | None, rule=env_success) -> bool:
    """The environment's own success for env `i` of a vector env at the end of an episode, by its family's `rule`
    (`rule(reward, terminated, info)`; see cleanrl_vlmcar.families)."""
    info = {}
    if infos and "is_success" in infos:
        mask = infos.get("_is_success")
        if mask is None or mask[i]:
            info["is_success"] = infos["is_success"][i]
    return bool(rule(reward, terminated, info))


def env_slice(obs: Any, infos: dict | None, i: int) -> tuple[Any, dict]:
    """Env `i`'s observation and info out of a vector env's batched ones (info entries without their `_key`
    masks, entries present for env `i` only)."""
    if isinstance(obs, dict):
        o = {k: v[i] for k, v in obs.items()}
    else:
        o = None if obs is None else obs[i]
    info = {}
    for key, value in (infos or {}).items():
        if key.startswith("_") or key == VIEW_INFO_KEY or isinstance(value, dict):
            continue
        mask = infos.get("_" + key)
        if mask is None or mask[i]:
            info[key] = value[i]
    return o, info


class VLMCaRRewardWrapper(gym.Wrapper):
    """The reward hook as a plain gymnasium wrapper around one environment, for other RL libraries
    (Stable-Baselines3, custom loops). `info["vlmcar"]` carries the env reward, bonus and sub-task progress. The
    program runs in its own confined worker (`ProgramRunner`); `close()` stops it."""

    def __init__(self, env: gym.Env, program: RewardProgram, view: str = "state", bonus: float = 1.0,
                 shaping: str = "bonus", gamma: float = 0.99, use_progress: bool = False,
                 deadline_s: float | None = None, require_confinement: bool = False):
        super().__init__(env)
        check_shaping(shaping, use_progress, program)
        self.program, self.view = program, view
        self.adapter = make_view(env, view)
        self.runner = ProgramRunner(program, 1, use_progress, deadline_s, require_confinement)
        self.progress = EpisodeProgress(program.num_subtasks, bonus, shaping, gamma, use_progress)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        answer = self.runner.step([(0, -1, self.adapter.reset(obs, info))])
        self.progress.begin(answer[1][0] if answer is not None else 0.0)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        answer = self.runner.step([(0, None, self.adapter.step(obs, info))])  # the worker keeps k
        k, new_k, bonus = self.progress.step(int(answer[0][0]), answer[1][0], bool(terminated)) \
            if answer is not None else self.progress.hold()
        info = dict(info)
        info["vlmcar"] = {"env_reward": float(reward), "bonus": float(bonus), "subtasks_completed": new_k,
                          "newly_completed": list(range(k + 1, new_k + 1)),
                          "task_completed": new_k == self.program.num_subtasks}
        return obs, float(reward) + bonus, terminated, truncated, info

    def close(self):
        self.runner.close()
        super().close()
