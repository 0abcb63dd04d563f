"""The pipelined reward hook on a busy machine: the confined worker under the default scheduling policy or under
SCHED_BATCH (`ProgramWorker(batch_scheduling=True)`), while other processes keep every core busy.

    OMP_NUM_THREADS=1 python benchmarks/hook_under_load.py [--busy 2] [--steps 2000] [--repeats 3]

Starts `--busy` busy-looping processes (the stand-in for other trainings sharing the cores), then runs the same
random actions through a SyncVectorEnv of 8 MiniGrid-KeyCorridorS3R1-v0 envs: without the hook, with the pipelined
hook (`submit`) and SCHED_BATCH, and with the pipelined hook and the default policy, alternating; prints the median
cost per vector step. Writes benchmarks/results/hook_under_load.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401
import numpy as np

from cleanrl_vlmcar import cache, confine
from cleanrl_vlmcar.integrate import RewardHook
from cleanrl_vlmcar.program import load_program
from cleanrl_vlmcar.views import get_spec

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "MiniGrid-KeyCorridorS3R1-v0"


def run(program, steps: int, seed: int, batch: bool | None) -> float:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID) for _ in range(8)])
    actions = np.random.default_rng(seed).integers(0, 6, size=(steps, 8))
    _, infos = envs.reset(seed=seed)
    hook = None
    if batch is not None:
        default = confine.ProgramWorker.__init__.__kwdefaults__["batch_scheduling"]
        confine.ProgramWorker.__init__.__kwdefaults__["batch_scheduling"] = batch
        try:
            hook = RewardHook(program, envs)
        finally:
            confine.ProgramWorker.__init__.__kwdefaults__["batch_scheduling"] = default
        hook.reset(infos)
    t0 = time.perf_counter()
    for a in actions:
        _, r, te, tr, infos = envs.step(a)
        if hook is not None:
            hook.submit(r, te, tr, infos)
    if hook is not None:
        hook.flush()
        hook.close()
    elapsed = time.perf_counter() - t0
    envs.close()
    return elapsed / steps * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=2, help="busy-looping processes to start (default: one per core)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    path, entry = cache.lookup(ENV_ID, "state")
    program = load_program(entry["program"], get_spec(gym.make(ENV_ID), "state").constants(), path.name)
    spin = "import time\nt = time.time()\nwhile time.time() - t < 3600:\n    sum(range(1000))"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.busy)]
    times = {"plain": [], "batch": [], "default_policy": []}
    try:
        time.sleep(0.5)
        for r in range(args.repeats):
            times["plain"].append(run(program, args.steps, r, None))
            times["batch"].append(run(program, args.steps, r, True))
            times["default_policy"].append(run(program, args.steps, r, False))
    finally:
        for b in busy:
            b.kill()
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"| {args.busy} busy processes | vector step (us) | + pipelined hook, SCHED_BATCH worker | "
          "+ pipelined hook, default policy |\n| --- | --- | --- | --- |")
    print(f"| {ENV_ID}, 8 envs | {med['plain']:.0f} | {med['batch']:.0f} ({100 * (med['batch'] / med['plain'] - 1):+.1f}%)"
          f" | {med['default_policy']:.0f} ({100 * (med['default_policy'] / med['plain'] - 1):+.1f}%) |")
    print(f"(median of {args.repeats} alternating runs of {args.steps} steps; {platform.machine()}, {os.cpu_count()} "
          "cores)")
    out = ROOT / "benchmarks" / "results" / "hook_under_load.json"
    out.write_text(json.dumps({"busy": args.busy, "steps": args.steps, "times_us": times,
                               "machine": platform.machine(), "cores": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
