"""Trajectories for verification: sources (random, expert, noisy expert, demos, policy) and an .npz store.

An episode is stored as one compressed `.npz` file under
`{cache_dir}/{env_id}/{view}/{policy}/seed{seed}.npz`, so verifying a new program never re-simulates. Views are
dicts; each key is stored as one stacked array (JSON metadata says how to rebuild it), loaded with
`allow_pickle=False`.

Demonstrations (`demos` source) are an `.npz` file with `seeds` (N,) int, `lengths` (N,) int and `actions`
(N, T_max, ...) : each episode is replayed from its seed, so the views are recomputed exactly.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import gymnasium as gym
import numpy as np

from . import families
from .families import family_of
from .views import make_view

DEFAULT_CACHE = Path(os.environ.get("VLMCAR_CACHE", ".vlmcar"))
FORMAT_VERSION = 1


@dataclass
class Trajectory:
    """One episode: views (views[0] after reset, views[t] after step t), actions, env rewards and success."""

    env_id: str
    policy: str
    seed: int
    views: dict[str, list[dict]]
    actions: np.ndarray
    rewards: np.ndarray
    success: bool
    frames: list[np.ndarray] = field(default_factory=list)  # first and last full frames (for prompts), if asked

    @property
    def length(self) -> int:
        return len(self.actions)


# ----------------------------------------------------------------------------------------------------------
# Policies
# ----------------------------------------------------------------------------------------------------------
class RandomPolicy:
    """Uniform random actions from the env's action space (seeded)."""

    def __init__(self, env: gym.Env, seed: int = 0):
        self.space = env.action_space

    def reset(self, env, obs, seed: int = 0) -> None:
        self.space.seed(seed)

    def act(self, env, obs):
        return self.space.sample()


def make_expert(env: gym.Env):
    """The scripted expert of this env's family, or UnsupportedEnvError saying which envs have one and how to
    record demonstrations instead."""
    return family_of(env).make_expert(env)


class ExpertPolicy:
    """The scripted expert, optionally with a fraction `noise` of its actions replaced by random ones
    (VLM-CaR's novice p = 0.5 and sub-optimal p = 0.3 policies)."""

    def __init__(self, env: gym.Env, noise: float = 0.0):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.expert = make_expert(env)
        self.noise = noise
        self.space = env.action_space
        self.rng = np.random.default_rng(0)

    def reset(self, env, obs, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed + 1_000_003)
        self.space.seed(seed + 7)
        self.expert.reset(env, obs)

    def act(self, env, obs):
        action = self.expert.act(env, obs)  # always asked, so a replanning expert keeps its state
        if self.noise and self.rng.random() < self.noise:
            return self.space.sample()
        return action


class CheckpointPolicy:
    """A policy saved by the training scripts with --save-model: `runs/{run_name}/policy.pt`, a TorchScript
    module mapping the policy's observation to action logits (ppo_vlmcar.py, greedy) or to an action
    (sac_vlmcar.py). Observations are prepared as the scripts prepare them."""

    def __init__(self, env: gym.Env, path: str | os.PathLike):
        import torch

        path = Path(path)
        if path.is_dir():
            path = path / "policy.pt"
        if not path.exists():
            raise ValueError(f"no policy checkpoint at {path}: train with --save-model, then pass "
                             "policy:runs/RUN_NAME/policy.pt")
        try:
            self.module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot load policy checkpoint {path}: {type(e).__name__}: {e}") from None
        self.torch = torch
        self.discrete = isinstance(env.action_space, gym.spaces.Discrete)

    def reset(self, env, obs, seed: int = 0) -> None:
        pass

    def _prepare(self, obs) -> np.ndarray:
        if isinstance(obs, dict) and "image" in obs:  # MiniGrid: the agent's own symbolic view
            return np.asarray(obs["image"], dtype=np.float32)
        if isinstance(obs, dict):  # goal-conditioned (panda-gym): observation and desired goal
            return np.concatenate([np.ravel(obs["observation"]), np.ravel(obs["desired_goal"])]).astype(np.float32)
        return np.asarray(obs, dtype=np.float32)

    def act(self, env, obs):
        with self.torch.no_grad():
            out = self.module(self.torch.as_tensor(self._prepare(obs))[None]).numpy()[0]
        return int(np.argmax(out)) if self.discrete else out.astype(np.float32)


