"""`python -m cleanrl_vlmcar compare RUNS_DIR ... --out FILE.png`: learning curves and a results table.

Reads the TensorBoard event files written by `ppo_vlmcar.py` / `sac_vlmcar.py` (tensorboard's own
`EventAccumulator`, every scalar kept), groups the runs and aggregates over seeds:

* a run is a folder holding `*tfevents*` files, found recursively under each RUNS_DIR;
* its env id, algorithm (`exp_name`), reward variant and seed come from the run's `args.json`, or else
  from its name `{env_id}__{exp_name}-{reward}__{seed}__{unix_time}`;
* a group is (env id, variant) and its members are seeds. The variant is the reward (`sparse`,
  `vlmcar`, ...); when the runs found come from more than one `exp_name` (say `ppo_vlmcar` and
  `ppo_vlmcar_pixels`) it is `{exp_name}-{reward}` so that different set-ups are never averaged together.
  Two runs of the same group and seed: the one logged furthest (then the newest) is kept, with a warning.
  Runs of one group whose args.json differ elsewhere (e.g. total_timesteps, view) get a warning too; a key
  that only some of them record (a flag added to the script between runs) gets a note.

Figure: one row per env, one column per tag; per group the mean over seeds with a +-1 standard-error band
against global step. Each seed is interpolated onto a common grid of steps covering only the range that
every seed of the group logged (no extrapolation). `--smooth N` is a trailing moving average over N logged
points per seed, applied to the figure only.

Table (Markdown on stdout, `--csv` the same rows plus numeric columns), per group:

* steps to success >= threshold: per seed, the first global step at which `charts/success_rate` (already a
  100-episode moving average, so unsmoothed) reaches the threshold, counted only once the window is full
  (from the `--min-episodes`-th episode on, default 100); mean +- standard error over the seeds
  that reached it, and `not reached (k of n)` when k of n seeds never did within their logged steps;
* final success: the last logged `charts/success_rate`, mean +- se over seeds;
* final return: the mean of the last `--return-window` (default 100, the success-rate window) logged
  `charts/episodic_return` values of each seed, mean +- se over seeds (window 1 = last logged value).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUCCESS_TAG = "charts/success_rate"
RETURN_TAG = "charts/episodic_return"
DEFAULT_TAGS = [SUCCESS_TAG, RETURN_TAG]
# args.json keys that do not change what a run computes (ignored when checking a group for mixed set-ups)
_NUISANCE_ARGS = {"seed", "exp_name", "cuda", "track", "wandb_project_name", "wandb_entity", "capture_video",
                  "save_model", "torch_deterministic"}


@dataclass
class Run:
    path: Path
    env_id: str
    exp_name: str
    reward: str
    seed: int
    time: int = 0
    args: dict = field(default_factory=dict)
    tags: set = field(default_factory=set)
    scalars: dict = field(default_factory=dict)  # tag -> (steps, values), sorted by step, one value per step

    @property
    def last_step(self) -> int:
        return max((int(s[-1]) for s, _ in self.scalars.values() if len(s)), default=-1)


def parse_run_name(name: str) -> dict | None:
    """`{env_id}__{exp_name}-{reward}__{seed}__{unix_time}` -> fields, or None when it does not fit."""
    parts = name.split("__")
    if len(parts) < 4:
        return None
    env_id, middle, seed, stamp = "__".join(parts[:-3]), parts[-3], parts[-2], parts[-1]
    if "-" not in middle or not env_id:
        return None
    exp_name, reward = middle.rsplit("-", 1)
    try:
        return {"env_id": env_id, "exp_name": exp_name, "reward": reward, "seed": int(seed), "time": int(stamp)}
    except ValueError:
        return None


def run_identity(run_dir: Path) -> dict | None:
    """env_id, exp_name, reward, seed, time and the args of a run folder (args.json first, else its name)."""
    parsed = parse_run_name(run_dir.name) or {}
    args: dict = {}
    args_file = run_dir / "args.json"
    if args_file.is_file():
        try:
            loaded = json.loads(args_file.read_text())
            if isinstance(loaded, dict):
                args = loaded
        except (OSError, json.JSONDecodeError):
            print(f"warning: unreadable {args_file}; using the run name", file=sys.stderr)
    ident = {
        "env_id": args.get("env_id", parsed.get("env_id")),
        "exp_name": args.get("exp_name", parsed.get("exp_name", "")),
        "reward": args.get("reward", parsed.get("reward")),
        "seed": args.get("seed", parsed.get("seed")),
        "time": parsed.get("time", 0),
        "args": args,
    }
    if ident["env_id"] is None or ident["reward"] is None or ident["seed"] is None:
        return None
    try:
        ident["seed"] = int(ident["seed"])
    except (TypeError, ValueError):
        return None
    return ident


def find_run_dirs(root: Path) -> list[Path]:
    """Folders under root (root included) that hold TensorBoard event files."""
    found = set()
    for dirpath, _dirnames, filenames in os.walk(root):
        if any("tfevents" in f for f in filenames):
            found.add(Path(dirpath))
    return sorted(found)


def load_scalars(run_dir: Path, tags: list[str] | None = None) -> tuple[set, dict]:
    """All scalar tags of a run folder and (steps, values) of `tags` (all tags when None), every point kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1, "audio": 1, "histograms": 1,
                                                        "tensors": 1, "compressedHistograms": 1})
    acc.Reload()
    available = set(acc.Tags().get("scalars", []))
    out = {}
    for tag in available if tags is None else [t for t in tags if t in available]:
        events = acc.Scalars(tag)
        steps = np.array([e.step for e in events], dtype=np.int64)
        values = np.array([e.value for e in events], dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        out[tag] = (steps, values)
    return available, out


def collect_runs(dirs: list[str], tags: list[str]) -> list[Run]:
    runs: list[Run] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ValueError(f"{d} is not a directory")
        run_dirs = find_run_dirs(root)
        if not run_dirs:
            raise ValueError(f"no runs in {d}: no folder under it holds TensorBoard event files (*tfevents*)")
        for rd in run_dirs:
            ident = run_identity(rd)
            if ident is None:
                print(f"warning: skipping {rd}: no args.json with env_id/reward/seed and the folder name is not "
                      "{env_id}__{exp_name}-{reward}__{seed}__{time}", file=sys.stderr)
                continue
            available, scalars = load_scalars(rd, tags)
            runs.append(Run(path=rd, tags=available, scalars=scalars, **ident))
    if not runs:
        raise ValueError(f"no identifiable runs in {' '.join(dirs)}")
    return runs


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """(env_id, variant) -> runs sorted by seed, one per seed."""
    several_algos = len({r.exp_name for r in runs}) > 1
    by_key: dict[tuple[str, str, int], list[Run]] = {}
    for r in runs:
        variant = f"{r.exp_name}-{r.reward}" if several_algos else r.reward
        by_key.setdefault((r.env_id, variant, r.seed), []).append(r)
    groups: dict[tuple[str, str], list[Run]] = {}
    for (env, variant, seed), members in sorted(by_key.items()):
        members.sort(key=lambda r: (r.last_step, r.time))
        keep = members[-1]
        if len(members) > 1:
            print(f"warning: {env} {variant} seed {seed}: {len(members)} runs, keeping {keep.path} "
                  f"(logged to step {keep.last_step}); ignoring " + ", ".join(str(m.path) for m in members[:-1]),
                  file=sys.stderr)
        total = keep.args.get("total_timesteps")
        if isinstance(total, (int, float)) and 0 <= keep.last_step < 0.95 * total:
            print(f"warning: {env} {variant} seed {seed}: logged to step {keep.last_step} of {int(total)} "
                  "(still running or stopped early); its final values are not comparable", file=sys.stderr)
        groups.setdefault((env, variant), []).append(keep)
    for (env, variant), members in groups.items():
        keys = set().union(*(m.args.keys() for m in members)) - _NUISANCE_ARGS
        differing, partial = [], []
        for k in sorted(keys):
            if any(k not in m.args for m in members):  # a flag the script gained or lost between the runs
                partial.append(k)
                continue
            values = {json.dumps(m.args[k], sort_keys=True) for m in members}
            if len(values) > 1:
                differing.append(f"{k} ({', '.join(sorted(values))})")
        if differing:
            print(f"warning: {env} {variant}: the seeds' args.json differ in " + "; ".join(differing),
                  file=sys.stderr)
        if partial:
            print(f"note: {env} {variant}: only some seeds' args.json record {', '.join(partial)} "
                  "(runs made by different versions of the script?)", file=sys.stderr)
    return groups


# ---------------------------------------------------------------- statistics


def mean_se(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    if len(a) == 0:
        return math.nan, math.nan
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se


def steps_to_threshold(steps: np.ndarray, values: np.ndarray, threshold: float, not_before: int = 0) -> int | None:
    """First step >= `not_before` at which `values` reaches `threshold`."""
    hit = np.nonzero((values >= threshold) & (steps >= not_before))[0]
    return int(steps[hit[0]]) if len(hit) else None


def window_full_step(run, window: int) -> int:
    """The step of the `window`-th finished episode (one `charts/episodic_return` per episode): before it the
    success rate averages fewer episodes and a lucky first one reads as 100%."""
    if RETURN_TAG not in run.scalars:
        return 0
    steps = run.scalars[RETURN_TAG][0]
    if window <= 1 or not len(steps):
        return 0
    return int(steps[window - 1]) if len(steps) >= window else int(steps[-1]) + 1


def fmt_mean_se(mean: float, se: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    return text if math.isnan(se) else f"{text} ± {se:.{digits}f}"


def summarize(groups: dict, threshold: float, return_window: int, min_episodes: int = 100) -> list[dict]:
    rows = []
    for (env, variant), members in groups.items():
        n = len(members)
        with_success = [m for m in members if SUCCESS_TAG in m.scalars and len(m.scalars[SUCCESS_TAG][0])]
        reached = [s for s in (steps_to_threshold(*m.scalars[SUCCESS_TAG], threshold,
                                                  window_full_step(m, min_episodes)) for m in with_success)
                   if s is not None]
        not_reached = len(with_success) - len(reached)
        steps_mean, steps_se = mean_se(reached)
        if not with_success:
            steps_text = "n/a (no success_rate)"
        elif not reached:
            steps_text = f"not reached ({not_reached} of {len(with_success)})"
        else:
            steps_text = fmt_mean_se(steps_mean, steps_se, 0)
            if not_reached:
                steps_text += f" ({len(reached)} of {len(with_success)}); not reached ({not_reached} of {len(with_success)})"
        final_success = [float(m.scalars[SUCCESS_TAG][1][-1]) for m in with_success]
        fs_mean, fs_se = mean_se(final_success)
        final_return = [float(np.mean(m.scalars[RETURN_TAG][1][-return_window:])) for m in members
                        if RETURN_TAG in m.scalars and len(m.scalars[RETURN_TAG][0])]
        fr_mean, fr_se = mean_se(final_return)
        rows.append({
            "env": env, "reward": variant, "seeds": n,
            "steps_to_threshold": steps_text,
            "final_success": fmt_mean_se(fs_mean, fs_se, 2),
            "final_return": fmt_mean_se(fr_mean, fr_se, 2),
            "seed_list": " ".join(str(m.seed) for m in members),
            "steps_mean": steps_mean, "steps_se": steps_se, "reached": len(reached),
            "with_success": len(with_success),
            "final_success_mean": fs_mean, "final_success_se": fs_se,
            "final_return_mean": fr_mean, "final_return_se": fr_se,
            "last_step_min": min(m.last_step for m in members),
        })
    return rows


def markdown_table(rows: list[dict], threshold: float, return_window: int) -> str:
    header = ["env", "reward", "seeds", f"steps to success ≥ {threshold:g}", "final success",
              "final return" + ("" if return_window == 1 else f" (last {return_window} ep.)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [r["env"], r["reward"], str(r["seeds"]), r["steps_to_threshold"], r["final_success"], r["final_return"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_FIELDS = ["env", "reward", "seeds", "steps_to_threshold", "final_success", "final_return", "seed_list",
              "threshold", "steps_mean", "steps_se", "reached", "with_success", "final_success_mean",
              "final_success_se", "final_return_mean", "final_return_se", "last_step_min"]


def write_csv(path: str, rows: list[dict], threshold: float) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**{k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()},
                        "threshold": threshold})


# ---------------------------------------------------------------- figure


def _smooth(values: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or len(values) < 2:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    k = np.arange(len(values))
    lo = np.maximum(0, k - n + 1)
    out[:] = (c[k + 1] - c[lo]) / (k + 1 - lo)
    return out


def _unique_steps(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Several values at one step (episodes of parallel envs ending together) -> their mean, for np.interp."""
    uniq, inverse = np.unique(steps, return_inverse=True)
    if len(uniq) == len(steps):
        return steps, values
    return uniq, np.bincount(inverse, weights=values) / np.bincount(inverse)


def group_curve(members: list[Run], tag: str, smooth: int, points: int = 300):
    """(grid, mean, se, n) over the seeds that logged `tag`, on the step range all of them cover; or None."""
    series = [m.scalars[tag] for m in members if tag in m.scalars and len(m.scalars[tag][0])]
    if not series:
        return None
    lo = max(int(s[0]) for s, _ in series)
    hi = min(int(s[-1]) for s, _ in series)
    if hi < lo:
        return None
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([float(lo)])
    ys = np.stack([np.interp(grid, *_unique_steps(s, _smooth(v, smooth))) for s, v in series])
    mean = ys.mean(axis=0)
    se = ys.std(axis=0, ddof=1) / math.sqrt(len(series)) if len(series) > 1 else None
    return grid, mean, se, len(series)


def _steps_label(x: float, _pos=None) -> str:
    """Axis label for a step count: 0, 500, 50k, 1.5M (plain numbers of six digits overlap on narrow panels)."""
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def plot(groups: dict, tags: list[str], out: str, smooth: int, threshold: float) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({env for env, _ in groups})
    variants = sorted({v for _, v in groups})
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    fig, axes = plt.subplots(len(envs), len(tags), figsize=(5.2 * len(tags), 3.6 * len(envs)), squeeze=False)
    for i, env in enumerate(envs):
        for j, tag in enumerate(tags):
            ax = axes[i][j]
            for variant in variants:
                members = groups.get((env, variant))
                curve = group_curve(members, tag, smooth) if members else None
                if curve is None:
                    continue
                grid, mean, se, n = curve
                label = f"{variant} (n={n})"
                if len(grid) == 1:
                    ax.plot(grid, mean, "o", color=colors[variant], label=label)
                else:
                    ax.plot(grid, mean, color=colors[variant], label=label)
                if se is not None and len(grid) > 1:
                    ax.fill_between(grid, mean - se, mean + se, color=colors[variant], alpha=0.25, linewidth=0)
            if tag == SUCCESS_TAG:
                ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
            ax.set_title(f"{env}\n{tag}", fontsize=9)
            ax.set_xlabel("global step")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_steps_label))
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle("mean over seeds ± standard error" + (f", smoothed over {smooth} points" if smooth > 1 else ""),
                 fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise ValueError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- CLI


def _check_writable(path: str, what: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {path} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {what} {path}: folder {parent} does not exist")
    if (p.exists() and not os.access(p, os.W_OK)) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {path}: permission denied")


def cmd_compare(args) -> int:
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError("--threshold must be within [0, 1] (it applies to charts/success_rate)")
    if args.smooth < 1:
        raise ValueError("--smooth must be at least 1")
    if args.return_window < 1:
        raise ValueError("--return-window must be at least 1")
    _check_writable(args.out, "--out")
    ext = Path(args.out).suffix.lower().lstrip(".")
    supported = {"png", "pdf", "svg", "svgz", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"}
    if ext not in supported:
        raise ValueError(f"--out {args.out}: use an image file name ending in .png (or .pdf, .svg, ...)")
    if args.csv:
        _check_writable(args.csv, "--csv")
    tags = list(dict.fromkeys(args.tags))
    wanted = list(dict.fromkeys(tags + [SUCCESS_TAG, RETURN_TAG]))
    runs = collect_runs(args.runs_dirs, wanted)
    existing = set().union(*(r.tags for r in runs))
    missing = [t for t in tags if t not in existing]
    if missing:
        raise ValueError(f"tag {', '.join(missing)} is in none of the {len(runs)} runs; tags that exist: "
                         + ", ".join(sorted(existing)))
    groups = group_runs(runs)
    rows = summarize(groups, args.threshold, args.return_window, args.min_episodes)
    plot(groups, tags, args.out, args.smooth, args.threshold)
    print(markdown_table(rows, args.threshold, args.return_window))
    print(f"\n{len(runs)} runs in {len(groups)} groups; figure: {args.out}")
    if args.csv:
        try:
            write_csv(args.csv, rows, args.threshold)
        except OSError as e:
            raise ValueError(f"cannot write {args.csv}: {e.strerror or e}") from None
        print(f"table: {args.csv}")
    return 0


def add_compare_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="plot learning curves (mean ± se over seeds) and print a results table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="folders searched recursively for runs")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf, .svg)")
    p.add_argument("--tags", nargs="+", default=DEFAULT_TAGS, help="scalar tags, one figure column each "
                   "(default: %(default)s)")
    p.add_argument("--min-episodes", type=int, default=100,
                   help="count success only from this many finished episodes on (the success-rate window fills)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="success-rate level for 'steps to success' (default %(default)s)")
    p.add_argument("--smooth", type=int, default=1, help="moving average over N logged points, figure only")
    p.add_argument("--return-window", type=int, default=100,
                   help="final return = mean of each seed's last N episodes (default %(default)s)")
    p.add_argument("--csv", default=None, help="also write the table rows as CSV here")
    p.set_defaults(func=cmd_compare)
    return p
