"""Scripted end-effector controllers for panda-gym (v3) manipulation tasks.

The controllers read only the dict observation (``observation``, ``achieved_goal``,
``desired_goal``) at every step.  The wrapped environment is inspected once, at
construction, to find out which task it is and whether the gripper is blocked
(which changes the observation layout and the action size).

Observation layout (panda-gym 3.0.7, ``control_type="ee"``)::

    [0:3]   end-effector position
    [3:6]   end-effector linear velocity
    [6]     fingers width            (only when the gripper is not blocked)
    then, for tasks with an object (offset ``k`` = 6 or 7):
    [k:k+3]     object position
    [k+3:k+6]   object rotation (euler)
    [k+6:k+9]   object linear velocity
    [k+9:k+12]  object angular velocity

Action: ``a[:3]`` is an end-effector displacement, multiplied by 0.05 m inside the
robot (target = current ee position + 0.05 * a, solved by IK, then tracked by the
joint position controllers during one 0.04 s env step).  When the gripper is not
blocked, ``a[3]`` changes the fingers width target by ``0.2 * a[3]`` m.

Controllers (phase-based, closed loop on the observation):

* Reach: proportional move of the ee to the goal.
* Push (gripper blocked): travel (over the cube if needed) to a pre-push point behind the
  cube on the goal->cube line, drop to cube height, push gently along the cube->goal line
  while steering the ee back onto it; re-align (step back or go over) when the cube drifts
  off the line.  The pre-push standoff shrinks near the edge of the arm's reach.
* PickAndPlace: above the cube with the fingers opening, descend, close, then carry so that
  the *cube* sits on the goal (in the air or on the table) and hold it there; start over if
  the cube is lost.
* Slide (gripper blocked, low-friction puck): one calibrated strike.  The ee stops behind
  the puck at a lateral offset chosen so that the fingers' flat face (straight shots) or
  their corner (angled shots) sends the puck toward the goal; the strike action is chosen
  from a measured speed model so the puck reaches the goal before the time limit.  The
  env reports success as soon as the puck is within 5 cm, so most successes happen while
  the puck is still sliding through the goal (it cannot both stop on far goals and arrive
  within 50 steps).

panda-gym terminates an episode on success; the controllers keep acting sensibly after
success (Reach/PickAndPlace hold the goal, Push stops) if the caller keeps stepping.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

SUPPORTED_TASKS = ("Reach", "Push", "Slide", "PickAndPlace")
_ACTION_SCALE = 0.05  # metres of ee displacement per unit of action (panda-gym robot)


def _describe(env) -> str:
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return spec.id
    return type(getattr(env, "unwrapped", env)).__name__


def _inspect(env) -> tuple[Optional[str], Optional[str]]:
    """Return ``(task_name, problem)``; ``problem`` is None when the env is supported."""
    try:
        from panda_gym.envs.core import RobotTaskEnv
        from panda_gym.envs.tasks.pick_and_place import PickAndPlace
        from panda_gym.envs.tasks.push import Push
        from panda_gym.envs.tasks.reach import Reach
        from panda_gym.envs.tasks.slide import Slide
    except ImportError as exc:  # pragma: no cover - panda-gym is a dependency
        return None, f"panda-gym is not importable ({exc})"

    base = getattr(env, "unwrapped", env)
    if not isinstance(base, RobotTaskEnv):
        return None, f"{_describe(env)} is not a panda-gym RobotTaskEnv"
    task = getattr(base, "task", None)
    name = None
    for cls, cls_name in ((Reach, "Reach"), (Push, "Push"), (Slide, "Slide"), (PickAndPlace, "PickAndPlace")):
        if isinstance(task, cls):
            name = cls_name
            break
    if name is None:
        return None, f"{_describe(env)} uses task {type(task).__name__}, which has no scripted expert"
    control = getattr(base.robot, "control_type", None)
    if control != "ee":
        return name, f"{_describe(env)} uses control_type={control!r}; only end-effector control ('ee') is supported"
    return name, None


def supports(env) -> bool:
    """True when ``env`` is a panda-gym Reach/Push/Slide/PickAndPlace env with ee control."""
    return _inspect(env)[1] is None


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.zeros_like(v)


class PandaExpert:
    """Scripted controller for PandaReach/Push/Slide/PickAndPlace (-v3, control_type='ee')."""

    # --- geometry (metres) -------------------------------------------------------------
    CUBE_HALF = 0.02  # Push / PickAndPlace cube half size
    PUCK_RADIUS = 0.03  # Slide puck radius
    HOVER_Z = 0.12  # ee height that clears the cube / puck when travelling over it
    BASE_XY = np.array([-0.6, 0.0])  # panda-gym robot base position
    REACH_XY = 0.78  # horizontal ee reach from the base near table height (measured ~0.80)
    PUSH_Z = 0.018  # ee height used to push the cube (cube centre is at 0.02)

    def __init__(self, env):
        name, problem = _inspect(env)
        if problem is not None:
            raise ValueError(
                f"PandaExpert does not support this environment: {problem}. "
                f"Supported: Panda{{{', '.join(SUPPORTED_TASKS)}}}-v3 (and Dense variants) with control_type='ee'."
            )
        base = env.unwrapped
        self.task = name
        self.block_gripper = bool(base.robot.block_gripper)
        self.n_action = int(np.prod(base.action_space.shape))
        self.obj_offset = 6 if self.block_gripper else 7
        spec = getattr(env, "spec", None)
        # the Slide planner needs the episode length (TimeLimit) to pick a strike speed
        self.max_steps = int(getattr(spec, "max_episode_steps", None) or 50)
        self.reset(env, None)

    # ----------------------------------------------------------------------------------
    def reset(self, env, obs) -> None:
        self.phase = "start"
        self.steps = 0
        self.phase_steps = 0
        self.slide_action = 0.5
        self.slide_dir = np.array([1.0, 0.0])

    def act(self, env, obs) -> np.ndarray:
        o = np.asarray(obs["observation"], dtype=np.float64)
        goal = np.asarray(obs["desired_goal"], dtype=np.float64)
        ee = o[0:3]
        if self.task == "Reach":
            a = self._reach(ee, goal)
        elif self.task == "Push":
            a = self._push(o, ee, goal)
        elif self.task == "PickAndPlace":
            a = self._pick_and_place(o, ee, goal)
        else:
            a = self._slide(o, ee, goal)
        self.steps += 1
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)

    # --- helpers -----------------------------------------------------------------------
    def _set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.phase_steps = 0

    def _action(self, move: np.ndarray, fingers: float = 0.0) -> np.ndarray:
        a = np.zeros(self.n_action, dtype=np.float64)
        a[:3] = np.clip(move, -1.0, 1.0)
        if not self.block_gripper:
            a[3] = fingers
        return a

    @staticmethod
    def _toward(ee: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
        """Displacement action that moves the ee toward ``target`` (saturating at 1)."""
        delta = (target - ee) / _ACTION_SCALE * gain
        m = float(np.max(np.abs(delta)))
        if m > 1.0:  # keep the direction, saturate the magnitude
            delta = delta / m
        return delta

    # --- Reach -------------------------------------------------------------------------
    def _reach(self, ee, goal):
        return self._action(self._toward(ee, goal, gain=1.0))

    # --- Push --------------------------------------------------------------------------
    # closed fingers footprint around the ee point (hull of the finger meshes): +-0.0105 m
    # along x, +-0.026 m along y (the hand orientation is fixed by panda-gym's IK)
    FINGERS_HALF = np.array([0.0105, 0.026])
    PUSH_GAP = 0.033  # extra clearance between fingers and cube at the pre-push point
    PUSH_MIN_GAP = 0.01  # smallest clearance used when the arm cannot reach further back
    PUSH_STEP = 0.025  # ee advance per env step while pushing (m)
    PUSH_MAX_ACTION = 0.5  # cap on the horizontal action norm while pushing
    PUSH_CLEAR = 0.045  # keep the ee path this far from the cube centre while aligning

    def _path_clear(self, start_xy, end_xy, obstacle_xy, radius) -> bool:
        seg = end_xy - start_xy
        seg_len2 = float(seg @ seg)
        if seg_len2 < 1e-12:
            return float(np.linalg.norm(start_xy - obstacle_xy)) > radius
        t = float(np.clip(((obstacle_xy - start_xy) @ seg) / seg_len2, 0.0, 1.0))
        return float(np.linalg.norm(start_xy + t * seg - obstacle_xy)) > radius

    def _contact(self, d) -> float:
        """ee distance behind the cube centre (along d) when the fingers touch the cube,
        for an axis-aligned cube and the fixed finger footprint."""
        return float(self.CUBE_HALF * np.abs(d).sum() + self.FINGERS_HALF @ np.abs(d))

    def _standoff(self, cube_xy, d) -> float:
        """Largest pre-push standoff whose pre-push point stays inside the arm's reach."""
        contact = self._contact(d)
        for gap in np.linspace(self.PUSH_GAP, self.PUSH_MIN_GAP, 6):
            if float(np.linalg.norm(cube_xy - d * (contact + gap) - self.BASE_XY)) <= self.REACH_XY:
                return contact + float(gap)
        return contact + self.PUSH_MIN_GAP

    def _push(self, o, ee, goal):
        k = self.obj_offset
        cube = o[k : k + 3]
        to_goal = goal[:2] - cube[:2]
        dist = float(np.linalg.norm(to_goal))
        if dist < 0.005:
            return self._action(np.zeros(3))
        d = to_goal / dist
        perp = np.array([-d[1], d[0]])
        rel = ee[:2] - cube[:2]
        along = float(rel @ d)
        lat = float(rel @ perp)
        low = ee[2] < 0.035
        if self.phase != "push":
            self._set_phase("align")

        if self.phase == "push":
            if not low or abs(lat) > 0.02 or along > -0.015 or along < -self._contact(d) - self.PUSH_GAP - 0.03:
                self._set_phase("align")
            else:
                # advance along the cube->goal line and steer the ee back onto it
                advance = float(np.clip(dist, 0.008, self.PUSH_STEP))
                target_xy = ee[:2] + d * advance - perp * lat
                target = np.array([target_xy[0], target_xy[1], self.PUSH_Z])
                move = self._toward(ee, target)
                n = float(np.linalg.norm(move[:2]))
                if n > self.PUSH_MAX_ACTION:  # push gently: fast impacts flip / launch the cube
                    move[:2] *= self.PUSH_MAX_ACTION / n
                return self._action(move)

        # align: reach the pre-push point behind the cube without knocking the cube
        pre = cube[:2] - d * self._standoff(cube[:2], d)
        xy_err = float(np.linalg.norm(pre - ee[:2]))
        if low and xy_err < 0.012:
            self._set_phase("push")
            return self._push(o, ee, goal)
        clear = self._path_clear(ee[:2], pre, cube[:2], self.PUSH_CLEAR)
        if clear or xy_err < 0.012:
            target = np.array([pre[0], pre[1], self.PUSH_Z])
        elif low and along < -0.02 and float(np.linalg.norm(rel)) < self.PUSH_CLEAR + 0.02:
            # slightly off-line right behind the cube: step back (low) instead of going over it
            back = cube[:2] + _unit(rel) * (self.PUSH_CLEAR + 0.03)
            target = np.array([back[0], back[1], self.PUSH_Z])
        elif low:
            target = np.array([ee[0], ee[1], self.HOVER_Z])  # lift straight up first
        else:
            target = np.array([pre[0], pre[1], self.HOVER_Z])  # travel over the cube
        return self._action(self._toward(ee, target))

    # --- PickAndPlace ------------------------------------------------------------------
    def _pick_and_place(self, o, ee, goal):
        width = float(o[6])
        k = self.obj_offset
        cube = o[k : k + 3]
        self.phase_steps += 1
        if self.phase == "start":
            self._set_phase("approach")

        if self.phase in ("carry", "grasp") and float(np.linalg.norm(cube - ee)) > 0.04:
            self._set_phase("approach")  # lost the cube: start over

        if self.phase == "approach":
            xy_err = float(np.linalg.norm(cube[:2] - ee[:2]))
            target = np.array([cube[0], cube[1], cube[2] + (0.045 if xy_err > 0.02 else 0.0)])
            if xy_err < 0.01 and width > 0.06:
                self._set_phase("descend")
            else:
                return self._action(self._toward(ee, target), fingers=1.0)
        if self.phase == "descend":
            target = cube.copy()
            if float(np.linalg.norm(cube - ee)) < 0.008:
                self._set_phase("grasp")
            else:
                return self._action(self._toward(ee, target), fingers=1.0)
        if self.phase == "grasp":
            if width < self.CUBE_HALF * 2 + 0.003 and self.phase_steps >= 2:
                self._set_phase("carry")
            else:
                return self._action(self._toward(ee, cube), fingers=-1.0)
        # carry: move so that the cube (not the ee) lands on the goal, then hold it there;
        # while still far from the goal keep the cube off the table (no dragging)
        cube_target = goal.copy()
        if float(np.linalg.norm(goal[:2] - cube[:2])) > 0.03:
            cube_target[2] = max(cube_target[2], 0.04)
        target = ee + (cube_target - cube)
        return self._action(self._toward(ee, target), fingers=-1.0)

    # --- Slide -------------------------------------------------------------------------
    # The closed fingers present a flat face (normal +x) about 4 cm wide to the puck, with
    # rounded corners at |y| ~= 0.0204 m from the ee.  A strike along +x with the face gives a
    # puck velocity along +x whatever the small lateral offset; hitting the puck with a
    # corner deflects it.  Measured in panda-gym 3.0.7 (12 seeds per point, strike along +x
    # from 5 cm behind the puck centre, 2 steps at a constant action):
    #     sin(theta) ~= -(|dy| - 0.0204) / 0.0333 * sign(dy)   for |dy| > 0.0204
    # with dy the ee-minus-puck lateral offset; scatter ~1-2 deg at actions 0.35-0.5.
    # The puck then slides in a straight line, decelerating at ~0.22 m/s^2.
    SLIDE_Z = 0.015  # ee height for the strike (puck centre height)
    SLIDE_HOVER_Z = 0.07  # travel height over the puck (puck top at 0.03)
    SLIDE_STANDOFF = 0.05  # ee x distance behind the puck centre before the strike
    SLIDE_CORNER = 0.0204  # lateral position of the striking corner
    SLIDE_CORNER_R = 0.0333  # effective contact radius (puck radius + corner rounding)
    SLIDE_MAX_ANGLE = np.deg2rad(48.0)
    SLIDE_DECEL = 0.22  # m/s^2, measured puck deceleration on the table
    SLIDE_STRIKE_STEPS = 2
    SLIDE_MIN_ACTION = 0.35
    SLIDE_FAR_ACTION = 0.6
    SLIDE_FAR_REACH = 0.62
    # measured launch speed (m/s) for a straight strike vs action, and its angle factor
    _SLIDE_ACTIONS = np.array([0.35, 0.5, 0.7])
    _SLIDE_SPEEDS = np.array([0.44, 0.57, 0.70])  # a bit under the means (0.47, 0.60, 0.75)
    _SLIDE_ANGLES = np.deg2rad([0.0, 20.0, 28.0, 37.0, 45.0])
    _SLIDE_ANGLE_FACTOR = np.array([1.0, 0.93, 0.9, 0.78, 0.62])
    # wide shots (|theta| > 40 deg): strike diagonally (30 deg) with the corner instead;
    # measured outgoing angle vs lateral offset at action 0.6 (speed ~0.6 m/s)
    SLIDE_DIAG_FROM = np.deg2rad(40.0)
    SLIDE_DIAG_PHI = np.deg2rad(30.0)
    SLIDE_DIAG_ACTION = 0.6
    SLIDE_DIAG_STANDOFF = 0.06
    _SLIDE_DIAG_THETA = np.deg2rad([31.5, 40.2, 49.2, 60.9, 69.8, 80.5])
    _SLIDE_DIAG_OFFSET = np.array([0.015, 0.02, 0.025, 0.03, 0.035, 0.04])

    def _slide_plan(self, puck, goal, steps_left: int):
        """Strike direction, lateral ee offset, action and standoff that send the puck
        through the goal."""
        to_goal = goal[:2] - puck[:2]
        theta = float(np.arctan2(to_goal[1], max(to_goal[0], 1e-3)))
        if abs(theta) > self.SLIDE_DIAG_FROM:
            phi = float(np.sign(theta) * self.SLIDE_DIAG_PHI)
            offset = -np.sign(theta) * float(np.interp(abs(theta), self._SLIDE_DIAG_THETA, self._SLIDE_DIAG_OFFSET))
            u = np.array([np.cos(phi), np.sin(phi)])
            return u, float(offset), self.SLIDE_DIAG_ACTION, self.SLIDE_DIAG_STANDOFF
        x_axis = np.array([1.0, 0.0])
        # speed: stop a little past the goal, but fast enough to get there before time out
        dist = float(np.linalg.norm(to_goal))
        t_avail = max(steps_left - self.SLIDE_STRIKE_STEPS - 2, 1) * 0.04
        v_stop = np.sqrt(2.0 * self.SLIDE_DECEL * (dist + 0.02))
        v_time = (dist + 0.5 * self.SLIDE_DECEL * t_avail**2) / t_avail
        v_req = max(v_stop, v_time)
        factor = float(np.interp(abs(theta), self._SLIDE_ANGLES, self._SLIDE_ANGLE_FACTOR))
        action = float(np.interp(v_req / factor, self._SLIDE_SPEEDS, self._SLIDE_ACTIONS))
        reach = float(np.linalg.norm(puck[:2] - np.array([self.SLIDE_STANDOFF, 0.0]) - self.BASE_XY))
        if reach > self.SLIDE_FAR_REACH or abs(theta) > np.deg2rad(30.0):
            # near the edge of the workspace (or for wide corner shots) slow strikes lose a
            # lot of speed; faster ones much less
            action = max(action, self.SLIDE_FAR_ACTION)
        action = max(action, self.SLIDE_MIN_ACTION)
        if abs(theta) < np.deg2rad(1.0):
            return x_axis, 0.0, action, self.SLIDE_STANDOFF  # flat face: straight shot
        # corner shots come out a little under-deflected, more so for faster strikes
        # (fit over 300 episodes: bias_deg = 2.59 - 0.0557 * |theta_deg| - 8.08 * action)
        bias = np.deg2rad(2.59 - 0.0557 * np.rad2deg(abs(theta)) - 8.08 * action)
        aim = float(np.clip(abs(theta) - min(bias, 0.0), 0.0, self.SLIDE_MAX_ANGLE))
        offset = -np.sign(theta) * (self.SLIDE_CORNER + self.SLIDE_CORNER_R * np.sin(aim))
        return x_axis, float(offset), action, self.SLIDE_STANDOFF

    def _slide(self, o, ee, goal):
        k = self.obj_offset
        puck = o[k : k + 3]
        puck_v = o[k + 6 : k + 9]
        steps_left = self.max_steps - self.steps
        self.phase_steps += 1
        if self.phase == "start":
            self._set_phase("approach")

        if self.phase == "strike":
            if self.phase_steps <= self.SLIDE_STRIKE_STEPS:
                z_fix = (self.SLIDE_Z - ee[2]) / _ACTION_SCALE
                u = self.slide_dir
                return self._action(np.array([self.slide_action * u[0], self.slide_action * u[1], z_fix]))
            self._set_phase("retreat")
        if self.phase == "retreat":
            # back off and wait; strike again if the puck stopped short within reach
            if float(np.linalg.norm(puck_v[:2])) < 0.01 and self.phase_steps > 3:
                self._set_phase("approach")
            else:
                back = ee[:2] - 0.05 * self.slide_dir
                target = np.array([back[0], back[1], self.SLIDE_HOVER_Z])
                if self.phase_steps > 3:
                    target = ee.copy()
                return self._action(self._toward(ee, target))

        # approach: come down behind the puck at the planned lateral offset, settle, strike
        u, offset, action, standoff = self._slide_plan(puck, goal, steps_left)
        perp = np.array([-u[1], u[0]])
        pre = puck[:2] - u * standoff + perp * offset
        entry = pre - u * 0.03  # descend here, then slide forward to `pre`
        xy_err = float(np.linalg.norm(pre - ee[:2]))
        low = ee[2] < self.SLIDE_Z + 0.01
        behind = float((ee[:2] - pre) @ u) < 0.005 and abs(float((ee[:2] - pre) @ perp)) < 0.01
        if low and behind:
            target = np.array([pre[0], pre[1], self.SLIDE_Z])
        elif self._path_clear(ee[:2], entry, puck[:2], self.PUCK_RADIUS + 0.035):
            target = np.array([entry[0], entry[1], self.SLIDE_Z])
        elif ee[2] < self.SLIDE_HOVER_Z - 0.02:
            target = np.array([ee[0], ee[1], self.SLIDE_HOVER_Z + 0.02])  # lift first
        else:
            target = np.array([entry[0], entry[1], self.SLIDE_HOVER_Z + 0.02])
        settled = (
            xy_err < 0.0015
            and abs(ee[2] - self.SLIDE_Z) < 0.004
            and float(np.linalg.norm(o[3:6])) < 0.01
        )
        # do not wait for perfect settling when time is short
        if settled or (self.phase_steps > 25 and xy_err < 0.003) or (steps_left < 25 and xy_err < 0.004):
            self.slide_action = action
            self.slide_dir = u
            self._set_phase("strike")
            return self._slide(o, ee, goal)
        move = self._toward(ee, target)
        move[2] = float(np.clip(move[2], -0.6, 1.0))  # fast descents drag the ee sideways
        return self._action(move)
