"""Success rate of the scripted MiniGrid expert on the paper environments.

Runs seeds 0..N-1 per env (success = the episode terminates with reward > 0 before
truncation), prints a Markdown table and writes the rows as JSON to
``benchmarks/results/expert_success_minigrid.json``.

    python benchmarks/expert_success_minigrid.py [--seeds 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)

from cleanrl_vlmcar.experts.minigrid import MiniGridExpert

ENV_IDS = [
    "MiniGrid-DoorKey-5x5-v0",
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-DoorKey-8x8-v0",
    "MiniGrid-Unlock-v0",
    "MiniGrid-UnlockPickup-v0",
    "MiniGrid-BlockedUnlockPickup-v0",
    "MiniGrid-KeyCorridorS3R1-v0",
    "MiniGrid-KeyCorridorS3R2-v0",
    "MiniGrid-KeyCorridorS3R3-v0",
]
OUT = Path(__file__).resolve().parent / "results" / "expert_success_minigrid.json"


def evaluate(env_id: str, seeds: int) -> dict:
    """Run the expert for ``seeds`` episodes; return one result row."""
    env = gym.make(env_id)
    expert = MiniGridExpert(env)
    successes, steps, act_time, calls = 0, [], 0.0, 0
    for seed in range(seeds):
        obs, _ = env.reset(seed=seed)
        expert.reset(env, obs)
        n = 0
        while True:
            t0 = time.perf_counter()
            action = expert.act(env, obs)
            act_time += time.perf_counter() - t0
            calls += 1
            obs, reward, terminated, truncated, _ = env.step(action)
            n += 1
            if terminated or truncated:
                break
        steps.append(n)
        successes += bool(terminated and reward > 0)
    env.close()
    return {
        "env": env_id,
        "seeds": seeds,
        "success": successes / seeds,
        "mean_steps": sum(steps) / len(steps),
        "act_us_per_call": 1e6 * act_time / calls,
    }


def main() -> None:
    """Evaluate every env, print the Markdown table and write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    rows = [evaluate(env_id, args.seeds) for env_id in ENV_IDS]
    print("| env | seeds | success | mean steps |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['env']} | {r['seeds']} | {100 * r['success']:.0f}% | {r['mean_steps']:.1f} |")
    print("\nact() time per call (us, plan cached after the first call of an episode): "
          + ", ".join(f"{r['env'].removeprefix('MiniGrid-')}={r['act_us_per_call']:.0f}" for r in rows))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
