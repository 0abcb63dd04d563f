"""What the panda-gym `pixels` view shows, measured from the simulator (not written by hand).

`measure()` renders frames of a panda-gym env through the `pixels` view, projects known 3-D points (cube, target,
gripper, table) with the camera's own view and projection matrices, and reads the colours there. The result is
stored in `panda_camera.json` beside this file (`python -m cleanrl_vlmcar.views.panda_camera` writes it again) and
turned into the view's documentation, the same text in the README and in the VLM prompt. A test re-measures it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MEASURED = Path(__file__).with_name("panda_camera.json")
FOV_DEG = 60.0  # panda-gym's PyBullet.render


def _matrices(u, width: int, height: int):
    pc = u.sim.physics_client
    view = pc.computeViewMatrixFromYawPitchRoll(cameraTargetPosition=u.render_target_position,
                                                distance=u.render_distance, yaw=u.render_yaw, pitch=u.render_pitch,
                                                roll=u.render_roll, upAxisIndex=2)
    proj = pc.computeProjectionMatrixFOV(fov=FOV_DEG, aspect=width / height, nearVal=0.1, farVal=100.0)
    return np.array(view).reshape(4, 4).T, np.array(proj).reshape(4, 4).T


def project(u, points, width: int, height: int) -> np.ndarray:
    """Pixel (column, row) of world points (N, 3) in a width x height frame of the env's default camera."""
    view, proj = _matrices(u, width, height)
    pts = np.c_[np.asarray(points, dtype=np.float64), np.ones(len(points))]
    clip = (proj @ view @ pts.T).T
    ndc = clip[:, :3] / clip[:, 3:4]
    return np.c_[(ndc[:, 0] + 1) / 2 * width, (1 - ndc[:, 1]) / 2 * height]


def measure(env_id: str = "PandaPush-v3", seeds: int = 5) -> dict:
    import gymnasium as gym
    import panda_gym  # noqa: F401

    from . import make_view

    env = gym.make(env_id, render_mode="rgb_array")
    u = env.unwrapped
    adapter, state_view = make_view(env, "pixels"), make_view(env, "state")
    env.reset(seed=0)
    h, w = adapter.reset()["rgb"].shape[:2]
    colours: dict[str, list] = {"cube": [], "target": [], "table": [], "gripper": []}
    for s in range(seeds):
        env.reset(seed=s)
        rgb = adapter.reset()["rgb"]
        state = state_view.reset()
        points = {"cube": state["object_pos"], "target": state["goal_pos"], "table": np.array([-0.1, -0.25, 0.0]),
                  "gripper": state["ee_pos"]}
        for name, p in points.items():
            c, r = project(u, [p], w, h)[0]
            colours[name].append(rgb[int(round(r)), int(round(c))].tolist())
    centre = np.array([0.0, 0.0, 0.0])
    px = project(u, [centre, centre + [0.1, 0, 0], centre + [0, 0.1, 0], centre + [0.05, 0, 0],
                     centre + [-0.05, 0, 0], centre + [0, 0.05, 0], centre + [0, -0.05, 0]], w, h)
    per_m_x = float(np.linalg.norm(px[1] - px[0]) / 0.1)
    per_m_y = float(np.linalg.norm(px[2] - px[0]) / 0.1)
    corners = project(u, [[-0.15, -0.15, 0], [0.15, -0.15, 0], [0.15, 0.15, 0], [-0.15, 0.15, 0]], w, h)
    env.close()
    return {
        "env_id": env_id, "width": w, "height": h, "fov_deg": FOV_DEG,
        "camera": {"target": [float(x) for x in u.render_target_position], "distance": float(u.render_distance),
                   "yaw": float(u.render_yaw), "pitch": float(u.render_pitch), "roll": float(u.render_roll)},
        "colours": {k: [int(x) for x in np.median(np.array(v), axis=0)] for k, v in colours.items()},
        "pixels_per_metre_at_table": {"x": round(per_m_x, 1), "y": round(per_m_y, 1)},
        "success_radius_px": {"x": round(float(np.linalg.norm(px[3] - px[4]) / 2), 1),
                              "y": round(float(np.linalg.norm(px[5] - px[6]) / 2), 1)},
        "table_centre_px": [round(float(x), 1) for x in px[0]],
        "workspace_corners_px": [[round(float(a), 1) for a in c] for c in corners],
    }


def doc_text(m: dict | None = None) -> str:
    """The measured facts as the view's notes (README and prompt)."""
    if m is None:
        if not MEASURED.exists():
            return ""
        m = json.loads(MEASURED.read_text())
    c, cam = m["colours"], m["camera"]
    ppm, rad = m["pixels_per_metre_at_table"], m["success_radius_px"]
    return (
        f"Measured from the simulator ({m['env_id']}, `cleanrl_vlmcar/views/panda_camera.py`): the camera looks at "
        f"{cam['target']} (metres, world frame) from {cam['distance']} m, yaw {cam['yaw']:g} deg, pitch "
        f"{cam['pitch']:g} deg (looking down), field of view {m['fov_deg']:g} deg; the world origin (table centre) is "
        f"at pixel (column, row) {tuple(m['table_centre_px'])}. Near the table centre one metre spans about "
        f"{ppm['x']:g} pixels along world x and {ppm['y']:g} along world y (perspective: less further away), so "
        f"panda-gym's 5 cm success radius is about {rad['x']:g} x {rad['y']:g} pixels. Typical colours (RGB, median "
        f"over {m['env_id']} episodes, shading varies): cube {tuple(c['cube'])}, target {tuple(c['target'])} (drawn "
        f"translucent, but at this size it looks solid), table {tuple(c['table'])}, gripper {tuple(c['gripper'])}. "
        f"The 30 x 30 cm area where objects start spans the pixels {', '.join(str(tuple(p)) for p in m['workspace_corners_px'])}."
    )


if __name__ == "__main__":  # pragma: no cover - writes the committed measurement
    result = measure()
    MEASURED.write_text(json.dumps(result, indent=2) + "\n")
    print(doc_text(result))
