"""The MiniGrid family: `state` and `pixels` views, the planning expert, the mission as task text."""

from __future__ import annotations

import minigrid  # noqa: F401 - registers the MiniGrid and BabyAI ids
from minigrid.minigrid_env import MiniGridEnv

from ..errors import UnsupportedEnvError
from ..views.minigrid import PIXELS, STATE
from . import ClipDefaults, Family, register

TASK_NOTE = (
    "This is the mission of this episode. Other episodes have other layouts, colours and objects: read the "
    "mission from `obs[\"mission\"]` and positions from the observation rather than hard-coding them."
)


def _claims_id(env_id: str) -> bool:
    """MiniGrid-* and BabyAI-* ids (e.g. MiniGrid-KeyCorridorS3R1-v0)"""
    return env_id.startswith(("MiniGrid-", "BabyAI-"))


def _task(env) -> tuple[str, str]:
    return env.unwrapped.mission, TASK_NOTE


def _expert(env):
    from ..experts.minigrid import MiniGridExpert, supports

    if not supports(env):
        from . import _no_expert_message

        raise UnsupportedEnvError(_no_expert_message(env))
    return MiniGridExpert(env)


def _expert_env_ids() -> list[str]:
    import gymnasium as gym

    from ..experts.minigrid import SUPPORTED_FAMILIES

    ids = []
    for env_id, spec in sorted(gym.registry.items()):
        entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
        if not (_claims_id(env_id) and entry):
            continue
        module, _, name = entry.partition(":")
        try:
            cls = getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            continue
        if any(c.__name__ in SUPPORTED_FAMILIES for c in cls.__mro__):
            ids.append(env_id)
    return ids


def _frame(env):
    return env.unwrapped.get_frame(highlight=False, tile_size=32)  # the full grid, no field-of-view highlight


MINIGRID = register(Family(
    name="minigrid",
    shipped=True,
    claims=lambda unwrapped: isinstance(unwrapped, MiniGridEnv),
    claims_id=_claims_id,
    env_modules=("minigrid",),
    views={"state": STATE, "pixels": PIXELS},
    expert=_expert,
    expert_env_ids=_expert_env_ids,
    task=_task,
    frame=_frame,
    mission=lambda env, view: view.get("mission") or env.unwrapped.mission,
    clip=ClipDefaults(),  # ClipRewardConfig's own defaults are the grid-world ones
))
