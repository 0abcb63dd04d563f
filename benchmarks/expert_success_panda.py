"""Success rate of the scripted panda-gym experts (cleanrl_vlmcar.experts.panda).

For every env and seed s in [0, seeds): ``obs, info = env.reset(seed=s)``, then the expert
acts until the episode terminates or is truncated (50 steps, panda-gym's TimeLimit).  An
episode counts as a success when ``info["is_success"]`` is true after any step.

Prints a Markdown table and writes the rows as JSON to
``benchmarks/results/expert_success_panda.json``.

    python benchmarks/expert_success_panda.py [--seeds 100] [--envs PandaReach-v3 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import panda_gym  # noqa: F401  (registers the Panda envs)

from cleanrl_vlmcar.experts.panda import PandaExpert

DEFAULT_ENVS = ("PandaReach-v3", "PandaPush-v3", "PandaSlide-v3", "PandaPickAndPlace-v3")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "expert_success_panda.json"


def run_episode(env, expert: PandaExpert, seed: int) -> tuple[bool, int]:
    """Return (success, steps taken when success was first reported, or episode length)."""
    obs, _ = env.reset(seed=seed)
    expert.reset(env, obs)
    steps = 0
    while True:
        action = expert.act(env, obs)
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        if info.get("is_success", False):
            return True, steps
        if terminated or truncated:
            return False, steps


def evaluate(env_id: str, n_seeds: int) -> dict:
    env = gym.make(env_id)
    try:
        expert = PandaExpert(env)
        results = [run_episode(env, expert, seed) for seed in range(n_seeds)]
    finally:
        env.close()
    success_steps = [steps for ok, steps in results if ok]
    n_success = len(success_steps)
    return {
        "env": env_id,
        "seeds": n_seeds,
        "success": n_success / n_seeds,
        "n_success": n_success,
        "mean_steps_to_success": float(np.mean(success_steps)) if success_steps else None,
        "failed_seeds": [seed for seed, (ok, _) in enumerate(results) if not ok],
    }


def to_markdown(rows: list[dict]) -> str:
    lines = ["| env | seeds | success | mean steps to success |", "|---|---|---|---|"]
    for r in rows:
        steps = "n/a" if r["mean_steps_to_success"] is None else f"{r['mean_steps_to_success']:.1f}"
        lines.append(f"| {r['env']} | {r['seeds']} | {r['n_success']}/{r['seeds']} ({100 * r['success']:.0f}%) | {steps} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100, help="seeds 0..N-1 per env")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args()

    rows = []
    for env_id in args.envs:
        t0 = time.time()
        rows.append(evaluate(env_id, args.seeds))
        print(f"{env_id}: {rows[-1]['n_success']}/{args.seeds} in {time.time() - t0:.1f}s", flush=True)
    print()
    print(to_markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