def parse_policy(name: str) -> tuple[str, float]:
    """'random', 'expert', 'noisy0.3' -> (kind, noise); 'policy:PATH' -> ('policy', 0.0)."""
    if name in ("random", "expert"):
        return name, 0.0
    if name.startswith("policy:") and len(name) > len("policy:"):
        return "policy", 0.0
    m = re.fullmatch(r"noisy(0(\.\d+)?|1(\.0+)?)", name)
    if m:
        return "expert", float(m.group(1))
    raise ValueError(f"unknown policy {name!r}: use random, expert, noisyP with P in [0, 1] (e.g. noisy0.3), or "
                     "policy:PATH to a policy.pt saved with --save-model")


def make_policy(name: str, env: gym.Env):
    kind, noise = parse_policy(name)
    if kind == "policy":
        return CheckpointPolicy(env, name[len("policy:"):])
    return RandomPolicy(env) if kind == "random" else ExpertPolicy(env, noise)


@functools.lru_cache(maxsize=64)
def policy_key(name: str) -> str:
    """A folder name for a policy in the store (checkpoints are keyed by a hash of their file)."""
    if not name.startswith("policy:"):
        return name
    import hashlib

    path = Path(name[len("policy:"):])
    path = path / "policy.pt" if path.is_dir() else path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "missing"
    return f"policy-{digest}"


# ----------------------------------------------------------------------------------------------------------
# Rollouts
# ----------------------------------------------------------------------------------------------------------
def rollout(env: gym.Env, policy, seed: int, views: Iterable[str], stop_on_success: bool,
            actions: np.ndarray | None = None, frames: bool = False) -> Trajectory:
    """Run one episode from `seed` with `policy` (or replay `actions`), recording views."""
    adapters = {v: make_view(env, v) for v in views}
    family = family_of(env)
    obs, info = env.reset(seed=seed)
    if policy is not None:
        policy.reset(env, obs, seed)
    recorded = {v: [a.reset(obs, info)] for v, a in adapters.items()}
    first = family.frame(env) if frames else None
    acts, rews, success = [], [], False
    t = 0
    while True:
        if actions is not None:
            if t >= len(actions):
                break
            action = actions[t]
        else:
            action = policy.act(env, obs)
        obs, reward, terminated, truncated, info = env.step(action)
        t += 1
        acts.append(np.asarray(action))
        rews.append(float(reward))
        for v, a in adapters.items():
            recorded[v].append(a.step(obs, info))
        success = success or family.success(reward, terminated, info)
        if terminated or truncated or (stop_on_success and success):
            break
    last = family.frame(env) if frames else None
    return Trajectory(env.spec.id if env.spec else "", "", seed, recorded, np.array(acts), np.array(rews, dtype=np.float32),
                      success, [f for f in (first, last) if f is not None])


# ----------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------
def _encode_views(views: list[dict], prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """Stack each key of a list of view dicts into one array; return how to decode them."""
    schema = {}
    for key in views[0]:
        values = [v[key] for v in views]
        name = f"{prefix}{key}"
        if all(isinstance(x, str) for x in values):
            schema[key] = "str"
            arrays[name] = np.array(values)
        elif all(isinstance(x, dict) for x in values):  # small dicts of numbers (the generic view's `info`)
            schema[key] = "json"
            arrays[name] = np.array([json.dumps(x, sort_keys=True) for x in values])
        elif all(x is None or isinstance(x, tuple) for x in values):
            width = max((len(x) for x in values if x is not None), default=0)
            schema[key] = f"opt_tuple:{width}"
            arr = np.full((len(values), width), -1, dtype=np.int64)
            mask = np.zeros(len(values), dtype=bool)
            for i, x in enumerate(values):
                if x is not None:
                    arr[i], mask[i] = x, True
            arrays[name], arrays[name + "__mask"] = arr, mask
        elif all(isinstance(x, (bool, int, np.integer)) for x in values):
            schema[key] = "int"
            arrays[name] = np.array(values, dtype=np.int64)
        elif all(isinstance(x, (float, np.floating)) for x in values):
            schema[key] = "float"
            arrays[name] = np.array(values, dtype=np.float64)
        else:
            schema[key] = "array"
            arrays[name] = np.stack([np.asarray(x) for x in values])
    return schema


def _decode_views(schema: dict, prefix: str, data) -> list[dict]:
    columns = {}
    for key, kind in schema.items():
        arr = data[f"{prefix}{key}"]
        if kind == "str":
            columns[key] = [str(x) for x in arr]
        elif kind == "json":
            columns[key] = [json.loads(str(x)) for x in arr]
        elif kind.startswith("opt_tuple"):
            mask = data[f"{prefix}{key}__mask"]
            columns[key] = [tuple(int(v) for v in row) if m else None for row, m in zip(arr, mask)]
        elif kind == "int":
            columns[key] = [int(x) for x in arr]
        elif kind == "float":
            columns[key] = [float(x) for x in arr]
        else:
            columns[key] = list(arr)
    n = len(next(iter(columns.values())))
    return [{key: columns[key][i] for key in schema} for i in range(n)]


class TrajectoryStore:
    """Episodes as compressed .npz files keyed by env id, view, policy and seed."""

    def __init__(self, root: str | os.PathLike = DEFAULT_CACHE / "trajectories"):
        self.root = Path(root)

    def path(self, env_id: str, view: str, policy: str, seed: int) -> Path:
        return self.root / env_id / view / policy_key(policy) / f"seed{seed}.npz"

    def save(self, traj: Trajectory, view: str) -> Path:
        path = self.path(traj.env_id, view, traj.policy, traj.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        schema = _encode_views(traj.views[view], "view_", arrays)
        for i, f in enumerate(traj.frames):
            arrays[f"frame_{i}"] = f
        meta = {"version": FORMAT_VERSION, "env_id": traj.env_id, "policy": traj.policy, "seed": traj.seed,
                "view": view, "success": traj.success, "schema": schema, "frames": len(traj.frames)}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), actions=traj.actions, rewards=traj.rewards, **arrays)
        os.replace(tmp, path)
        return path

    def load(self, env_id: str, view: str, policy: str, seed: int) -> Trajectory | None:
        path = self.path(env_id, view, policy, seed)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("version") != FORMAT_VERSION:
                    return None
                views = _decode_views(meta["schema"], "view_", data)
                frames = [data[f"frame_{i}"] for i in range(meta["frames"])]
                return Trajectory(meta["env_id"], meta["policy"], int(meta["seed"]), {view: views}, data["actions"],
                                  data["rewards"], bool(meta["success"]), frames)
        except Exception as e:  # noqa: BLE001 - a broken cache file is re-simulated, never trusted
            import warnings
            warnings.warn(f"ignoring unreadable trajectory file {path} ({type(e).__name__}: {e}); re-simulating")
            return None


