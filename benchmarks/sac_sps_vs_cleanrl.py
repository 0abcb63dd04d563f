"""Steps per second of sac_vlmcar.py (--reward sparse) against CleanRL's own sac_continuous_action.py on panda-gym.

    python benchmarks/sac_sps_vs_cleanrl.py --cleanrl-sac PATH/TO/sac_continuous_action.py [--env-id PandaPush-v3]
        [--steps 4000] [--learning-starts 1000] [--repeats 3]

CleanRL is not installable beside minigrid 3 (the PyPI package pins Python < 3.11), so pass your own copy of the
file with only the changes gymnasium 1.x needs (no final_info/final_observation under next-step autoreset) and
panda-gym's Dict observation flattened (and `stable_baselines3.common.buffers.ReplayBuffer` imported directly, which
is what `cleanrl_utils.buffers` re-exports). Both scripts run with the same steps, learning start, batch and network
sizes, alternately, in fresh processes with OMP_NUM_THREADS=1; the final `SPS:` line of each run and its steps per
CPU second are compared (median over repeats). Writes benchmarks/results/sac_sps_vs_cleanrl.json.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sps_vs_cleanrl import sps  # noqa: E402 - one timing function for both comparisons

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cleanrl-sac", required=True, help="path to your copy of CleanRL's sac_continuous_action.py")
    p.add_argument("--env-id", default="PandaPush-v3")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not Path(args.cleanrl_sac).exists():
        sys.exit(f"error: {args.cleanrl_sac} does not exist")
    common = ["--env-id", args.env_id, "--total-timesteps", str(args.steps), "--learning-starts",
              str(args.learning_starts)]
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            theirs.append(sps([sys.executable, args.cleanrl_sac, *common], cwd, args.steps))
            ours.append(sps([sys.executable, str(ROOT / "sac_vlmcar.py"), *common, "--reward", "sparse"], cwd,
                            args.steps))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    wall = med([o for o, _ in ours]) / med([t for t, _ in theirs])
    cpu = med([o for _, o in ours]) / med([t for _, t in theirs])
    print("| script | SPS (wall) per run | steps per CPU second per run |\n| --- | --- | --- |")
    for name, runs in (("CleanRL sac_continuous_action.py", theirs), ("sac_vlmcar.py --reward sparse", ours)):
        print(f"| {name} | {[w for w, _ in runs]} | {[round(c, 1) for _, c in runs]} |")
    print(f"sac_vlmcar.py / CleanRL (medians): wall SPS {wall:.2f}x, steps per CPU second {cpu:.2f}x "
          f"({platform.machine()}, {os.cpu_count()} cores, {args.env_id}, {args.steps} steps from "
          f"{args.learning_starts}, {args.repeats} alternating runs, OMP_NUM_THREADS=1)")
    out = ROOT / "benchmarks" / "results" / "sac_sps_vs_cleanrl.json"
    out.write_text(json.dumps({"cleanrl": theirs, "ours": ours, "wall_ratio": wall, "cpu_ratio": cpu,
                               "env_id": args.env_id, "steps": args.steps, "learning_starts": args.learning_starts,
                               "machine": platform.machine(), "cores": os.cpu_count(),
                               "load_avg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
