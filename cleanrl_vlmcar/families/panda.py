"""The panda-gym family: `state` and `pixels` views, the scripted expert, task texts for Reach, Push, Slide and
PickAndPlace, and goal texts for the CLIP reward."""

from __future__ import annotations

from ..errors import NoExpertError, UnsupportedEnvError
from ..views.panda import PIXELS, STATE
from . import ClipDefaults, Family, register

#: task texts (the envs carry no mission string), by panda_gym task class name
TASKS = {
    "Reach": "move the robot's gripper (end-effector) to the target position, shown as a small translucent green sphere",
    "Push": "push the cube across the table to the target position, shown as a translucent green cube; the gripper "
            "is kept closed, so the cube can only be pushed",
    "Slide": "slide the puck across the table to the target position, shown as a translucent green disc; the puck is "
             "struck or pushed by the gripper and slides on",
    "PickAndPlace": "pick up the cube with the gripper and place it at the target position, shown as a translucent "
                    "green cube, which may be in the air above the table",
}
TASK_NOTE = "Positions are random in every episode: read them from the observation, never hard-code them."


def _claims(unwrapped) -> bool:
    return hasattr(unwrapped, "robot") and hasattr(unwrapped, "task") and hasattr(unwrapped, "sim") \
        and type(unwrapped).__module__.startswith("panda_gym")


def _claims_id(env_id: str) -> bool:
    """Panda* ids (e.g. PandaPush-v3)"""
    return env_id.startswith("Panda")


def task_text(env) -> str:
    name = type(env.unwrapped.task).__name__ if hasattr(env.unwrapped, "task") else ""
    return TASKS.get(name, name or "complete the task")


def _expert(env):
    from ..experts.panda import PandaExpert, supports

    if not supports(env):
        from . import _no_expert_message

        raise NoExpertError(_no_expert_message(env))
    return PandaExpert(env)


def _expert_env_ids() -> list[str]:
    import gymnasium as gym

    return [env_id for env_id in sorted(gym.registry) if env_id.startswith("Panda") and "Joints" not in env_id
            and "Dense" not in env_id and any(t in env_id for t in ("Reach", "Push", "Slide", "PickAndPlace"))]


PANDA = register(Family(
    name="panda",
    shipped=True,
    claims=_claims,
    claims_id=_claims_id,
    env_modules=("panda_gym",),
    views={"state": STATE, "pixels": PIXELS},
    expert=_expert,
    expert_env_ids=_expert_env_ids,
    task=lambda env: (task_text(env), TASK_NOTE),
    mission=lambda env, view: task_text(env),
    clip=ClipDefaults(goal_template="a robot arm on a table that has completed the task: {mission}",
                      negatives=("the robot arm is idle and the object is far from the target",
                                 "the robot arm is moving away from the object", "the object fell off the table"),
                      baseline="a robot arm on a table"),
))
