"""The queued reward hook on a busy machine: the confined worker under the default scheduling policy or under
SCHED_BATCH (`ProgramWorker(batch_scheduling=True)`), while other processes keep every core busy.

    OMP_NUM_THREADS=1 python benchmarks/hook_under_load.py [--busy 2] [--rounds 20] [--rollout 128]

Starts `--busy` busy-looping processes (the stand-in for other trainings sharing the cores; `--busy 0` measures
beside whatever already runs), then runs rollouts of random actions through SyncVectorEnvs of 8
MiniGrid-KeyCorridorS3R1-v0 envs, as in benchmarks/hook_overhead.py: without the hook, with the queued hook
(`submit` per step, `flush` per rollout) and a SCHED_BATCH worker, and with the queued hook and the default policy,
round by round; prints the median per-round ratio to the no-hook rollout. Writes benchmarks/results/hook_under_load.json.
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hook_overhead import Setup  # noqa: E402

from cleanrl_vlmcar import cache  # noqa: E402
from cleanrl_vlmcar.program import load_program  # noqa: E402
from cleanrl_vlmcar.views import get_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "MiniGrid-KeyCorridorS3R1-v0"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=2, help="busy-looping processes to start (default: one per core)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--rollout", type=int, default=128)
    args = p.parse_args()
    path, entry = cache.lookup(ENV_ID, "state")
    program = load_program(entry["program"], get_spec(gym.make(ENV_ID), "state").constants(), path.name)
    spin = "import time\nt = time.time()\nwhile time.time() - t < 3600:\n    sum(range(1000))"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.busy)]
    setups = {"plain": Setup(ENV_ID, 8, None, "state", True, 0),
              "batch": Setup(ENV_ID, 8, program, "state", True, 0, batch_scheduling=True),
              "default_policy": Setup(ENV_ID, 8, program, "state", True, 0)}
    times = {k: [] for k in setups}
    try:
        time.sleep(0.5)
        for s in setups.values():
            s.rollout(args.rollout)
        for _ in range(args.rounds):
            for key, s in setups.items():
                times[key].append(s.rollout(args.rollout) * 1e6)
    finally:
        for b in busy:
            b.kill()
        for s in setups.values():
            s.close()
    plain = np.array(times["plain"])
    ratio = {k: float(np.median(np.array(v) / plain)) - 1 for k, v in times.items()}
    print(f"| {args.busy} busy processes | vector step (us) | + queued hook, SCHED_BATCH worker | "
          "+ queued hook, default policy |\n| --- | --- | --- | --- |")
    print(f"| {ENV_ID}, 8 envs | {np.median(plain):.0f} | {100 * ratio['batch']:+.1f}% | "
          f"{100 * ratio['default_policy']:+.1f}% |")
    print(f"(median over {args.rounds} rounds of the per-round ratio to the no-hook rollout of {args.rollout} steps; "
          f"{platform.machine()}, {os.cpu_count()} cores)")
    out = ROOT / "benchmarks" / "results" / "hook_under_load.json"
    out.write_text(json.dumps({"busy": args.busy, "rounds": args.rounds, "rollout": args.rollout, "times_us": times,
                               "overhead": ratio, "machine": platform.machine(), "cores": os.cpu_count()},
                              indent=2))


if __name__ == "__main__":
    main()
