"""Demonstrations for environments without a scripted expert: play them, convert them, save them.

Verification needs expert trajectories. Where no scripted expert exists (see `scripted_expert_env_ids`), it
replays a user's demonstrations instead (`--expert-source demos --demos FILE.npz`). The file format:

    seeds    (N,)               int    episode i starts with env.reset(seed=seeds[i])
    lengths  (N,)               int    and takes actions[i, :lengths[i]]
    actions  (N, T_max, *shape)        the actions, padded to the longest episode

Replaying an episode recomputes every view exactly, so one file serves every view. The first `n` successful
episodes judge the program, the next `n` are its held-out set: record at least 2n successful episodes.

    python -m cleanrl_vlmcar record-demos --env-id MiniGrid-Empty-5x5-v0 --keyboard --out demos.npz
    python -m cleanrl_vlmcar record-demos --env-id ENV --policy runs/RUN/policy.pt --episodes 40 --out demos.npz
    python -m cleanrl_vlmcar record-demos --env-id ENV --actions episodes.json --out demos.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Iterable, TextIO

import numpy as np

FORMAT_HELP = "\n\n".join(__doc__.split("\n\n")[1:4])

#: keyboard play for MiniGrid: key -> (action index, meaning)
MINIGRID_KEYS = {"a": (0, "turn left"), "d": (1, "turn right"), "w": (2, "forward"), "p": (3, "pick up"),
                 "o": (4, "drop"), "t": (5, "toggle (open a door or box)"), "x": (6, "done")}


def scripted_expert_env_ids() -> list[str]:
    """Every registered gymnasium id that `--expert-source expert` can verify against (a scripted expert exists)."""
    import importlib

    from .families import families

    for family in families():
        for module in family.env_modules:  # registers the family's ids
            importlib.import_module(module)
    return [env_id for family in families() for env_id in family.expert_env_ids()]


def save_demos(path: str | Path, episodes: list[tuple[int, Iterable]]) -> Path:
    """Write (seed, actions) episodes in the format above; returns the path."""
    if not episodes:
        raise ValueError("no episodes to save")
    acts = [np.asarray(list(a)) for _, a in episodes]
    shape = acts[0].shape[1:]
    if any(a.shape[1:] != shape for a in acts):
        raise ValueError("every action must have the same shape")
    width = max(1, max(len(a) for a in acts))
    dtype = np.result_type(*[a.dtype for a in acts if a.size] or [np.int64])
    actions = np.zeros((len(acts), width) + shape, dtype=dtype)
    for i, a in enumerate(acts):
        actions[i, : len(a)] = a
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, seeds=np.array([int(s) for s, _ in episodes], dtype=np.int64),
             lengths=np.array([len(a) for a in acts], dtype=np.int64), actions=actions)
    return path


def text_map(env) -> str:
    """A MiniGrid state as text: walls #, doors D (open /), keys K, balls O, boxes B, goal G, lava ~, the agent as
    > v < ^; each object with its colour's initial."""
    u = env.unwrapped
    rows = []
    for y in range(u.height):
        row = []
        for x in range(u.width):
            if (x, y) == tuple(int(v) for v in u.agent_pos):
                row.append(" >v<^"[1 + int(u.agent_dir)] + " ")
                continue
            cell = u.grid.get(x, y)
            if cell is None:
                row.append(". ")
            elif cell.type == "wall":
                row.append("##")
            else:
                sym = {"door": "/" if getattr(cell, "is_open", False) else "D", "key": "K", "ball": "O", "box": "B",
                       "goal": "G", "lava": "~"}.get(cell.type, "?")
                row.append(sym + (cell.color[0] if cell.type not in ("goal", "lava") else " "))
        rows.append("".join(row))
    carrying = u.carrying
    rows.append(f"mission: {u.mission}    carrying: {f'{carrying.color} {carrying.type}' if carrying else 'nothing'}")
    return "\n".join(rows)


