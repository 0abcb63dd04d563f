"""MiniGrid views: the full symbolic grid (`state`) and the full top-down frame (`pixels`)."""

from __future__ import annotations

import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, COLORS, DIR_TO_VEC, OBJECT_TO_IDX, STATE_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.world_object import WorldObj

from . import Field, ViewAdapter, ViewSpec

#: pixel size of one grid cell in the `pixels` view
TILE_SIZE = 16

_AGENT = OBJECT_TO_IDX["agent"]
_RED = COLOR_TO_IDX["red"]
_EMPTY_CELL = np.array((OBJECT_TO_IDX["empty"], 0, 0), dtype=np.uint8)
_DIRS = [(int(v[0]), int(v[1])) for v in DIR_TO_VEC]
_AGENT_CELLS = [np.array((_AGENT, _RED, d), dtype=np.uint8) for d in range(4)]  # the agent's cell per direction

_ENCODE = WorldObj.encode
_CODES: dict[tuple[str, str], np.ndarray] = {}  # (type, color) -> encoding, for stateless objects

#: minigrid environment classes whose own `step` changes the grid beyond the cell in front of the agent
_GRID_CHANGING_STEP = {"DynamicObstaclesEnv"}


def _incremental(env) -> bool:
    """Whether only the cell in front of the agent (and the agent itself) can change on a step of `env`."""
    cls = type(env)
    return cls.__module__.startswith("minigrid.") and cls.__name__ not in _GRID_CHANGING_STEP


def _constants() -> dict:
    return {
        "OBJECT_TO_IDX": dict(OBJECT_TO_IDX),
        "COLOR_TO_IDX": dict(COLOR_TO_IDX),
        "STATE_TO_IDX": dict(STATE_TO_IDX),
        "DIR_TO_VEC": [tuple(int(x) for x in v) for v in DIR_TO_VEC],
        "COLORS": {name: tuple(int(x) for x in rgb) for name, rgb in COLORS.items()},
        "TILE_SIZE": TILE_SIZE,
    }


class MiniGridStateView(ViewAdapter):
    """The full grid as `minigrid.wrappers.FullyObsWrapper` encodes it, plus the agent's pose and inventory.

    Encoding the whole grid costs ~16 us per step in Python; in minigrid's own environments every change to the
    grid happens in the cell in front of the agent (pick up, drop, toggle), so after `reset` only that cell is
    re-encoded. Environments that move objects on their own (DynamicObstacles, and any class from outside minigrid)
    get the full encoding every step.
    """

    def __init__(self, env):
        super().__init__(env)
        self.incremental = _incremental(self.unwrapped)
        self._base: np.ndarray | None = None

    def _view(self, env, x: int, y: int, d: int) -> dict:
        """The view: a copy of the base with the agent's cell (the base stays without it, for the next step)."""
        grid = self._base.copy()
        grid[x, y] = _AGENT_CELLS[d]
        c = env.carrying
        return {"grid": grid, "agent_pos": (x, y), "agent_dir": d,
                "carrying": None if c is None else (OBJECT_TO_IDX[c.type], COLOR_TO_IDX[c.color]),
                "mission": env.mission}

    def reset(self, obs=None, info=None) -> dict:
        env = self.unwrapped
        self._base = env.grid.encode()
        x, y = env.agent_pos
        return self._view(env, int(x), int(y), int(env.agent_dir))

    def step(self, obs=None, info=None) -> dict:
        # per-env plain Python on Python ints: this runs for every env on every step (numpy scalars cost more)
        env = self.unwrapped
        x, y = env.agent_pos
        x, y, d = int(x), int(y), int(env.agent_dir)
        if not self.incremental:
            self._base = env.grid.encode()
            return self._view(env, x, y, d)
        dx, dy = _DIRS[d]
        fx, fy, width = x + dx, y + dy, env.width
        if 0 <= fx < width and 0 <= fy < env.height:
            cell = env.grid.grid[fy * width + fx]
            self._base[fx, fy] = _EMPTY_CELL if cell is None else _encoded(cell)
        return self._view(env, x, y, d)


def _encoded(cell) -> np.ndarray | tuple:
    """`cell.encode()`, as a cached uint8 array for objects that keep minigrid's stateless encoding (numpy copies an
    array into a cell faster than a tuple); doors (which encode their state) and overrides as they are."""
    if type(cell).encode is not _ENCODE:
        return cell.encode()
    key = (cell.type, cell.color)
    code = _CODES.get(key)
    if code is None:
        code = _CODES[key] = np.array(cell.encode(), dtype=np.uint8)
    return code


