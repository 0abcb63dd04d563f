"""How far do the agents get? Per run group, the mean of each `vlmcar/subtask_k_rate` (fraction of episodes that
completed sub-task k, logged by the reward hook) over windows of training steps, as mean ± standard error over
seeds. Reads the stored TensorBoard event files with the same loaders as `python -m cleanrl_vlmcar compare`.

    python benchmarks/subtask_rates.py benchmarks/results/minigrid/runs --env-id MiniGrid-UnlockPickup-v0 \
        --json benchmarks/results/subtask_rates_UnlockPickup.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from cleanrl_vlmcar.compare import collect_runs, fmt_mean_se, group_runs, mean_se

TAG = re.compile(r"^vlmcar/subtask_(\d+)_rate$")


def window_means(steps: np.ndarray, values: np.ndarray, edges: list[int]) -> list[float | None]:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = values[(steps >= lo) & (steps < hi)]
        out.append(float(inside.mean()) if len(inside) else None)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs_dir", nargs="+")
    p.add_argument("--env-id", required=True)
    p.add_argument("--windows", type=int, default=5, help="equal windows over the shortest group's steps")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()

    runs = [r for r in collect_runs(args.runs_dir, tags=None) if r.env_id == args.env_id]
    runs = [r for r in runs if any(TAG.match(t) for t in r.scalars)]
    if not runs:
        print(f"no runs of {args.env_id} with vlmcar/subtask_k_rate tags under {' '.join(args.runs_dir)}",
              file=sys.stderr)
        return 2
    groups = group_runs(runs)
    end = min(min(r.last_step for r in members) for members in groups.values())
    edges = [int(round(end * i / args.windows)) for i in range(args.windows + 1)]
    edges[-1] = end + 1
    table = {}
    header = " | ".join(f"{edges[i] // 1000}k-{edges[i + 1] // 1000}k" for i in range(args.windows))
    print(f"| variant | sub-task | {header} |\n|---|---|" + "---|" * args.windows)
    for (_, variant), members in groups.items():
        n_sub = max(int(TAG.match(t).group(1)) for r in members for t in r.scalars if TAG.match(t))
        table[variant] = {"seeds": [r.seed for r in members], "edges": edges, "subtasks": {}}
        for k in range(1, n_sub + 1):
            per_seed = [window_means(*r.scalars[f"vlmcar/subtask_{k}_rate"], edges) for r in members]
            cells, stats = [], []
            for w in range(args.windows):
                xs = [s[w] for s in per_seed if s[w] is not None]
                mean, se = mean_se(xs)
                stats.append({"mean": mean, "se": se, "n": len(xs)})
                cells.append(fmt_mean_se(mean, se, 2) if xs else "-")
            table[variant]["subtasks"][k] = stats
            print(f"| {variant} (n={len(members)}) | {k} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"env_id": args.env_id, "groups": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
