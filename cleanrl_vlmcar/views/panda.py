"""panda-gym views: named state arrays (`state`) and a small rendered frame (`pixels`)."""

from __future__ import annotations

import numpy as np

from . import Field, ViewAdapter, ViewError, ViewSpec

#: tasks whose observation layout this adapter knows (class names of panda_gym.envs.tasks)
SUPPORTED_TASKS = ("Reach", "Push", "Slide", "PickAndPlace")
#: size of the `pixels` view
PIXELS_WIDTH, PIXELS_HEIGHT = 128, 128


def _camera_doc() -> str:
    from .panda_camera import doc_text

    return doc_text()


def _constants() -> dict:
    return {"DISTANCE_THRESHOLD": 0.05, "TABLE_HEIGHT": 0.0, "OBJECT_SIZE": 0.04,
            "PIXELS_WIDTH": PIXELS_WIDTH, "PIXELS_HEIGHT": PIXELS_HEIGHT}


class PandaStateView(ViewAdapter):
    """Reads the robot's and the task's observation arrays and names their parts."""

    def __init__(self, env):
        super().__init__(env)
        task = type(self.unwrapped.task).__name__
        if task not in SUPPORTED_TASKS:
            raise ViewError(f"the panda-gym state view knows the tasks {', '.join(SUPPORTED_TASKS)}, not {task}")
        self.has_object = task != "Reach"
        self.has_fingers = not self.unwrapped.robot.block_gripper

    def _view(self, obs=None, info=None) -> dict:
        u = self.unwrapped
        robot = u.robot.get_obs()
        view = {"ee_pos": robot[0:3].astype(np.float64), "ee_vel": robot[3:6].astype(np.float64),
                "goal_pos": np.array(u.task.get_goal(), dtype=np.float64),
                "achieved_goal": np.array(u.task.get_achieved_goal(), dtype=np.float64)}
        if self.has_fingers:
            view["fingers_width"] = float(robot[6])
        if self.has_object:
            task = np.asarray(u.task.get_obs(), dtype=np.float64)
            view["object_pos"], view["object_rot"] = task[0:3], task[3:6]
            view["object_velp"], view["object_velr"] = task[6:9], task[9:12]
        return view

    reset = step = _view


class PandaPixelsView(ViewAdapter):
    """A small frame from the environment's own camera (the env must be made with render_mode='rgb_array')."""

    def __init__(self, env):
        super().__init__(env)
        if getattr(self.unwrapped, "render_mode", None) != "rgb_array":
            raise ViewError("the panda-gym pixels view renders frames: create the env with "
                            "gym.make(env_id, render_mode='rgb_array')")

    def _view(self, obs=None, info=None) -> dict:
        u = self.unwrapped
        rgb = u.sim.render(width=PIXELS_WIDTH, height=PIXELS_HEIGHT, target_position=u.render_target_position,
                           distance=u.render_distance, yaw=u.render_yaw, pitch=u.render_pitch, roll=u.render_roll)
        return {"rgb": np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)}

    reset = step = _view


STATE = ViewSpec(
    family="panda",
    view="state",
    summary="Named arrays from panda-gym's simulator (tasks: " + ", ".join(SUPPORTED_TASKS) + "). Units: metres, "
            "metres per second, radians; world frame, z up, the table top at z = 0.",
    fields=(
        Field("ee_pos", "np.ndarray (3,) float", "end-effector (gripper centre) position"),
        Field("ee_vel", "np.ndarray (3,) float", "end-effector velocity"),
        Field("fingers_width", "float", "distance between the fingers (0 closed, about 0.08 open); only where the "
              "gripper is not blocked (PickAndPlace)"),
        Field("object_pos", "np.ndarray (3,) float", "object (cube or puck) centre; Push, Slide, PickAndPlace only"),
        Field("object_rot", "np.ndarray (3,) float", "object orientation as Euler angles"),
        Field("object_velp", "np.ndarray (3,) float", "object linear velocity"),
        Field("object_velr", "np.ndarray (3,) float", "object angular velocity"),
        Field("goal_pos", "np.ndarray (3,) float", "the desired goal (target position of the object, or of the "
              "end-effector in Reach)"),
        Field("achieved_goal", "np.ndarray (3,) float", "the position the goal is measured on (object, or end-effector "
              "in Reach)"),
    ),
    constants_doc="Constants in the program's namespace: `DISTANCE_THRESHOLD` = 0.05 (panda-gym's success radius, "
                  "metres), `TABLE_HEIGHT` = 0.0, `OBJECT_SIZE` = 0.04 (cube edge; an object resting on the table "
                  "has its centre at z = 0.02).",
    make=PandaStateView,
    constants=_constants,
)

PIXELS = ViewSpec(
    family="panda",
    view="pixels",
    summary=f"A {PIXELS_WIDTH}x{PIXELS_HEIGHT} RGB frame from the environment's default camera (the one panda-gym's "
            "`render()` uses), looking down at the table from the front right.",
    fields=(Field("rgb", f"np.ndarray ({PIXELS_HEIGHT}, {PIXELS_WIDTH}, 3) uint8", "the frame, indexed "
                  "`rgb[row, column]`; row 0 is the top"),),
    constants_doc="Constants in the program's namespace: `PIXELS_WIDTH`, `PIXELS_HEIGHT`, `DISTANCE_THRESHOLD` "
                  "(0.05 m), `OBJECT_SIZE` (0.04 m).",
    make=PandaPixelsView,
    constants=_constants,
    notes=_camera_doc(),
)
