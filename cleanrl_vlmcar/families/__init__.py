"""Environment families: all the package knows about one kind of environment, registered once.

A family says which environments it claims and which packages register their ids, and holds its views (what
reward programs read), its scripted expert if it has one, the task text the VLM reads, the episode-success
rule, how to render a full frame for the prompt, and the CLIP reward's defaults. Nothing else in the package
branches on a family: it asks `family_of(env)` and uses the answer.

Shipped: `minigrid`, `panda` (panda-gym) and `generic`, which claims every environment no other family claims
(a `pixels` view from `render()` and an `obs` view of the environment's own observation and `info`; experts
from demonstrations or a saved policy). A new family is one module that builds a `Family` and calls
`register(...)`; pass its import path in `VLMCAR_FAMILIES` (comma-separated) or import it before use.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from ..errors import NoExpertError, UnsupportedEnvError

#: the shipped families, tried in this order (generic last: it claims everything)
_SHIPPED = ("cleanrl_vlmcar.families.generic", "cleanrl_vlmcar.families.minigrid", "cleanrl_vlmcar.families.panda")


@dataclass(frozen=True)
class ClipDefaults:
    """What the CLIP reward uses for a family when the flags leave it unset (see clip_reward.ClipRewardConfig)."""

    goal_template: str | None = None
    negatives: tuple[str, ...] | None = None
    baseline: str | None = None


def env_success(reward: float, terminated: bool, info: Mapping) -> bool:
    """The common success rule: `info["is_success"]` where the env reports it (panda-gym, gymnasium-robotics),
    else termination with a positive reward (MiniGrid: the reward is positive only when the mission is done)."""
    if "is_success" in info:
        return bool(info["is_success"])
    return bool(terminated and reward > 0)


def full_frame(env: gym.Env) -> np.ndarray | None:
    """`env.render()` as an RGB uint8 array, or None when the env does not render."""
    try:
        frame = env.render()
    except Exception:  # noqa: BLE001 - frames are optional (prompts only)
        return None
    if frame is None:
        return None
    frame = np.asarray(frame)
    return frame[..., :3].astype(np.uint8) if frame.ndim == 3 else None


@dataclass(frozen=True)
class Family:
    """Everything the package knows about one kind of environment.

    `claims(unwrapped_env)` says whether an environment belongs to the family; `claims_id(env_id)` whether an id
    does before the env exists (so `env_modules`, the packages that register the family's ids, are imported
    first). `views` maps view names to ViewSpecs. `expert(env)` returns a scripted expert (an object with
    `reset(env, obs)` and `act(env, obs)`) or raises; `expert_env_ids()` lists the registered ids it can solve.
    `views_for(env)`, when set, builds the views per environment (the generic family documents them from the
    observation space). `task(env)` is the task text and a note on how it varies, after `env.reset()`. `success(reward, terminated,
    info)` is the environment's own success at the end of an episode. `frame(env)` is a full RGB frame for the
    prompt. `mission(env, view)` is the goal text of the current episode for CLIP.
    """

    name: str
    claims: Callable[[Any], bool]
    views: Mapping[str, Any]
    claims_id: Callable[[str], bool] = lambda env_id: False
    env_modules: tuple[str, ...] = ()
    expert: Callable[[gym.Env], Any] | None = None
    expert_env_ids: Callable[[], list[str]] = lambda: []
    task: Callable[[gym.Env], tuple[str, str]] = lambda env: (_env_id(env), "")
    success: Callable[[float, bool, Mapping], bool] = env_success
    frame: Callable[[gym.Env], np.ndarray | None] = full_frame
    mission: Callable[[gym.Env, Mapping], str] = lambda env, view: view.get("mission") or _env_id(env)
    clip: ClipDefaults = field(default_factory=ClipDefaults)
    render_mode: str | None = None  # what gym.make needs for `frame` and pixel views (None: the env's default)
    views_for: Callable[[gym.Env], Mapping[str, Any]] | None = None  # views built per environment (generic)
    shipped: bool = False  # a family of this package (user families are tried before these)

    def specs(self, env: gym.Env) -> Mapping[str, Any]:
        """This family's views of `env` by name."""
        return self.views_for(env) if self.views_for is not None else self.views

    def make_expert(self, env: gym.Env):
        if self.expert is None:
            raise NoExpertError(_no_expert_message(env))
        return self.expert(env)


