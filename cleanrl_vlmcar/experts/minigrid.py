"""Scripted expert for MiniGrid: a breadth-first planner over the true grid.

The expert reads the true state from ``env.unwrapped`` (grid, agent position and
direction, carried object, mission and env-specific attributes such as ``obj``),
copies it into a small world model (:class:`_World`) that reproduces the rules of
``MiniGridEnv.step``, and plans the whole episode on that model:

* Navigation is a shortest-path search over ``(cell, direction)`` states with the
  real actions (left, right, forward). Entering a closed door costs a ``toggle``
  first; a locked door can only be opened while carrying the key of its colour.
* If the cheapest route crosses an obstacle, the obstacle becomes a sub-goal:
  a locked door -> fetch the matching key (opening a box if the key is hidden in
  one); a movable object in the way (ball, key, box) -> pick it up.
* The agent carries at most one object. When its hands must be free, it drops
  the carried object in an empty cell whose blocking would not cut any part of the
  grid off (so the ball of BlockedUnlockPickup is never put back in front of the
  door), but only after the carried key has opened the doors it is needed for.

The plan is stored as a map from the state *before* each action (a signature of
the full grid, the agent and the step counter) to that action. ``act`` looks the
current state up and replans only when it is not in the map, i.e. when the env
departed from the plan (for example because a learner chose another action).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from minigrid.core.world_object import Door
from minigrid.minigrid_env import MiniGridEnv

# Action ids, as in ``minigrid.core.actions.Actions``.
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)

# Object types the agent can pick up (``WorldObj.can_pickup``).
PICKABLE = ("key", "ball", "box")
# Cells a flood fill may cross: empty, floor, goal, and doors in any state (a door
# can always be opened eventually, so it connects the two rooms).
CONNECTING = ("floor", "goal", "door")

# Step costs of the route search. An obstacle costs much more than any detour.
FREE_COST = 1  # forward into an empty / walkable cell
DOOR_COST = 2  # toggle + forward into a closed door we can open now
OBSTACLE_COST = 1000  # locked door without its key, or an object in the way

# Goal kinds derived from each environment family (class name in the MRO).
_REACH, _OPEN, _PICKUP_OBJ, _PICKUP_MATCH, _GOTO = "reach", "open", "pickup", "fetch", "goto"
SUPPORTED_FAMILIES = {
    "DoorKeyEnv": _REACH,
    "EmptyEnv": _REACH,
    "FourRoomsEnv": _REACH,
    "MultiRoomEnv": _REACH,
    "LockedRoomEnv": _REACH,
    "LavaGapEnv": _REACH,
    "CrossingEnv": _REACH,
    "DistShiftEnv": _REACH,
    "UnlockEnv": _OPEN,
    "UnlockPickupEnv": _PICKUP_OBJ,
    "BlockedUnlockPickupEnv": _PICKUP_OBJ,
    "KeyCorridorEnv": _PICKUP_OBJ,
    "ObstructedMazeEnv": _PICKUP_OBJ,
    "FetchEnv": _PICKUP_MATCH,
    "GoToObjectEnv": _GOTO,
    "GoToDoorEnv": _GOTO,
}


class _NoPlan(Exception):
    """Raised when the planner cannot reach the goal from the current state."""


# --------------------------------------------------------------------------- #
# Environment inspection
# --------------------------------------------------------------------------- #
def _family(env) -> str | None:
    """Return the supported family name of ``env`` (searching the class MRO), or None."""
    uenv = getattr(env, "unwrapped", env)
    if not isinstance(uenv, MiniGridEnv):
        return None
    for cls in type(uenv).__mro__:
        if cls.__name__ in SUPPORTED_FAMILIES:
            return cls.__name__
    return None


def supports(env) -> bool:
    """True if ``env`` (possibly wrapped) is a MiniGrid env of a family this expert solves."""
    return _family(env) is not None


def _env_signature(uenv) -> tuple:
    """Hashable snapshot of the true state: grid objects (by identity), door states,
    agent pose, carried object and step counter. Equal to ``_World.signature``."""
    cells = tuple((o, o.is_open, o.is_locked) if type(o) is Door else o for o in uenv.grid.grid)
    x, y = uenv.agent_pos
    return (int(x), int(y), int(uenv.agent_dir), uenv.carrying, int(uenv.step_count), cells)


# --------------------------------------------------------------------------- #
# World model
# --------------------------------------------------------------------------- #
class _Obj:
    """Mutable copy of a ``WorldObj``; ``src`` is the real object (for identity)."""

    __slots__ = ("type", "color", "is_open", "is_locked", "contains", "src")

    def __init__(self, src):
        """Copy type, colour, door state and box contents of the minigrid object ``src``."""
        self.src = src
        self.type = src.type
        self.color = src.color
        self.is_open = bool(getattr(src, "is_open", False))
        self.is_locked = bool(getattr(src, "is_locked", False))
        # Only boxes hold something; toggling a box replaces it by its contents.
        inner = src.contains if src.type == "box" else None
        self.contains = _Obj(inner) if inner is not None else None

    def key(self):
        """Signature element, matching what ``_env_signature`` builds for the real object."""
        if self.type == "door":
            return (self.src, self.is_open, self.is_locked)
        return self.src


def _copy(obj):
    """``_Obj`` copy of a minigrid object, or None for an empty cell / empty hands."""
    return None if obj is None else _Obj(obj)


class _World:
    """A copy of the env state that can be stepped with the rules of ``MiniGridEnv.step``.

    Cells are indexed ``i = y * width + x``; directions are minigrid's
    (0 = right/east, 1 = down/south, 2 = left/west, 3 = up/north). Every action
    applied with :meth:`do` is logged together with the state signature before it.
    """

    def __init__(self, uenv):
        """Snapshot the true state of the unwrapped MiniGrid env ``uenv``."""
        grid = uenv.grid
        self.width, self.height = grid.width, grid.height
        self.cells = [_copy(o) for o in grid.grid]
        x, y = uenv.agent_pos
        self.pos = int(y) * self.width + int(x)
        self.dir = int(uenv.agent_dir)
        self.carrying = _copy(uenv.carrying)
        self.step_count = int(uenv.step_count)
        self.delta = (1, self.width, -1, -self.width)  # index offset per direction
        self.log: list[tuple[tuple, int]] = []

    def front(self, pos: int, d: int) -> int:
        """Index of the cell in front of an agent at ``pos`` facing ``d``."""
        return pos + self.delta[d]

    def neighbours(self, i: int) -> list[int]:
        """Indices of the 4-neighbours of cell ``i`` that lie inside the grid."""
        x, y = i % self.width, i // self.width
        out = []
        if x > 0:
            out.append(i - 1)
        if x < self.width - 1:
            out.append(i + 1)
        if y > 0:
            out.append(i - self.width)
        if y < self.height - 1:
            out.append(i + self.width)
        return out

    def signature(self) -> tuple:
        """Signature of the modelled state, comparable with ``_env_signature``."""
        cells = tuple(None if o is None else o.key() for o in self.cells)
        carrying = None if self.carrying is None else self.carrying.src
        x, y = self.pos % self.width, self.pos // self.width
        return (x, y, self.dir, carrying, self.step_count, cells)

    def do(self, action: int) -> None:
        """Log ``action`` with the current signature, then apply it (same rules as the env)."""
        self.log.append((self.signature(), action))
        self.step_count += 1
        fwd = self.front(self.pos, self.dir)
        cell = self.cells[fwd]
        if action == LEFT:
            self.dir = (self.dir - 1) % 4
        elif action == RIGHT:
            self.dir = (self.dir + 1) % 4
        elif action == FORWARD:
            if cell is None or cell.type in ("goal", "floor", "lava") or (cell.type == "door" and cell.is_open):
                self.pos = fwd
        elif action == PICKUP:
            if cell is not None and cell.type in PICKABLE and self.carrying is None:
                self.carrying, self.cells[fwd] = cell, None
        elif action == DROP:
            if cell is None and self.carrying is not None:
                self.cells[fwd], self.carrying = self.carrying, None
        elif action == TOGGLE and cell is not None:
            if cell.type == "door":
                if not cell.is_locked:
                    cell.is_open = not cell.is_open
                elif self.carrying_key(cell.color):  # a locked door opens with its key only
                    cell.is_locked, cell.is_open = False, True
            elif cell.type == "box":
                self.cells[fwd] = cell.contains  # the box disappears, leaving its contents

    def carrying_key(self, color: str) -> bool:
        """True if the agent holds a key of colour ``color``."""
        c = self.carrying
        return c is not None and c.type == "key" and c.color == color

    def cells_where(self, pred) -> frozenset[int]:
        """Indices of the non-empty cells whose object satisfies ``pred``."""
        return frozenset(i for i, o in enumerate(self.cells) if o is not None and pred(o))

    def component(self, start: int, blocked: int | None = None) -> set[int]:
        """Cells connected to ``start`` through empty / floor / goal / door cells,
        treating ``blocked`` as occupied (used to test a drop position)."""
        seen = {start}
        stack = [start]
        cells = self.cells
        while stack:
            i = stack.pop()
            for n in self.neighbours(i):
                if n in seen or n == blocked:
                    continue
                o = cells[n]
                if o is None or o.type in CONNECTING:
                    seen.add(n)
                    stack.append(n)
        return seen


# --------------------------------------------------------------------------- #
# Planner
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Task:
    """A navigation target plus the action to perform there.

    ``cells``: target cell indices; ``stand``: stand on a target cell (else face one);
    ``final``: action to do once there (None: arriving is enough);
    ``empty_hands``: the final action needs free hands (pickup);
    ``key_color``: the final action needs that key in hand (toggle a locked door).
    """

    cells: frozenset
    stand: bool = False
    final: int | None = None
    empty_hands: bool = False
    key_color: str | None = None


@dataclass
class _Route:
    """Result of a route search: the actions to reach the target, the index just after
    the first toggle that unlocks a door with the carried key (or None), and the first
    obstacle on the cheapest route as ``(kind, cell)`` with kind "locked"/"blocker"."""

    actions: list
    unlock_end: int | None = None
    obstacle: tuple | None = None


class _Planner:
    """Plans on a :class:`_World` by chaining sub-goals (keys, blockers, drops)."""

    MAX_DEPTH = 6  # nesting of sub-goals (key behind a door behind a ball ...)
    MAX_STAGES = 60  # stages per plan; each stage makes definite progress

    def __init__(self, world: _World, goal, allow_moving: bool = True, allow_doors: bool = True):
        """``goal(world) -> _Task`` gives the top-level task for the current world state.
        ``allow_moving``: may objects in the way be picked up (not in Fetch, where picking
        up a wrong object ends the episode); ``allow_doors``: may closed doors be toggled
        open on the way (not in GoTo*, where any toggle ends the episode)."""
        self.world = world
        self.goal = goal
        self.allow_moving = allow_moving
        self.allow_doors = allow_doors

    # ---- top level ------------------------------------------------------- #
    def plan(self) -> list[tuple[tuple, int]]:
        """Run stages until the top task is done; return the logged (signature, action) list."""
        for _ in range(self.MAX_STAGES):
            if self._stage(self.goal(self.world), depth=0):
                return self.world.log
        raise _NoPlan("too many stages")

    def _stage(self, task: _Task, depth: int) -> bool:
        """Make one unit of progress towards ``task``; True once the task itself is done."""
        if depth > self.MAX_DEPTH:
            raise _NoPlan("sub-goals nest too deep")
        w = self.world
        route = self._route(lambda p, d: self._at_target(task, p, d), task)
        if route is None:
            raise _NoPlan("target unreachable")
        if route.obstacle is not None:
            kind, cell = route.obstacle
            if kind == "blocker":  # an object stands in the way: pick it up
                sub = _Task(frozenset([cell]), final=PICKUP, empty_hands=True)
            else:  # a locked door: fetch its key first
                sub = self._key_task(w.cells[cell].color)
            self._stage(sub, depth + 1)
            return False
        if task.key_color is not None and not w.carrying_key(task.key_color):
            self._stage(self._key_task(task.key_color), depth + 1)
            return False
        if task.empty_hands and w.carrying is not None:
            # Keep the carried key until it has opened the locked doors on the way.
            if route.unlock_end is not None:
                self._run(route.actions[: route.unlock_end])
            else:
                self._drop()
            return False
        self._run(route.actions)
        if task.final is not None:
            w.do(task.final)
        return True

    def _run(self, actions) -> None:
        """Apply a list of actions to the world model."""
        for a in actions:
            self.world.do(a)

    def _at_target(self, task: _Task, pos: int, d: int) -> bool:
        """Goal test of the route search for ``task``."""
        return (pos if task.stand else self.world.front(pos, d)) in task.cells

    # ---- sub-goals -------------------------------------------------------- #
    def _key_task(self, color: str) -> _Task:
        """Task that gets a key of ``color`` into the agent's hands (or reveals one)."""
        w = self.world
        keys = w.cells_where(lambda o: o.type == "key" and o.color == color)
        if keys:
            return _Task(keys, final=PICKUP, empty_hands=True)
        # The key may be hidden in a box: toggling the box replaces it by the key.
        boxes = w.cells_where(
            lambda o: o.type == "box" and o.contains is not None
            and o.contains.type == "key" and o.contains.color == color
        )
        if boxes:
            return _Task(boxes, final=TOGGLE)
        raise _NoPlan(f"no {color} key")

    def _drop(self) -> None:
        """Walk to the nearest empty cell where the carried object blocks nothing; drop it."""
        w = self.world
        reach = w.component(w.pos)
        verdicts: dict[int, bool] = {}

        def good_spot(pos: int, d: int) -> bool:
            f = w.front(pos, d)
            if w.cells[f] is not None:
                return False  # the env only drops into an empty cell
            if f not in verdicts:
                verdicts[f] = self._harmless_drop(f, pos, reach)
            return verdicts[f]

        route = self._route(good_spot, None)
        if route is None or route.obstacle is not None:
            raise _NoPlan("no free cell to drop the carried object")
        self._run(route.actions)
        w.do(DROP)

    def _harmless_drop(self, f: int, stand: int, reach: set[int]) -> bool:
        """True if putting an object on cell ``f`` (dropped from cell ``stand``) keeps every
        other reachable cell connected and every object still approachable."""
        w = self.world
        if f not in reach:
            return False
        after = w.component(stand, blocked=f)
        if len(after) != len(reach) - 1:  # f was a cut cell (e.g. in front of a door)
            return False
        for n in w.neighbours(f):  # an object reachable only through f would be lost
            o = w.cells[n]
            if o is not None and o.type in PICKABLE and not any(m in after for m in w.neighbours(n)):
                return False
        return True

    # ---- route search ------------------------------------------------------ #
    def _step_costs(self, task: _Task | None) -> list:
        """Cost of moving forward into each cell (None: impassable), and its kind."""
        w = self.world
        costs = []
        for i, o in enumerate(w.cells):
            x, y = i % w.width, i // w.width
            if x in (0, w.width - 1) or y in (0, w.height - 1):
                costs.append(None)  # border cells (walls, or doors leading off the grid)
            elif o is None or o.type == "floor":
                costs.append((FREE_COST, "free"))
            elif o.type == "door":
                if o.is_open:
                    costs.append((FREE_COST, "free"))
                elif not self.allow_doors:
                    costs.append(None)
                elif not o.is_locked:
                    costs.append((DOOR_COST, "door"))
                elif w.carrying_key(o.color):
                    costs.append((DOOR_COST, "unlock"))
                else:
                    costs.append((OBSTACLE_COST, "locked"))
            elif o.type == "goal" and task is not None and task.stand and i in task.cells:
                costs.append((FREE_COST, "free"))  # other goal squares would end the episode
            elif o.type in PICKABLE and self.allow_moving:
                costs.append((OBSTACLE_COST, "blocker"))
            else:  # wall, lava, goal we do not want
                costs.append(None)
        return costs

    def _route(self, at_target, task: _Task | None) -> _Route | None:
        """Cheapest path over (cell, direction) states from the agent to a state
        satisfying ``at_target(pos, dir)``; None if there is none. This is a breadth-first
        search ordered by cost (Dijkstra), because a door costs a toggle on top of the move
        and obstacles cost a whole sub-goal."""
        w = self.world
        costs = self._step_costs(task)
        start = w.pos * 4 + w.dir
        dist = {start: 0}
        parent: dict[int, int] = {}
        heap = [(0, start)]
        while heap:
            c, s = heapq.heappop(heap)
            if c > dist[s]:
                continue
            pos, d = divmod(s, 4)
            if at_target(pos, d):
                return self._to_actions(self._unwind(parent, s), costs)
            nxt = [(pos * 4 + (d - 1) % 4, 1), (pos * 4 + (d + 1) % 4, 1)]
            step = costs[w.front(pos, d)]
            if step is not None:
                nxt.append((w.front(pos, d) * 4 + d, step[0]))
            for ns, cost in nxt:
                nc = c + cost
                if nc < dist.get(ns, 1 << 30):
                    dist[ns] = nc
                    parent[ns] = s
                    heapq.heappush(heap, (nc, ns))
        return None

    @staticmethod
    def _unwind(parent: dict, s: int) -> list[int]:
        """States from the start to ``s``, following ``parent`` links."""
        states = [s]
        while states[-1] in parent:
            states.append(parent[states[-1]])
        return states[::-1]

    def _to_actions(self, states: list[int], costs: list) -> _Route:
        """Turn a state path into env actions; stop at the first obstacle."""
        route = _Route(actions=[])
        for a, b in zip(states, states[1:]):
            pa, da = divmod(a, 4)
            pb, db = divmod(b, 4)
            if pa == pb:
                route.actions.append(LEFT if db == (da - 1) % 4 else RIGHT)
                continue
            kind = costs[pb][1]
            if kind in ("locked", "blocker"):
                route.obstacle = (kind, pb)
                return route
            if kind in ("door", "unlock"):
                route.actions.append(TOGGLE)  # open the door before walking into it
                if kind == "unlock" and route.unlock_end is None:
                    route.unlock_end = len(route.actions)
            route.actions.append(FORWARD)
        return route


