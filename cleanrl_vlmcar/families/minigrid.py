"""The MiniGrid family: `state` and `pixels` views, the planning expert, the mission as task text."""

from __future__ import annotations

import minigrid  # noqa: F401 - registers the MiniGrid and BabyAI ids
from minigrid.minigrid_env import MiniGridEnv

from ..errors import NoExpertError, UnsupportedEnvError
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

        raise NoExpertError(_no_expert_message(env))
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


# ----------------------------------------------------------------------------------------------------------
# Captions for training CLIP on this family's frames (`python -m cleanrl_vlmcar clip-train`)
# ----------------------------------------------------------------------------------------------------------
def mission_done(env) -> bool | None:
    """Whether the mission is done in the current state, for the mission kinds whose success is a state: pick up an
    object (KeyCorridor, UnlockPickup, BlockedUnlockPickup: the agent carries the env's target `obj`), open the door
    (Unlock: its `door` is open), get to the goal (the agent stands on a goal square); None for any other kind."""
    u = env.unwrapped
    mission = (u.mission or "").lower()
    target = getattr(u, "obj", None)
    if target is not None and mission.startswith("pick up"):
        return u.carrying is target
    door = getattr(u, "door", None)
    if door is not None and mission.startswith("open"):
        return bool(door.is_open)
    if "goal" in mission:
        cell = u.grid.get(*u.agent_pos)
        return cell is not None and cell.type == "goal"
    return None


def caption(env, done: bool | None = None) -> str:
    """A caption of the current state in the family's own words, from the simulator (not the frame): what the agent
    holds, every door's state (open, closed or locked, in grid order), and whether the mission is done, e.g.
    "the agent holds the yellow key; the blue door is closed; the yellow door is locked; the agent has not completed
    the task: pick up the purple ball". The last clause uses the wording of the CLIP reward's goal text ("... where
    the agent has completed the task: {mission}"). `done` is the environment's own success at this frame when the
    caller knows it; by default `mission_done(env)` decides (False for mission kinds it cannot tell)."""
    u = env.unwrapped
    c = u.carrying
    clauses = [f"the agent holds the {c.color} {c.type}" if c is not None else "the agent holds nothing"]
    for obj in u.grid.grid:
        if obj is not None and obj.type == "door":
            state = "open" if obj.is_open else "locked" if obj.is_locked else "closed"
            clauses.append(f"the {obj.color} door is {state}")
    if done is None:
        done = bool(mission_done(env))
    clauses.append(f"the agent has {'' if done else 'not '}completed the task: {u.mission}")
    return "; ".join(clauses)
