"""What PPO did with the CLIP reward: a table per run and per variant from the stored TensorBoard event files.

For each run of `--reward clip` (variants named by their exp name, e.g. `ppo_vlmcar_clip_tinybest_end`): the final
success (`charts/success_rate`, the environment's own, over the last 100 episodes), the best success after the
first `--after` steps, the best CLIP return per episode (`charts/shaped_return`, what the agent was trained on), and
the fraction of frames the CLIP reward paid (`clip/rewarded_fraction`) at its highest and at the end. A CLIP return far
above 1 with success near 0 means the agent collects the reward on frames that are not success frames.

    python benchmarks/clip_runs_table.py benchmarks/results/minigrid/runs --env-id MiniGrid-KeyCorridorS3R1-v0 \\
        [--match clip_tinybest] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TAGS = ["charts/success_rate", "charts/shaped_return", "clip/rewarded_fraction", "clip/episodes_ended"]


def run_row(run, after: int) -> dict:
    def series(tag):
        return run.scalars.get(tag, (np.zeros(0, dtype=np.int64), np.zeros(0)))

    def best_after(tag):
        s, v = series(tag)
        keep = v[s > after] if (s > after).any() else v
        return float(keep.max()) if len(keep) else None

    def last(tag):
        return float(series(tag)[1][-1]) if len(series(tag)[1]) else None

    return {"variant": run.exp_name, "seed": run.seed, "last_step": run.last_step,
            "final_success": last("charts/success_rate"), "best_success": best_after("charts/success_rate"),
            "best_clip_return": best_after("charts/shaped_return"),
            "rewarded_fraction_max": best_after("clip/rewarded_fraction"),
            "rewarded_fraction_end": last("clip/rewarded_fraction"),
            "episodes_ended_by_clip": last("clip/episodes_ended")}


def _pm(mean: float, se: float) -> str:
    return f"{mean:.2f}" if not np.isfinite(se) else f"{mean:.2f} ± {se:.2f}"


def _fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    from cleanrl_vlmcar.compare import collect_runs, mean_se

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", help="folder of run folders (benchmarks/results/minigrid/runs)")
    p.add_argument("--env-id", required=True)
    p.add_argument("--match", default="clip", help="keep variants whose exp name contains this (default %(default)s)")
    p.add_argument("--after", type=int, default=20_000, help="best values are taken after this many steps")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    try:
        runs = [r for r in collect_runs([args.runs], TAGS)
                if r.env_id == args.env_id and r.reward == "clip" and args.match in r.exp_name]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no --reward clip runs of {args.env_id} matching {args.match!r} in {args.runs}", file=sys.stderr)
        return 2
    rows = [run_row(r, args.after) for r in sorted(runs, key=lambda r: (r.exp_name, r.seed))]
    print(f"| variant | seed | steps | final success | best success (after {args.after // 1000}k) | best CLIP return "
          "per episode | rewarded frames, max / end | episodes ended by CLIP |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['last_step']} | {_fmt(r['final_success'])} | "
              f"{_fmt(r['best_success'])} | {_fmt(r['best_clip_return'], 0)} | {_fmt(r['rewarded_fraction_max'], 3)} / "
              f"{_fmt(r['rewarded_fraction_end'], 3)} | {_fmt(r['episodes_ended_by_clip'], 0)} |")
    print()
    print("| variant | seeds | final success | best success |")
    print("| --- | --- | --- | --- |")
    for v in sorted({r["variant"] for r in rows}):
        members = [r for r in rows if r["variant"] == v]
        fs = mean_se([r["final_success"] for r in members if r["final_success"] is not None])
        bs = mean_se([r["best_success"] for r in members if r["best_success"] is not None])
        print(f"| {v} | {len(members)} | {_pm(*fs)} | {_pm(*bs)} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