# --------------------------------------------------------------------------- #
# Goals
# --------------------------------------------------------------------------- #
def _make_goal(uenv, family: str):
    """Return ``goal(world) -> _Task`` describing what ends the episode with reward."""
    kind = SUPPORTED_FAMILIES[family]
    if kind == _REACH:  # step onto the green goal square

        def goal(w):
            return _Task(w.cells_where(lambda o: o.type == "goal"), stand=True)

    elif kind == _OPEN:  # toggle the env's door open (needs its key if locked)
        door = uenv.door

        def goal(w):
            cells = w.cells_where(lambda o: o.src is door)
            locked = any(w.cells[i].is_locked for i in cells)
            return _Task(cells, final=TOGGLE, key_color=door.color if locked else None)

    elif kind == _PICKUP_OBJ:  # pick up exactly the object ``env.obj`` (identity check)
        target = uenv.obj

        def goal(w):
            return _Task(w.cells_where(lambda o: o.src is target), final=PICKUP, empty_hands=True)

    elif kind == _PICKUP_MATCH:  # Fetch: any object of the requested type and colour
        ttype, tcolor = uenv.targetType, uenv.targetColor

        def goal(w):
            match = w.cells_where(lambda o: o.type == ttype and o.color == tcolor)
            return _Task(match, final=PICKUP, empty_hands=True)

    else:  # GoTo*: stand next to (facing) the target and say done
        tx, ty = uenv.target_pos
        cell = frozenset([int(ty) * uenv.grid.width + int(tx)])

        def goal(w):
            return _Task(cell, final=DONE)

    return goal


