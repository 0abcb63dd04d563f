# A hand-written reward program for MiniGrid-KeyCorridor (state view): key, locked door, target object.
import numpy as np

SUBTASKS = [
    "pick up the key that matches the locked door",
    "open the locked door",
    "pick up the object named in the mission",
]

KEY = OBJECT_TO_IDX["key"]
DOOR = OBJECT_TO_IDX["door"]
OPEN = STATE_TO_IDX["open"]
LOCKED = STATE_TO_IDX["locked"]


def _locked_doors(grid):
    """Cells (x, y, colour) of the doors that are locked in `grid`."""
    xs, ys = np.nonzero((grid[:, :, 0] == DOOR) & (grid[:, :, 2] == LOCKED))
    return [(int(x), int(y), int(grid[x, y, 1])) for x, y in zip(xs, ys)]


def subtask_1(obs, start):
    carrying = obs["carrying"]
    if carrying is None or carrying[0] != KEY:  # cheap test first: this check runs on every step
        return False
    return carrying[1] in [c for _, _, c in _locked_doors(start["grid"])]


def subtask_2(obs, start):
    for x, y, _ in _locked_doors(start["grid"]):
        if obs["grid"][x, y, 0] == DOOR and obs["grid"][x, y, 2] == OPEN:
            return True
    return False


def subtask_3(obs, start):
    if obs["carrying"] is None:
        return False
    words = obs["mission"].split()
    colour, kind = COLOR_TO_IDX[words[-2]], OBJECT_TO_IDX[words[-1]]
    return obs["carrying"] is not None and obs["carrying"][0] == kind and obs["carrying"][1] == colour
