"""Evaluate reward variants the way the papers do.

* Skill curve (VLM-CaR, Figure 4): the mean episode reward a reward model gives to trajectories of the random,
  novice (expert with 50% random actions), sub-optimal (30%) and expert policies. A good reward ranks them.
* Agreement with ground truth (Baumli et al., Figure 4): precision, recall and F1 of "task done" against the
  environment's own success, and for CLIP a precision-recall curve over the threshold.

    python -m cleanrl_vlmcar evaluate --env-id MiniGrid-KeyCorridorS3R1-v0 --rewards sparse vlmcar clip \\
        --clip-model PATH --out skill.png
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .compare import fmt_mean_se, mean_se

POLICIES = {"random": "random", "novice": "noisy0.5", "sub-optimal": "noisy0.3", "expert": "expert"}


@dataclass
class VariantResult:
    reward: str
    mean_return: dict[str, float]  # per policy label
    se_return: dict[str, float]
    precision: float
    recall: float
    f1: float
    pr_curve: list[tuple[float, float, float]] = field(default_factory=list)  # (threshold, precision, recall)


def _prf(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float, float]:
    tp = float((predicted & actual).sum())
    precision = tp / predicted.sum() if predicted.any() else 0.0
    recall = tp / actual.sum() if actual.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def score_vlmcar(program, trajs, view: str, bonus: float = 1.0) -> tuple[list[float], list[bool]]:
    """Returns (env return + bonus x completed sub-tasks) and "task done" for each trajectory, through the same
    in-order progress rule as the reward hook, in the confined worker."""
    from .verify import walk_all

    returns, done = [], []
    for t, walked in zip(trajs, walk_all(program, [t.views[view] for t in trajs])):
        k = sum(step is not None for step in walked.steps)
        returns.append(float(t.rewards.sum()) + bonus * k)
        done.append(k == program.num_subtasks)
    return returns, done


def score_clip(clip, trajs, batch: int = 64) -> tuple[list[float], list[np.ndarray]]:
    """Sum of CLIP rewards and per-step p(goal) of each trajectory (frames after each step)."""
    returns, p_goals = [], []
    for t in trajs:
        views = t.views["pixels"][1:]
        mission = views[0].get("mission", clip.mission) if views else clip.mission
        model = clip.for_mission(mission) if mission != clip.mission else clip
        frames = np.stack([v["rgb"] for v in views])
        rewards, p = [], []
        for i in range(0, len(frames), batch):
            r, stats = model.rewards_from_embeddings(model.embed_frames(frames[i:i + batch]))
            rewards.append(r)
            p.append(stats["p_goal"])
        returns.append(float(np.concatenate(rewards).sum()))
        p_goals.append(np.concatenate(p))
    return returns, p_goals


def evaluate(env_id: str, rewards: list[str], view: str = "state", n: int = 20, seed: int = 0,
             clip_config=None, bonus: float = 1.0, cache_dir: str | Path | None = None,
             reward_cache: str | Path | None = None, progress: bool = True) -> list[VariantResult]:
    """Score each reward variant on trajectories of the four policies."""
    from .trajectories import DEFAULT_CACHE, TrajectoryStore, collect, make_env

    env = make_env(env_id)
    program = None
    if "vlmcar" in rewards:  # found (or its absence reported) before any trajectory is simulated
        from .generate import SynthesisError, reward_program

        try:
            program = reward_program(env_id, view, reward_cache=reward_cache)
        except SynthesisError:
            raise SynthesisError(f"no verified reward program for {env_id} ({view} view) to evaluate: evaluate "
                                 f"scores programs that exist; synthesize one first (python -m cleanrl_vlmcar "
                                 f"synthesize --env-id {env_id} --view {view} --vlm openai|hf|manual), or drop "
                                 "vlmcar from --rewards") from None
    store = TrajectoryStore(Path(cache_dir or DEFAULT_CACHE) / "trajectories")
    views_needed = {view} if ("vlmcar" in rewards or "sparse" in rewards) else set()
    if "clip" in rewards:
        views_needed.add("pixels")
    trajs: dict[str, dict[str, list]] = {v: {} for v in views_needed}
    for v in views_needed:
        for label, policy in POLICIES.items():
            trajs[v][label], _ = collect(env_id, v, policy, n, seed + (10_000 if policy == "random" else 0), store,
                                         progress=progress, env=env)
    any_view = next(iter(views_needed))
    labels = list(POLICIES)
    success = {label: np.array([t.success for t in trajs[any_view][label]]) for label in labels}
    actual = np.concatenate([success[label] for label in labels])
    results = []
    for reward in rewards:
        if reward == "sparse":
            per = {label: ([float(t.rewards.sum()) for t in trajs[view][label]],
                           [t.success for t in trajs[view][label]]) for label in labels}  # the env's own signal
            pr_curve = []
        elif reward == "vlmcar":
            per = {label: score_vlmcar(program, trajs[view][label], view, bonus) for label in labels}
            pr_curve = []
        elif reward == "clip":
            from .clip_reward import ClipReward, ClipRewardConfig

            config = clip_config or ClipRewardConfig()
            first = trajs["pixels"]["expert"][0].views["pixels"][0]
            clip = ClipReward(config, first.get("mission") or env_id)
            per, p_all = {}, []
            for label in labels:
                rets, ps = score_clip(clip, trajs["pixels"][label])
                per[label] = (rets, [bool((p > config.threshold).any()) for p in ps])
                p_all += [float(p.max()) if len(p) else 0.0 for p in ps]
            p_all = np.array(p_all)
            pr_curve = []
            for thr in np.linspace(0.0, 1.0, 21):
                prec, rec, _ = _prf(p_all > thr, actual)
                pr_curve.append((float(thr), prec, rec))
        else:
            raise ValueError(f"unknown reward {reward!r}: use sparse, vlmcar or clip")
        predicted = np.concatenate([np.array(per[label][1], dtype=bool) for label in labels])
        precision, recall, f1 = _prf(predicted, actual)
        stats = {label: mean_se(per[label][0]) for label in labels}  # s.e. undefined (NaN) for one episode
        results.append(VariantResult(reward, {k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()},
                                     precision, recall, f1, pr_curve))
    return results


def table(results: list[VariantResult], env_id: str, n: int) -> str:
    labels = list(POLICIES)
    lines = [f"Mean episode reward per policy ({env_id}, {n} episodes each; novice = 50% random actions, "
             "sub-optimal = 30%) and agreement of \"task done\" with the environment's success:", "",
             "| reward | " + " | ".join(labels) + " | precision | recall | F1 |",
             "| --- |" + " --- |" * (len(labels) + 3)]
    for r in results:
        cells = [fmt_mean_se(r.mean_return[label], r.se_return[label], 2) for label in labels]
        lines.append(f"| {r.reward} | " + " | ".join(cells) + f" | {r.precision:.2f} | {r.recall:.2f} | {r.f1:.2f} |")
    return "\n".join(lines)


def plot(results: list[VariantResult], env_id: str, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(POLICIES)
    with_pr = [r for r in results if r.pr_curve]
    cols = len(results) + len(with_pr)
    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        ax.bar(labels, [r.mean_return[label] for label in labels],
               yerr=[0.0 if math.isnan(r.se_return[label]) else r.se_return[label] for label in labels],
               color=["#bbbbbb", "#9ecae1", "#4292c6", "#08519c"], capsize=3)
        ax.set_title(f"{r.reward} reward")
        ax.set_ylabel("mean episode reward")
        ax.tick_params(axis="x", labelrotation=20)
    for ax, r in zip(axes[0][len(results):], with_pr):
        _, prec, rec = zip(*r.pr_curve)
        ax.plot(rec, prec, marker=".")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{r.reward}: PR over threshold")
    fig.suptitle(env_id)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cmd_evaluate(args) -> int:
    from .clip_reward import ClipRewardConfig

    if args.n < 2:
        raise ValueError("--n must be at least 2")
    clip_config = None
    if "clip" in args.rewards:
        clip_config = ClipRewardConfig(model=args.clip_model, threshold=args.clip_threshold,
                                       temperature=args.clip_temperature)
    results = evaluate(args.env_id, args.rewards, args.view, args.n, args.seed, clip_config, args.bonus,
                       args.cache_dir, args.reward_cache)
    print(table(results, args.env_id, args.n))
    print(f"figure: {plot(results, args.env_id, args.out)}")
    if args.json:
        rows = [{**r.__dict__, "se_return": {k: None if math.isnan(v) else v for k, v in r.se_return.items()}}
                for r in results]
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.pr_curve:  # per-frame PR curve of --clip-model with the verified program's point (clip_train.py)
        from .clip_train import PR_SEED, plot_pr_curves, pr_table, reward_pr_curves

        pr = reward_pr_curves(args.env_id, [args.clip_model], args.n, PR_SEED + args.seed, args.view,
                              args.reward_cache, threshold=args.clip_threshold, temperature=args.clip_temperature)
        print(pr_table(pr))
        print(f"precision-recall figure: {plot_pr_curves(pr, args.pr_curve)}")
        Path(args.pr_curve).with_suffix(".json").write_text(json.dumps(pr, indent=2))
    return 0


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="skill curve and precision/recall of reward variants")
    p.add_argument("--env-id", required=True)
    p.add_argument("--rewards", nargs="+", default=["sparse", "vlmcar"], choices=["sparse", "vlmcar", "clip"])
    p.add_argument("--view", default="state", help="view of the vlmcar program (state, pixels, or obs for the generic family)")
    p.add_argument("--n", type=int, default=20, help="episodes per policy (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bonus", type=float, default=1.0, help="vlmcar bonus per sub-task")
    p.add_argument("--clip-model", default="openai/clip-vit-base-patch32", help="CLIP hub id or local path")
    p.add_argument("--clip-threshold", type=float, default=0.5)
    p.add_argument("--clip-temperature", type=float, default=0.01)
    p.add_argument("--out", default="skill_curve.png", help="figure path (PNG)")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    p.add_argument("--pr-curve", default=None, metavar="FIG.png",
                   help="also draw the per-frame precision-recall curve of --clip-model's p(goal) against the "
                        "environment's success on fresh episodes, with the verified program's point (and FIG.json)")
    p.add_argument("--cache-dir", default=None, help="trajectory cache folder (default .vlmcar)")
    p.add_argument("--reward-cache", default=None, help="reward cache folder (default: the repo's reward_cache/)")
    p.set_defaults(func=cmd_evaluate)
