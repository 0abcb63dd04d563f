"""Steps per second of ppo_vlmcar.py (--reward sparse) against CleanRL's own ppo.py on CartPole-v1.

    python benchmarks/sps_vs_cleanrl.py --cleanrl-ppo PATH/TO/cleanrl/ppo.py [--steps 50000] [--repeats 3]

CleanRL's ppo.py is not installable beside minigrid 3 (the PyPI package pins Python < 3.11), so pass your own copy
of the file. Both scripts run with CleanRL's defaults (4 envs, 128 steps), alternately, in fresh processes with
OMP_NUM_THREADS=1; the final `SPS:` line of each run is compared (median over repeats).
Writes benchmarks/results/sps_vs_cleanrl.json.
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sps(cmd: list[str], cwd: str, steps: int) -> tuple[int, float]:
    """(the run's own final SPS, steps per CPU second of the process): the second is stable when other work
    shares the machine, since it counts only this process's CPU time (start-up included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int(re.findall(r"SPS: (\d+)", out)[-1]), steps / cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cleanrl-ppo", required=True, help="path to CleanRL's ppo.py")
    p.add_argument("--steps", type=int, default=50000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not Path(args.cleanrl_ppo).exists():
        sys.exit(f"error: {args.cleanrl_ppo} does not exist")
    common = ["--env-id", "CartPole-v1", "--total-timesteps", str(args.steps), "--num-envs", "4"]
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            theirs.append(sps([sys.executable, args.cleanrl_ppo, *common], cwd, args.steps))
            ours.append(sps([sys.executable, str(ROOT / "ppo_vlmcar.py"), *common, "--reward", "sparse"], cwd,
                            args.steps))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    wall = med([o for o, _ in ours]) / med([t for t, _ in theirs]) - 1
    cpu = med([o for _, o in ours]) / med([t for _, t in theirs]) - 1
    print("| script | SPS (wall) per run | steps per CPU second per run |\n| --- | --- | --- |")
    for name, runs in (("CleanRL ppo.py", theirs), ("ppo_vlmcar.py --reward sparse", ours)):
        print(f"| {name} | {[w for w, _ in runs]} | {[round(c) for _, c in runs]} |")
    print(f"ppo_vlmcar.py vs CleanRL (medians): wall SPS {100 * wall:+.1f}%, steps per CPU second {100 * cpu:+.1f}% "
          f"({platform.machine()}, {os.cpu_count()} cores, CartPole-v1, {args.steps} steps, {args.repeats} alternating "
          "runs, OMP_NUM_THREADS=1)")
    out = ROOT / "benchmarks" / "results" / "sps_vs_cleanrl.json"
    out.write_text(json.dumps({"cleanrl": theirs, "ours": ours, "wall_ratio": wall, "cpu_ratio": cpu,
                               "steps": args.steps, "machine": platform.machine(), "cores": os.cpu_count(),
                               "load_avg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
