"""The generic family: any gymnasium environment no other family claims.

Views:
* `obs`: the environment's own observation (`obs["obs"]`; for a Dict observation space one key per entry) and
  `obs["info"]`, the numeric and boolean entries of the step's `info` dict. Documented from the observation space;
  a user's description of what the numbers mean (`--view-doc FILE`) is added to the documentation the VLM reads.
* `pixels`: `obs["rgb"]`, the frame `env.render()` returns (make the env with `render_mode="rgb_array"`).

There is no scripted expert: verify against demonstrations (`record-demos`, `--expert-source demos`) or a saved
policy. Success is `info["is_success"]` where the env reports it, else a termination that is not a time-out
(gymnasium's `terminated`: the task's terminal state was reached, e.g. MountainCar's flag). Where termination
means failure (CartPole), report `is_success` in `info` with a wrapper.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from ..errors import UnsupportedEnvError
from ..views import Field, ViewAdapter, ViewSpec
from . import ClipDefaults, Family, _env_id, register


def success(reward: float, terminated: bool, info: Mapping) -> bool:
    if "is_success" in info:
        return bool(info["is_success"])
    return bool(terminated)


def numeric_info(info: Mapping | None) -> dict:
    """The entries of `info` a program may read: public keys with a real number or bool value."""
    out = {}
    for key, value in (info or {}).items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
            out[key] = int(value) if isinstance(value, (int, np.integer)) else float(value)
    return out


def _obs_entries(obs: Any) -> dict:
    if isinstance(obs, Mapping):
        return {str(k): np.array(v) for k, v in obs.items()}
    return {"obs": np.array(obs) if not isinstance(obs, (int, np.integer)) else int(obs)}


class ObsView(ViewAdapter):
    """The environment's observation and numeric info, as the caller passes them."""

    needs_obs = True

    def reset(self, obs=None, info=None) -> dict:
        return self.step(obs, info)

    def step(self, obs=None, info=None) -> dict:
        if obs is None:
            raise UnsupportedEnvError(f"the generic `obs` view of {_env_id(self.env)} needs the observation: the "
                                      "caller must pass it (RewardHook.step(..., obs=next_obs))")
        view = _obs_entries(obs)
        view["info"] = numeric_info(info)
        return view


class PixelsView(ViewAdapter):
    def reset(self, obs=None, info=None) -> dict:
        return self.step()

    def step(self, obs=None, info=None) -> dict:
        frame = self.env.render()
        if frame is None or np.asarray(frame).ndim != 3:
            raise UnsupportedEnvError(f"{_env_id(self.env)} renders no RGB frame: make it with "
                                      "render_mode='rgb_array' for the `pixels` view")
        return {"rgb": np.ascontiguousarray(np.asarray(frame)[..., :3], dtype=np.uint8)}


def _space_doc(space: gym.Space) -> str:
    if isinstance(space, gym.spaces.Box):
        low, high = np.asarray(space.low).ravel(), np.asarray(space.high).ravel()
        text = f"np.ndarray {tuple(space.shape)} {space.dtype}"
        if low.size <= 16:
            bounds = ", ".join(f"[{lo:.6g}, {hi:.6g}]" for lo, hi in zip(low, high))
            text += f"; bounds per entry: {bounds}"
        return text
    if isinstance(space, gym.spaces.Discrete):
        return f"int in [{space.start}, {space.start + space.n - 1}]"
    if isinstance(space, gym.spaces.MultiDiscrete):
        return f"np.ndarray {tuple(space.shape)} int, entry i in [0, nvec[i]) with nvec = {space.nvec.tolist()}"
    if isinstance(space, gym.spaces.MultiBinary):
        return f"np.ndarray {tuple(space.shape)} of 0/1"
    return f"a value of {type(space).__name__}"


def obs_fields(env: gym.Env) -> tuple[Field, ...]:
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict):
        fields = [Field(str(k), _space_doc(s), f"the observation's `{k}` entry") for k, s in space.spaces.items()]
    else:
        fields = [Field("obs", _space_doc(space), "the environment's own observation after this step (after "
                                                  "reset for `start`)")]
    fields.append(Field("info", "mapping str -> float | int | bool", "the numeric and boolean entries of the "
                        "step's `info` dict (keys starting with `_` left out); may be empty"))
    return tuple(fields)


def specs_for(env: gym.Env) -> dict[str, ViewSpec]:
    """The generic views of one environment, documented from its observation space."""
    env_id = _env_id(env)
    obs = ViewSpec(
        family="generic", view="obs",
        summary=f"The observation of {env_id} as the environment returns it, and the numeric entries of `info`. "
                "What each number means is the environment's documentation (and the user's description below, "
                "when given).",
        fields=obs_fields(env), constants_doc="No constants are provided.", make=ObsView, constants=dict)
    pixels = ViewSpec(
        family="generic", view="pixels",
        summary=f"The frame `env.render()` draws for {env_id}.",
        fields=(Field("rgb", "np.ndarray (H, W, 3) uint8", "the rendered frame, rows top to bottom"),),
        constants_doc="No constants are provided.", make=PixelsView, constants=dict)
    return {"obs": obs, "pixels": pixels}


GENERIC = register(Family(
    name="generic",
    shipped=True,
    claims=lambda unwrapped: True,
    views={},  # built per environment by `specs_for`
    views_for=specs_for,
    success=success,
    task=lambda env: (f"solve {_env_id(env)}: reach the environment's success condition (its own reward "
                      "and termination)", ""),
    clip=ClipDefaults(goal_template="an image of an environment in which the task is completed: {mission}",
                      negatives=("the task has not started", "the agent is far from its goal"),
                      baseline="an image of an environment"),
))
