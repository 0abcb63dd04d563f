"""Reward accuracy of the CLIP reward, as in Baumli et al. 2023's Figure 4: precision-recall curves of each CLIP model's
p(goal) against the environment's success, with the verified program's single point, in one figure.

The CLIP models are the ones `python -m cleanrl_vlmcar clip-train` trains on the environment's own frames (no
off-the-shelf CLIP can be downloaded here; see docs/clip-train.md). Episodes: `--n` of each of the random, novice,
sub-optimal and expert policies from seeds `--seed`.. (default 2,000,000; the script refuses seeds a model was
trained or validated on). Unit: every frame after a step, the frames the reward hook scores; a frame is a success
frame when the environment reports success at that step (MiniGrid: the episode's last step, reward > 0). The CLIP
reward's texts are the family's defaults (what `--reward clip` uses; `--negatives` replaces the negatives,
`--variant LABEL NEG...` adds a curve per model with other negatives); the curve sweeps the threshold on p(goal),
the dot on each curve is the default threshold (p(goal) > 0.5). The program's point: the shipped cache entry for
the env's `--view` walked over the same episodes in the confined worker, "done" = its last sub-task completed at
that frame.

    OMP_NUM_THREADS=2 python benchmarks/clip_pr_curves.py --env-id MiniGrid-KeyCorridorS3R1-v0 \\
        --models clip/kc-tiny clip/kc-small clip/kc-base --out benchmarks/results/figures/clip_pr_kc.png \\
        --json benchmarks/results/clip_pr_kc.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from cleanrl_vlmcar.clip_train import PR_SEED, plot_pr_curves, pr_table, reward_pr_curves
    from cleanrl_vlmcar.errors import VLMCaRError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", required=True)
    p.add_argument("--models", nargs="+", required=True, help="clip-train output directories (or any CLIP checkpoint)")
    p.add_argument("--labels", nargs="+", default=None, help="legend names (default: the size in each model's "
                                                              "train_log.json, else the directory name)")
    p.add_argument("--n", type=int, default=50, help="episodes per policy (default %(default)s)")
    p.add_argument("--seed", type=int, default=PR_SEED, help="first episode seed (default %(default)s)")
    p.add_argument("--view", default="state", help="view of the verified program (default %(default)s)")
    p.add_argument("--reward-cache", default=None, help="reward cache folder (default: the repo's reward_cache/)")
    p.add_argument("--threshold", type=float, default=0.5, help="the binary reward's threshold, marked on each curve")
    p.add_argument("--temperature", type=float, default=0.01, help="softmax temperature of p(goal)")
    p.add_argument("--negatives", nargs="+", default=None,
                   help="negative texts instead of the family's (put through the goal template; one containing "
                        "{mission} is a whole sentence)")
    p.add_argument("--variant", nargs="+", action="append", default=None, metavar=("LABEL", "NEGATIVE"),
                   help="also draw each model's curve with these negatives (first word: the legend suffix; "
                        "'{defaults}' stands for the main negatives: the family's or --negatives); repeatable")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", required=True, help="figure (PNG)")
    p.add_argument("--json", default=None, help="also write the curves and points as JSON")
    args = p.parse_args(argv)
    if args.labels and len(args.labels) != len(args.models):
        p.error("--labels needs one name per --models entry")
    if any(len(v) < 2 for v in args.variant or []):
        p.error("--variant needs a label and at least one negative text")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    labels = args.labels or [_label(m) for m in args.models]
    t0 = time.time()
    try:
        result = reward_pr_curves(args.env_id, args.models, args.n, args.seed, args.view, args.reward_cache,
                                  labels=labels, threshold=args.threshold, temperature=args.temperature,
                                  negatives=args.negatives, variants=[(v[0], tuple(v[1:])) for v in args.variant or []])
    except (VLMCaRError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.time() - t0, 1)
    result["load_average"] = list(os.getloadavg())
    print(pr_table(result))
    print(f"figure: {plot_pr_curves(result, args.out)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"json: {args.json}")
    return 0


def _label(model: str) -> str:
    log = Path(model).expanduser() / "train_log.json"
    try:
        return json.loads(log.read_text())["settings"]["size"]
    except (OSError, ValueError, KeyError):
        return Path(model).name or model


if __name__ == "__main__":
    sys.exit(main())
