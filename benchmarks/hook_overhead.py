"""How much the VLM-CaR reward hook (state view) adds to a vector-env step.

    python benchmarks/hook_overhead.py [--env-id MiniGrid-KeyCorridorS3R1-v0] [--num-envs 8] [--steps 4000]

Runs the same pre-drawn random actions through a SyncVectorEnv with and without the hook, alternating the two
several times, and prints the median cost per vector step and the ratio. Writes benchmarks/results/hook_overhead.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401
import numpy as np

from cleanrl_vlmcar.integrate import RewardHook
from cleanrl_vlmcar.program import load_program
from cleanrl_vlmcar.views import get_spec

ROOT = Path(__file__).resolve().parents[1]


def run(env_id, num_envs, steps, program, seed):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
    actions = np.random.default_rng(seed).integers(0, 6, size=(steps, num_envs))
    _, infos = envs.reset(seed=seed)
    hook = None
    if program is not None:
        hook = RewardHook(program, envs)
        hook.reset(infos)
    t0 = time.perf_counter()
    for a in actions:
        _, r, te, tr, infos = envs.step(a)
        if hook is not None:
            r = hook.step(r, te, tr, infos)
    elapsed = time.perf_counter() - t0
    envs.close()
    return elapsed / steps * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="MiniGrid-KeyCorridorS3R1-v0")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--program", default=str(ROOT / "examples" / "keycorridor_state.py"))
    args = p.parse_args()
    constants = get_spec(gym.make(args.env_id), "state").constants()
    program = load_program(Path(args.program).read_text(), constants, args.program)
    plain, hooked = [], []
    for r in range(args.repeats):
        plain.append(run(args.env_id, args.num_envs, args.steps, None, r))
        hooked.append(run(args.env_id, args.num_envs, args.steps, program, r))
    p_med, h_med = float(np.median(plain)), float(np.median(hooked))
    ratio = (h_med - p_med) / p_med
    print(f"| env | envs | vector step (us) | with hook (us) | overhead |\n| --- | --- | --- | --- | --- |\n"
          f"| {args.env_id} | {args.num_envs} | {p_med:.0f} | {h_med:.0f} | {100 * ratio:.1f}% |")
    print(f"(median of {args.repeats} alternating runs of {args.steps} steps; {platform.processor() or platform.machine()},"
          f" {__import__('os').cpu_count()} cores)")
    out = ROOT / "benchmarks" / "results" / "hook_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env_id": args.env_id, "num_envs": args.num_envs, "steps": args.steps,
                               "plain_us": plain, "hook_us": hooked, "overhead": ratio,
                               "program": Path(args.program).name, "machine": platform.machine(),
                               "cores": __import__("os").cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