def make_env(env_id: str) -> gym.Env:
    """Create an env by id, importing the package that registers it (see families.make_env)."""
    return families.make_env(env_id)


def collect(env_id: str, view: str, policy: str, n: int, seed: int = 0, store: TrajectoryStore | None = None,
            successful_only: bool = False, max_attempts: int | None = None, frames: bool = False,
            progress: bool = True, env: gym.Env | None = None) -> tuple[list[Trajectory], int]:
    """`n` episodes of `policy` from seeds seed, seed+1, ... (loaded from the store when present).

    With `successful_only`, unsuccessful episodes are dropped and further seeds tried (up to `max_attempts`);
    returns the trajectories and the number dropped.
    """
    from tqdm.auto import tqdm

    env = env or make_env(env_id)
    pol = None
    trajs: list[Trajectory] = []
    dropped = 0
    max_attempts = max_attempts or (3 * n + 10)
    bar = tqdm(total=n, desc=f"{policy} trajectories ({env_id}, {view})", disable=not progress, leave=False,
               mininterval=1.0)
    s = seed
    while len(trajs) < n and s < seed + max_attempts:
        traj = store.load(env_id, view, policy, s) if store else None
        if traj is not None and frames and not traj.frames:
            traj = None
        if traj is None:
            if pol is None:
                pol = make_policy(policy, env)
            traj = rollout(env, pol, s, [view], stop_on_success=policy != "random", frames=frames)
            traj.env_id, traj.policy = env_id, policy
            if store:
                store.save(traj, view)
        s += 1
        if successful_only and not traj.success:
            dropped += 1
            continue
        trajs.append(traj)
        bar.update(1)
    bar.close()
    return trajs, dropped


def load_demos(path: str | os.PathLike, env_id: str, view: str, env: gym.Env | None = None) -> list[Trajectory]:
    """Replay a user's demonstrations (.npz with seeds, lengths, actions) to recompute their views."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            seeds, lengths, actions = data["seeds"], data["lengths"], data["actions"]
    except FileNotFoundError:
        raise ValueError(f"demonstrations file {path} does not exist") from None
    except KeyError as e:
        raise ValueError(f"demonstrations file {path} lacks the array {e}: it needs seeds (N,), lengths (N,) and "
                         "actions (N, T_max, ...)") from None
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read demonstrations file {path}: {type(e).__name__}: {e}") from None
    if not (len(seeds) == len(lengths) == len(actions)):
        raise ValueError(f"demonstrations file {path}: seeds, lengths and actions must have the same first dimension")
    env = env or make_env(env_id)
    out = []
    for s, n, acts in zip(seeds, lengths, actions):
        traj = rollout(env, None, int(s), [view], stop_on_success=False, actions=acts[: int(n)])
        traj.env_id, traj.policy = env_id, "demos"
        out.append(traj)
    return out