def record_keyboard(env_id: str, episodes: int, seed: int = 0, stdin: TextIO = sys.stdin,
                    out: Callable[[str], None] = print) -> list[tuple[int, list[int], bool]]:
    """Play MiniGrid episodes from the terminal: type keys (several per line are fine) and Enter. `q` gives up
    the episode (it is not kept); the episode ends when the environment ends it. Returns (seed, actions, success)."""
    from .trajectories import make_env

    env = make_env(env_id)
    if not hasattr(env.unwrapped, "agent_dir"):
        raise ValueError(f"keyboard play is for MiniGrid environments; for {env_id} use --policy or --actions")
    keys = ", ".join(f"{k} {m}" for k, (_, m) in MINIGRID_KEYS.items())
    recorded = []
    for s in range(seed, seed + episodes):
        env.reset(seed=s)
        actions: list[int] = []
        out(f"\nepisode seed {s}. keys: {keys}; q gives up this episode\n{text_map(env)}")
        done = success = False
        while not done:
            line = stdin.readline()
            if not line:
                out("input ended")
                return recorded
            for ch in line.strip().lower():
                if ch == "q":
                    done = True
                    out("episode given up (not kept)")
                    break
                if ch not in MINIGRID_KEYS:
                    out(f"unknown key {ch!r}; keys: {keys}")
                    continue
                action = MINIGRID_KEYS[ch][0]
                _, reward, terminated, truncated, _ = env.step(action)
                actions.append(action)
                if terminated or truncated:
                    done, success = True, bool(terminated and reward > 0)
                    out(f"episode over after {len(actions)} steps: {'success' if success else 'no success'}")
                    recorded.append((s, actions, success))
                    break
            if not done:
                out(text_map(env))
    return recorded


def record_policy(env_id: str, policy: str, episodes: int, seed: int = 0) -> list[tuple[int, list, bool]]:
    """Episodes of a saved policy (`--save-model`'s policy.pt, or any policy name the trajectory store knows)."""
    from .trajectories import make_env, make_policy, rollout

    env = make_env(env_id)
    pol = make_policy(policy if ":" in policy or policy in ("random", "expert") else f"policy:{policy}", env)
    out = []
    for s in range(seed, seed + episodes):
        traj = rollout(env, pol, s, [], stop_on_success=True)  # actions and success only: no view needed
        out.append((s, [a for a in traj.actions], bool(traj.success)))
    return out


def read_action_lists(path: str | Path) -> list[tuple[int, list]]:
    """A JSON file: a list of {"seed": int, "actions": [...]} objects."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg}, line {e.lineno}); expected a list of "
                         '{"seed": 0, "actions": [2, 2, 1, ...]} objects') from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(d.get("seed"), int)
                                             and isinstance(d.get("actions"), list) for d in data):
        raise ValueError(f'{path}: expected a list of {{"seed": 0, "actions": [2, 2, 1, ...]}} objects')
    return [(d["seed"], d["actions"]) for d in data]


def replay_success(env_id: str, episodes: list[tuple[int, list]]) -> list[bool]:
    """Whether each (seed, actions) episode reaches the environment's success when replayed."""
    from .trajectories import make_env, rollout

    env = make_env(env_id)
    return [bool(rollout(env, None, s, [], stop_on_success=False, actions=np.asarray(a)).success)
            for s, a in episodes]


def cmd_record_demos(args) -> int:
    if sum(bool(x) for x in (args.keyboard, args.policy, args.actions)) != 1:
        raise ValueError("choose one source: --keyboard, --policy PATH or --actions FILE.json")
    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if args.keyboard:
        played = record_keyboard(args.env_id, args.episodes, args.seed)
        episodes, success = [(s, a) for s, a, _ in played], [ok for _, _, ok in played]
    elif args.policy:
        played = record_policy(args.env_id, args.policy, args.episodes, args.seed)
        episodes, success = [(s, a) for s, a, _ in played], [ok for _, _, ok in played]
    else:
        episodes = read_action_lists(args.actions)
        success = replay_success(args.env_id, episodes)
    if not args.keep_failed:
        episodes = [e for e, ok in zip(episodes, success) if ok]
    if not episodes:
        print("no successful episode to save", file=sys.stderr)
        return 1
    path = save_demos(args.out, episodes)
    n_ok = sum(success)
    print(f"wrote {path}: {len(episodes)} episode(s), {n_ok} of {len(success)} recorded reached the environment's "
          f"success. Verify with: python -m cleanrl_vlmcar verify --env-id {args.env_id} --expert-source demos "
          f"--demos {path} --n {max(1, n_ok // 2)}  (the first n judge, the next n are held out)")
    return 0


def add_record_demos_parser(sub) -> None:
    p = sub.add_parser("record-demos", help="record demonstrations (keyboard play, a saved policy, or action lists)",
                       description="Record demonstrations for verification with --expert-source demos.\n\n"
                                   + FORMAT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", required=True)
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--keyboard", action="store_true", help="play MiniGrid episodes in the terminal")
    p.add_argument("--policy", default=None, help="a saved policy (policy.pt from --save-model) to record")
    p.add_argument("--actions", default=None, help='a JSON list of {"seed": int, "actions": [...]} to convert')
    p.add_argument("--episodes", type=int, default=10, help="episodes to play or record (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    p.add_argument("--keep-failed", action="store_true", help="also keep episodes without the env's success")
    p.set_defaults(func=cmd_record_demos)