# --------------------------------------------------------------------------- #
# Public expert
# --------------------------------------------------------------------------- #
class MiniGridExpert:
    """Breadth-first-search planner over the full grid (keys, doors, boxes, pick-up, drop).

    Usage::

        expert = MiniGridExpert(env)
        obs, _ = env.reset(seed=0)
        expert.reset(env, obs)
        action = expert.act(env, obs)

    ``act`` always answers from the true state of ``env.unwrapped``: it follows the
    cached plan while the env matches it and replans otherwise. If no plan exists
    (e.g. a learner destroyed the target), it returns ``left`` (which changes nothing
    but the heading) and sets ``self.failed = True``.
    """

    def __init__(self, env):
        """Check that ``env`` is a supported MiniGrid env; raise ValueError otherwise."""
        family = _family(env)
        if family is None:
            uenv = getattr(env, "unwrapped", env)
            names = ", ".join(n[:-3] if n.endswith("Env") else n for n in SUPPORTED_FAMILIES)
            raise ValueError(
                f"MiniGridExpert needs a MiniGrid env (env.unwrapped must be a "
                f"minigrid.MiniGridEnv) of a supported family: {names}; "
                f"got {type(uenv).__name__}."
            )
        self.family = family
        self._plan: dict[tuple, int] = {}
        self.failed = False
        self.replans = 0

    def reset(self, env, obs=None) -> None:
        """Forget the cached plan; call after every ``env.reset()``."""
        self._plan = {}
        self.failed = False

    def act(self, env, obs=None) -> int:
        """Next action (an int of ``env.unwrapped.actions``) for the env's current state."""
        uenv = env.unwrapped
        sig = _env_signature(uenv)
        action = self._plan.get(sig)
        if action is None:
            self._replan(uenv)
            action = self._plan.get(sig, LEFT)
        return action

    def _replan(self, uenv) -> None:
        """Plan from the true state and cache the result as {signature: action}."""
        self.replans += 1
        world = _World(uenv)
        kind = SUPPORTED_FAMILIES[self.family]
        # Fetch ends the episode when a non-target object is picked up, and GoTo* ends it
        # on any toggle: there we neither move objects out of the way nor open doors.
        planner = _Planner(
            world,
            _make_goal(uenv, self.family),
            allow_moving=kind not in (_PICKUP_MATCH, _GOTO),
            allow_doors=kind != _GOTO,
        )
        try:
            self._plan = dict(planner.plan())
            self.failed = False
        except _NoPlan:
            self._plan = {}
            self.failed = True
