"""Where does a CLIP reward fire? A sweep over the states of MiniGrid KeyCorridor layouts, not over the states some
policy happens to visit.

The precision-recall benchmark (clip_pr_curves.py) scores the frames of four scripted policies. A learning agent
visits other states, and a learned reward is only as good as its worst state that the agent can reach. This script
builds, for each of `--layouts` layouts (seeds from `--seed`), every combination of: the agent on every cell it can
stand on (empty floor, the door when open), facing each of the 4 directions; the locked door locked, closed
(unlocked) or open; the agent carrying nothing, the key, or the mission's object (the success state; not with the
door locked); the key, when not carried, on any free cell (where it started, or dropped there). It renders each
state's full frame exactly as the `pixels` view does (`get_frame(highlight=False, tile_size=16)`), scores it with
`ClipReward` (the family's texts, or `--negatives`), and reports how often the binary reward (p(goal) > threshold)
is paid in non-success states, overall and per (carrying, door) group, against its recall on the success states.

    python benchmarks/clip_state_sweep.py --env-id MiniGrid-KeyCorridorS3R1-v0 --clip-model DIR \\
        [--negatives TEXT ...] [--layouts 20] [--json OUT.json]

A carried object is not drawn on the grid (MiniGrid draws what lies on cells), so carrying the key and carrying the
object differ in the frame only by which of them is missing from its cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

TILE = 16


def layout_states(env, seed: int):
    """(frame, success, group) for every swept state of the layout of `seed`."""
    env.reset(seed=seed)
    u = env.unwrapped
    target = getattr(u, "obj", None)  # the object of a pick-up mission (KeyCorridor, UnlockPickup)
    grid = u.grid
    key = door = None
    key_pos = None
    for i in range(grid.width):
        for j in range(grid.height):
            c = grid.get(i, j)
            if c is not None and c.type == "key":
                key, key_pos = c, (i, j)
            if c is not None and c.type == "door" and c.is_locked:
                door = c
    if key is None or door is None or target is None or target.cur_pos is None:
        raise ValueError(f"layout {seed} of {u.spec.id if u.spec else type(u).__name__} has no key or locked door or "
                         "no object to pick up; this sweep is for KeyCorridor-like layouts")
    target_pos = tuple(target.cur_pos)
    grid.set(*key_pos, None)
    grid.set(*target_pos, None)
    door_pos = tuple(door.cur_pos)
    free = [(i, j) for i in range(grid.width) for j in range(grid.height)
            if grid.get(i, j) is None and (i, j) != target_pos]  # cells the agent or a dropped key can occupy
    out = []
    for door_state in ("locked", "closed", "open"):
        door.is_locked, door.is_open = door_state == "locked", door_state == "open"
        stand = free + ([door_pos] if door_state == "open" else [])
        for carrying in ("nothing", "key", "object"):
            if carrying == "object" and door_state == "locked":
                continue  # the object lies behind the locked door
            # where the key lies: carried, or on any free cell (where it started, or dropped)
            key_cells = [None] if carrying == "key" else free
            for kc in key_cells:
                if kc is not None:
                    grid.set(*kc, key)
                if carrying != "object":
                    grid.set(*target_pos, target)
                u.carrying = {"nothing": None, "key": key, "object": target}[carrying]
                for pos in stand:
                    if pos == kc:
                        continue
                    for d in range(4):
                        u.agent_pos, u.agent_dir = pos, d
                        frame = u.get_frame(highlight=False, tile_size=TILE)
                        where = "carried" if kc is None else ("at its start" if kc == key_pos else "dropped")
                        out.append((frame, carrying == "object",
                                    f"carrying {carrying}, key {where}, door {door_state}"))
                if kc is not None:
                    grid.set(*kc, None)
                grid.set(*target_pos, None)
    grid.set(*key_pos, key)
    grid.set(*target_pos, target)
    door.is_locked, door.is_open = True, False
    return out, u.mission


def main(argv: list[str] | None = None) -> int:
    from cleanrl_vlmcar.clip_reward import ClipReward, ClipRewardConfig
    from cleanrl_vlmcar.clip_train import reward_texts
    from cleanrl_vlmcar.errors import VLMCaRError
    from cleanrl_vlmcar.trajectories import make_env

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="MiniGrid-KeyCorridorS3R1-v0")
    p.add_argument("--clip-model", required=True)
    p.add_argument("--negatives", nargs="+", default=None, help="negative texts instead of the family's")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--layouts", type=int, default=20)
    p.add_argument("--seed", type=int, default=3_000_000, help="first layout seed (default %(default)s)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.layouts < 1:
        p.error("--layouts must be at least 1")
    template, negatives = reward_texts(args.env_id)
    try:
        env = make_env(args.env_id)
        env.reset(seed=args.seed)
        clip = ClipReward(ClipRewardConfig(model=args.clip_model, goal_template=template, device="cpu",
                                           negatives=tuple(args.negatives or negatives), threshold=args.threshold),
                          env.unwrapped.mission)
        paid, success, groups = [], [], []
        for s in range(args.seed, args.seed + args.layouts):
            states, mission = layout_states(env, s)
            c = clip.for_mission(mission) if mission != clip.mission else clip
            frames = np.stack([f for f, _, _ in states])
            r = np.concatenate([c(frames[i:i + 256])[0] for i in range(0, len(frames), 256)])
            paid.append(r > 0)
            success += [y for _, y, _ in states]
            groups += [g for _, _, g in states]
    except (VLMCaRError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paid, success = np.concatenate(paid), np.array(success)
    by = defaultdict(list)
    for g, r in zip(groups, paid):
        by[g].append(bool(r))
    result = {"env_id": args.env_id, "model": args.clip_model, "negatives": list(args.negatives or negatives),
              "threshold": args.threshold, "layouts": [args.seed, args.seed + args.layouts - 1],
              "states": int(len(paid)), "success_states": int(success.sum()),
              "paid_in_non_success_states": float(paid[~success].mean()),
              "paid_in_success_states": float(paid[success].mean()),
              "precision_over_states": float(paid[success].sum() / max(paid.sum(), 1)),
              "groups": {g: {"states": len(v), "paid": float(np.mean(v))} for g, v in sorted(by.items())}}
    print(f"{args.env_id}, {args.layouts} layouts, {result['states']} states ({result['success_states']} success "
          f"states), {args.clip_model}, negatives {result['negatives']}:")
    print("| state | states | paid (p(goal) > threshold) |")
    print("| --- | --- | --- |")
    for g, v in result["groups"].items():
        print(f"| {g} | {v['states']} | {v['paid']:.3f} |")
    print(f"\npaid in non-success states: {result['paid_in_non_success_states']:.3f}; in success states: "
          f"{result['paid_in_success_states']:.3f}; precision over the swept states: "
          f"{result['precision_over_states']:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
