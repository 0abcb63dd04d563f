"""Why do UnlockPickup episodes fail after the agent reaches the box? Rolls out a policy saved by
`ppo_vlmcar.py --save-model` (its TorchScript `policy.pt`, actions sampled as in training) on fresh seeds and
classifies each episode: success; timed out after facing the box with empty hands (box still there); the box
destroyed (toggling a box replaces it with its contents: UnlockPickup's box is empty); never faced the box. Also
the policy's mean action probabilities while facing the box with empty hands, the most common (action, carrying,
cell in front) after the first time it faced the box in episodes that timed out, and what the agent held at
their end.

    OMP_NUM_THREADS=1 python benchmarks/unlockpickup_failures.py RUN_DIR/policy.pt [--episodes 300] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json

import gymnasium as gym
import minigrid  # noqa: F401 - registers the envs
import numpy as np
import torch
from minigrid.wrappers import ImgObsWrapper

ACTIONS = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policy")
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--first-seed", type=int, default=10_000, help="env seeds first-seed, first-seed + 1, ...")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    policy = torch.jit.load(args.policy)
    outcomes, after, held = collections.Counter(), collections.Counter(), collections.Counter()
    facing_probs = []
    for ep in range(args.episodes):
        env = ImgObsWrapper(gym.make("MiniGrid-UnlockPickup-v0"))
        obs, _ = env.reset(seed=args.first_seed + ep)
        u = env.unwrapped
        trail, reward = [], 0.0
        for _ in range(u.max_steps):
            with torch.no_grad():
                logits = policy(torch.as_tensor(obs[None]))
            a = int(torch.distributions.Categorical(logits=logits).sample())
            front = u.grid.get(*u.front_pos)
            if u.carrying is None and front is not None and front.type == "box":
                facing_probs.append(torch.softmax(logits, -1)[0].numpy())
                trail = trail or [None]  # faced: record from here on
            if trail:
                trail.append((ACTIONS[a], u.carrying.type if u.carrying else None, front.type if front else None))
            obs, reward, term, trunc, _ = env.step(a)
            if term or trunc:
                break
        box_left = any(o is not None and o.type == "box" for o in u.grid.grid) or \
            (u.carrying is not None and u.carrying.type == "box")
        if reward > 0:
            outcome = "success"
        elif not trail:
            outcome = "never faced the box"
        elif not box_left:
            outcome = "box destroyed"
        else:
            outcome = "faced the box, timed out"
            after.update(trail[1:])
            held[u.carrying.type if u.carrying else "nothing"] += 1
        outcomes[outcome] += 1
    result = {
        "policy": args.policy, "episodes": args.episodes, "outcomes": dict(outcomes),
        "action_probs_facing_box_empty_handed": {a: round(float(x), 3) for a, x in zip(ACTIONS, np.mean(facing_probs, 0))}
        if facing_probs else {},
        "held_at_the_end_of_timeouts_after_facing": dict(held),
        "most_common_after_facing_in_timeouts": [[list(k), v] for k, v in after.most_common(10)],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