class MiniGridPixelsView(ViewAdapter):
    """The full top-down frame, without the agent's field-of-view highlight: what
    `env.get_frame(highlight=False, tile_size=TILE_SIZE)` draws.

    Drawing the whole frame costs ~300 us per step (minigrid also computes the agent's field of view for the
    highlight it then leaves out). As in the state view, after `reset` only the cells a step can change in
    minigrid's own environments are drawn again: where the agent was, where it is, and the cell in front of it
    (the tiles come from minigrid's own `Grid.render_tile`, so the frame is the same to the pixel); a cell whose
    tile key (the object's encoding and the agent's direction, what `render_tile` caches on) is the one it was last
    drawn with is left as it is.
    Environments that move objects on their own get the full frame every step.
    """

    def __init__(self, env):
        super().__init__(env)
        self.incremental = _incremental(self.unwrapped)
        self._frame: np.ndarray | None = None
        self._agent = (0, 0)
        self._drawn: dict[tuple[int, int], tuple] = {}  # cell -> the tile key it was last drawn with, by `step`

    def _full(self) -> dict:
        env = self.unwrapped
        self._frame = env.get_frame(highlight=False, tile_size=TILE_SIZE)
        self._agent = (int(env.agent_pos[0]), int(env.agent_pos[1]))
        self._drawn = {}
        return {"rgb": self._frame.copy(), "mission": env.mission}

    def reset(self, obs=None, info=None) -> dict:
        return self._full()

    def step(self, obs=None, info=None) -> dict:
        if not self.incremental or self._frame is None:
            return self._full()
        env = self.unwrapped
        x, y = int(env.agent_pos[0]), int(env.agent_pos[1])
        dx, dy = _DIRS[env.agent_dir]
        drawn = self._drawn
        for cx, cy in {self._agent, (x, y), (x + dx, y + dy)}:
            if 0 <= cx < env.width and 0 <= cy < env.height:
                obj = env.grid.get(cx, cy)
                agent_dir = env.agent_dir if cx == x and cy == y else None
                key = (None if obj is None else obj.encode(), agent_dir)  # what render_tile's own cache keys on
                if drawn.get((cx, cy)) == key:  # the same tile is there already (a turn, an unchanged front cell)
                    continue
                drawn[cx, cy] = key
                tile = Grid.render_tile(obj, agent_dir=agent_dir, highlight=False, tile_size=TILE_SIZE)
                self._frame[cy * TILE_SIZE:(cy + 1) * TILE_SIZE, cx * TILE_SIZE:(cx + 1) * TILE_SIZE] = tile
        self._agent = (x, y)
        return {"rgb": self._frame.copy(), "mission": env.mission}


STATE = ViewSpec(
    family="minigrid",
    view="state",
    summary="The full MiniGrid state, as `minigrid.wrappers.FullyObsWrapper` encodes it.",
    fields=(
        Field("grid", "np.ndarray (W, H, 3) uint8", "the whole grid indexed `grid[x, y]`, each cell "
              "`(object_idx, color_idx, state)`; x grows to the right, y grows downward; the agent's own cell holds "
              "`(OBJECT_TO_IDX['agent'], COLOR_TO_IDX['red'], agent_dir)`, which hides what lies under the agent (e.g. an "
              "open door it stands in); an empty cell is `(OBJECT_TO_IDX['empty'], 0, 0)`"),
        Field("agent_pos", "tuple[int, int]", "the agent's cell `(x, y)`"),
        Field("agent_dir", "int", "facing direction: 0 right (+x), 1 down (+y), 2 left (-x), 3 up (-y); "
              "`DIR_TO_VEC[agent_dir]` is the step vector"),
        Field("carrying", "None or tuple[int, int]", "what the agent holds, as `(object_idx, color_idx)`, or None"),
        Field("mission", "str", "the task text"),
    ),
    constants_doc=(
        "Constants in the program's namespace: `OBJECT_TO_IDX` ("
        + ", ".join(f"{k}={v}" for k, v in OBJECT_TO_IDX.items()) + "), `COLOR_TO_IDX` ("
        + ", ".join(f"{k}={v}" for k, v in COLOR_TO_IDX.items()) + "), `STATE_TO_IDX` (door states: "
        + ", ".join(f"{k}={v}" for k, v in STATE_TO_IDX.items()) + "), `DIR_TO_VEC` (list of 4 `(dx, dy)`). "
        "A picked-up object disappears from `grid` and shows in `carrying`; an opened box is replaced by its "
        "contents."
    ),
    make=MiniGridStateView,
    constants=_constants,
)

PIXELS = ViewSpec(
    family="minigrid",
    view="pixels",
    summary=f"The full top-down RGB frame of the grid, {TILE_SIZE} pixels per cell, no field-of-view highlight "
            "(the paper's image-based setting).",
    fields=(
        Field("rgb", "np.ndarray (H, W, 3) uint8", f"the frame; cell `(x, y)` covers rows `y*{TILE_SIZE}:(y+1)*{TILE_SIZE}` "
              f"and columns `x*{TILE_SIZE}:(x+1)*{TILE_SIZE}`; so H = grid height * {TILE_SIZE}"),
        Field("mission", "str", "the task text"),
    ),
    constants_doc=(
        "Constants in the program's namespace: `TILE_SIZE` (pixels per cell), `COLORS` (name -> RGB: "
        + ", ".join(f"{k}={tuple(int(x) for x in v)}" for k, v in COLORS.items())
        + "). How each cell is drawn (fractions of the cell, x to the right, y down): every cell is black with a grey "
        "(100,100,100) grid line along its top and left edges (the first 1/32); a wall fills the cell grey; the goal "
        "fills it green (0,255,0); lava fills it orange; a ball is a filled circle of its colour (centre (0.5, 0.5), "
        "radius 0.31); a key is a key shape of its colour (a ring centred at (0.56, 0.28), a shaft x 0.50-0.63, "
        "y 0.31-0.88, two teeth to its left); a box is a square outline of its colour (0.12-0.88, black inside) "
        "with a horizontal slit across the middle (y 0.47-0.53); a locked door fills the cell with its colour, "
        "with the inside (0.06-0.94) darkened to 0.45 x the colour and a key slot in full colour at x 0.52-0.75, "
        "y 0.50-0.56; a closed door is its colour with a black ring (0.04-0.08), a second frame of its colour, a "
        "black inside (0.12-0.88) and a handle dot of its colour at (0.75, 0.5); an open door is only a strip of "
        "its colour along the cell's right edge (x 0.88-1.0), black elsewhere; the agent is a red (255,0,0) "
        "triangle pointing in its direction, drawn over the cell's content. A carried object is not drawn. Frames "
        "are drawn at 3x and downsampled, so edges are blended: compare colours with a tolerance and sample "
        "points well inside shapes."
    ),
    make=MiniGridPixelsView,
    constants=_constants,
)