_REGISTRY: dict[str, Family] = {}
_loaded = False


def register(family: Family) -> Family:
    """Register (or replace) a family. Families registered by users are tried before the shipped ones (so they can
    claim an environment a shipped family would), the generic family last."""
    _REGISTRY.pop(family.name, None)
    _REGISTRY[family.name] = family
    return family


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _SHIPPED:
        importlib.import_module(module)
    extra = [m.strip() for m in os.environ.get("VLMCAR_FAMILIES", "").split(",") if m.strip()]
    for module in extra:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UnsupportedEnvError(f"cannot import the family module {module!r} named in VLMCAR_FAMILIES: {e}") \
                from None


def families() -> list[Family]:
    """Every registered family, in the order they are tried (the generic family last)."""
    _load()
    users = [f for f in reversed(_REGISTRY.values()) if not f.shipped]
    shipped = sorted((f for f in _REGISTRY.values() if f.shipped and f.name != "generic"), key=lambda f: f.name)
    return users + shipped + [_REGISTRY["generic"]]


def family_of(env: gym.Env) -> Family:
    """The family that claims this environment (the generic family when no other does)."""
    unwrapped = env.unwrapped
    for family in families():
        if family.claims(unwrapped):
            return family
    raise AssertionError("the generic family claims every environment")


def family_for_id(env_id: str) -> Family:
    """The family of an env id, without making the env: the first family whose `claims_id` says so, else generic."""
    fams = families()
    return next((f for f in fams if f.claims_id(env_id)), fams[-1])


def get_family(name: str) -> Family:
    for family in families():
        if family.name == name:
            return family
    raise UnsupportedEnvError(f"no environment family {name!r}; registered: "
                              + ", ".join(f.name for f in families()))


def import_env_modules(env_id: str) -> None:
    """Import the packages that register `env_id` (every family whose `claims_id` says so)."""
    for family in families():
        if family.claims_id(env_id):
            for module in family.env_modules:
                importlib.import_module(module)


def has_scripted_expert(env_id: str) -> bool:
    """Whether a family has a scripted expert for `env_id` (its package imported first: ids register on import)."""
    try:
        import_env_modules(env_id)
    except ImportError:
        return False
    return env_id in family_for_id(env_id).expert_env_ids()


def make_env(env_id: str, **kwargs) -> gym.Env:
    """`gym.make(env_id)` after importing the packages that register it (`module:EnvId` imports `module`, as in
    gymnasium). Environments of the generic family are made with `render_mode="rgb_array"` where they support it
    (frames for the prompt and the `pixels` view). UnsupportedEnvError for an unknown id."""
    import_env_modules(env_id)
    if "render_mode" not in kwargs and not any(f.claims_id(env_id) for f in families()):
        kwargs["render_mode"] = "rgb_array"
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        hints = "; ".join(f"{f.name}: {f.claims_id.__doc__.strip()}" for f in families() if f.claims_id.__doc__)
        raise UnsupportedEnvError(f"cannot make environment {env_id!r} ({e}). Ids this package imports itself: "
                                  f"{hints}. For another package's environment, pass MODULE:ENV_ID so gymnasium "
                                  "imports the module that registers it.") from None


def _env_id(env: gym.Env) -> str:
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _no_expert_message(env: gym.Env) -> str:
    known = []
    for f in families():
        for module in f.env_modules:  # a family's ids are registered only once its package is imported
            try:
                importlib.import_module(module)
            except ImportError:
                pass
        ids = sorted(f.expert_env_ids())
        if ids:
            known.append(f"{f.name}: {', '.join(ids)}")
    return (f"no scripted expert for {_env_id(env)}. Scripted experts exist for {'; '.join(known)}. "
            "Record demonstrations "
            "instead (python -m cleanrl_vlmcar record-demos --env-id ENV --keyboard|--policy PATH|--actions "
            "FILE.json --out demos.npz) and pass --expert-source demos --demos demos.npz.")
