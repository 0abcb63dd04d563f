"""Refine: a training run's sub-task curves go back to the VLM, which refines the program's decomposition.

`python -m cleanrl_vlmcar refine --env-id ENV --from-run runs/RUN` reads the program the run trained on (the
`vlmcar_program` record of its args.json) and its TensorBoard curves (`vlmcar/subtask_k_rate`,
`charts/success_rate`, `charts/episodic_return`), finds where progress stalls, and asks the VLM for a refined
program (Eureka-style reward reflection). The answer goes through the same generate -> verify -> feedback loop as
`synthesize`; a refined program that passes verification becomes a new reward cache entry that records its
`parent` and the run it was `refined_from_run`.

The summary functions (`downsample`, `summarise_curve`, `find_stall`, `summarise`, `curves_table`) are pure.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

DEFAULT_THRESHOLD = 0.5
MAX_POINTS = 10
RETURN_WINDOW = 10  # the final episodic return is the mean of the last this-many logged episodes
SUBTASK_TAG = "vlmcar/subtask_{k}_rate"
SUCCESS_TAG = "charts/success_rate"
RETURN_TAG = "charts/episodic_return"
_TIE = 1e-9

Curve = list[tuple[int, float]]


def _by_step(points) -> Curve:
    """(step, value) pairs sorted by step only: values logged at one step keep their order."""
    return sorted(((int(s), float(v)) for s, v in points), key=lambda p: p[0])


class RunError(ValueError):
    """A run folder that cannot be refined from; the message says what to do (exit code 2)."""


# ----------------------------------------------------------------------------------------------------------
# Pure summary functions
# ----------------------------------------------------------------------------------------------------------
def downsample(points: Sequence[tuple[int, float]], max_points: int = MAX_POINTS) -> Curve:
    """At most `max_points` points of a curve, evenly spread over its points in step order; first and last kept."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    pts = _by_step(points)
    if len(pts) <= max_points:
        return pts
    if max_points == 1:
        return [pts[-1]]
    last = len(pts) - 1
    picked = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
    return [pts[i] for i in picked]


@dataclass
class CurveSummary:
    """One curve: its downsampled points, final value (the last logged) and best value with its step."""

    name: str
    curve: Curve
    final: float | None
    best: float | None
    best_step: int | None

    def to_dict(self) -> dict:
        return {"name": self.name, "curve": [list(p) for p in self.curve], "final": self.final, "best": self.best,
                "best_step": self.best_step}


def summarise_curve(name: str, points: Sequence[tuple[int, float]], max_points: int = MAX_POINTS) -> CurveSummary:
    pts = _by_step(points)
    if not pts:
        return CurveSummary(name, [], None, None, None)
    best_step, best = max(pts, key=lambda p: (p[1], -p[0]))  # the earliest step of the best value
    return CurveSummary(name, downsample(pts, max_points), pts[-1][1], best, best_step)


@dataclass
class Stall:
    """Where progress stalls. `subtask` is 1-based, None when every sub-task is learned with no drop at all.

    kind: "below_threshold" (the first sub-task under the threshold, the one before it above: the start of an
    episode counts as 1.0), "largest_drop" (every sub-task is at or above the threshold: the largest drop between
    consecutive final rates, the earliest of equal drops), or "none".
    """

    subtask: int | None
    kind: str
    before: float
    after: float
    threshold: float

    def to_dict(self) -> dict:
        return {"subtask": self.subtask, "kind": self.kind, "before": self.before, "after": self.after,
                "threshold": self.threshold}


def find_stall(final_rates: Sequence[float | None], threshold: float = DEFAULT_THRESHOLD) -> Stall:
    """The sub-task where progress stalls, from the final completion rates of sub-tasks 1..K (None: no data, 0)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the stall threshold must be in (0, 1], got {threshold}")
    rates = [0.0 if r is None else float(r) for r in final_rates]
    if not rates:
        raise ValueError("no sub-task rates to look at")
    prev = 1.0  # every episode starts
    for k, rate in enumerate(rates, 1):
        if rate < threshold <= prev:
            return Stall(k, "below_threshold", prev, rate, threshold)
        prev = rate
    # every sub-task at or above the threshold (a rate below it would have been caught above)
    befores = [1.0] + rates[:-1]
    drops = [b - r for b, r in zip(befores, rates)]
    largest = max(drops)
    if largest <= _TIE:
        return Stall(None, "none", rates[-1], rates[-1], threshold)
    k = next(i for i, d in enumerate(drops) if d >= largest - _TIE)
    return Stall(k + 1, "largest_drop", befores[k], rates[k], threshold)


def _pct(x: float | None) -> str:
    return "no data" if x is None else f"{x:.2f}"


def stall_text(stall: Stall, names: Sequence[str]) -> str:
    """One paragraph on the stall, for the prompt and the console."""
    if stall.kind == "none":
        return (f"No stall: every sub-task is completed in {stall.after:.0%} of recent episodes. Keep the "
                "decomposition; refine only checks that are wrong.")
    k = stall.subtask
    name = names[k - 1] if k and k <= len(names) else f"sub-task {k}"
    if stall.kind == "below_threshold":
        if k == 1:
            return (f"**Progress stalls at sub-task 1** (\"{name}\"): only {stall.after:.0%} of recent episodes "
                    f"complete it (threshold {stall.threshold:.0%}). The agent does not find the first sub-task.")
        prev = names[k - 2] if k - 2 < len(names) else f"sub-task {k - 1}"
        return (f"**Progress stalls at sub-task {k}** (\"{name}\"): {stall.before:.0%} of recent episodes complete "
                f"sub-task {k - 1} (\"{prev}\") but only {stall.after:.0%} complete sub-task {k} (threshold "
                f"{stall.threshold:.0%}).")
    return (f"Every sub-task is completed in at least {stall.threshold:.0%} of recent episodes; **the largest drop "
            f"is at sub-task {k}** (\"{name}\"): {stall.before:.0%} -> {stall.after:.0%}.")


def curves_table(series: Sequence[tuple[str, Sequence[tuple[int, float]]]], max_points: int = MAX_POINTS) -> str:
    """A Markdown table: rows at up to `max_points` global steps (spread over every step logged), one column per
    series holding its last value logged at or before that step ("-" before its first)."""
    curves = [(label, _by_step(pts)) for label, pts in series]
    steps = sorted({s for _, pts in curves for s, _ in pts})
    rows = [s for s, _ in downsample([(s, 0.0) for s in steps], max_points)] if steps else []
    lines = ["| global step | " + " | ".join(label for label, _ in curves) + " |",
             "| ---: |" + " ---: |" * len(curves)]
    for step in rows:
        cells = []
        for _, pts in curves:
            seen = [v for s, v in pts if s <= step]
            cells.append(f"{seen[-1]:.2f}" if seen else "-")
        lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| (nothing logged) |" + " |" * len(curves))
    return "\n".join(lines)


@dataclass
class TrainingSummary:
    run: str
    subtasks: list[CurveSummary]
    success: CurveSummary
    final_return: float | None
    last_step: int
    stall: Stall
    raw_subtasks: list[Curve]
    raw_success: Curve

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.subtasks]

    @property
    def final_rates(self) -> list[float | None]:
        return [s.final for s in self.subtasks]

    def summary_table(self) -> str:
        lines = ["| # | sub-task | final rate | best rate (at step) |", "| --- | --- | ---: | ---: |"]
        for k, s in enumerate(self.subtasks, 1):
            best = f"{s.best:.2f} ({s.best_step:,})" if s.best is not None else "no data"
            lines.append(f"| {k} | {s.name} | {_pct(s.final)} | {best} |")
        if self.success.final is not None:
            best = f"{self.success.best:.2f} ({self.success.best_step:,})"
            lines.append(f"| | success rate (the environment's own) | {_pct(self.success.final)} | {best} |")
        if self.final_return is not None:
            lines.append(f"| | episodic return (mean of the last {RETURN_WINDOW} episodes) | "
                         f"{self.final_return:.3f} | |")
        return "\n".join(lines)

    def curves_table(self, max_points: int = MAX_POINTS) -> str:
        series = [(f"sub-task {k}", pts) for k, pts in enumerate(self.raw_subtasks, 1)]
        if self.raw_success:
            series.append(("success", self.raw_success))
        return curves_table(series, max_points)

    def stall_text(self) -> str:
        return stall_text(self.stall, self.names)

    def to_text(self) -> str:
        return (f"Run {self.run}: {self.last_step:,} steps\n\n{self.summary_table()}\n\n{self.curves_table()}\n\n"
                f"{self.stall_text()}")

    def to_record(self) -> dict:
        """What the refined entry records of the run (`refined_from_run`)."""
        return {"run": self.run, "global_step": self.last_step, "subtasks": self.names,
                "final_rates": self.final_rates, "success_rate": self.success.final,
                "episodic_return": self.final_return, "stall": self.stall.to_dict()}


def summarise(run: str, scalars: dict[str, Sequence[tuple[int, float]]], subtasks: Sequence[str],
              threshold: float = DEFAULT_THRESHOLD, max_points: int = MAX_POINTS) -> TrainingSummary:
    """Summarise a run's scalars (tag -> [(step, value)]) for a program with these sub-task names."""
    raw = [_by_step(scalars.get(SUBTASK_TAG.format(k=k), []))
           for k in range(1, len(subtasks) + 1)]
    subs = [summarise_curve(name, pts, max_points) for name, pts in zip(subtasks, raw)]
    success_raw = _by_step(scalars.get(SUCCESS_TAG, []))
    returns = [v for _, v in _by_step(scalars.get(RETURN_TAG, []))]
    final_return = sum(returns[-RETURN_WINDOW:]) / len(returns[-RETURN_WINDOW:]) if returns else None
    last_step = max((s for pts in scalars.values() for s, _ in pts), default=0)
    return TrainingSummary(run, subs, summarise_curve("success rate", success_raw, max_points), final_return,
                           int(last_step), find_stall([s.final for s in subs], threshold), raw, success_raw)


# ----------------------------------------------------------------------------------------------------------
# Reading a run
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    folder: Path
    args: dict
    program: dict  # the `vlmcar_program` record: file, cache_key, subtasks
    scalars: dict[str, Curve]

    @property
    def name(self) -> str:
        return self.folder.name


def event_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("events.out.tfevents.*") if p.is_file())


def read_scalars(files: Sequence[Path], tags: Sequence[str]) -> dict[str, Curve]:
    """The scalars `tags` of TensorBoard event files, merged in step order (values of one step in the order they
    were written: several episodes may end at the same global step)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise RunError("reading a run's curves needs the tensorboard package: pip install tensorboard") from None
    merged: dict[str, list[tuple[float, int, float]]] = {}
    for path in files:
        try:
            acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
            acc.Reload()
            present = set(acc.Tags().get("scalars", []))
            for tag in tags:
                if tag in present:
                    merged.setdefault(tag, []).extend((ev.wall_time, int(ev.step), float(ev.value))
                                                      for ev in acc.Scalars(tag))
        except Exception as e:  # noqa: BLE001 - any reader failure is an unreadable file
            raise RunError(f"cannot read the TensorBoard event file {path}: {type(e).__name__}: {e}") from None
    return {tag: [(s, v) for _, s, v in sorted(events, key=lambda e: (e[1], e[0]))] for tag, events in merged.items()}


def parent_record(entry_path: str | Path) -> dict:
    """A `vlmcar_program` record built from a cache entry file (`--parent`, for runs older than the record)."""
    from .program import check_source

    path = Path(entry_path)
    try:
        entry = json.loads(path.read_text())
        subtasks = list(check_source(entry["program"]).subtasks)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"--parent {path} is not a readable reward cache entry ({type(e).__name__}: {e}); pass a "
                       "reward_cache/ENV__VIEW__KEY.json file") from None
    parts = path.stem.split("__")
    return {"file": str(path), "cache_key": parts[2] if len(parts) >= 3 else "", "subtasks": subtasks}


def read_run(folder: str | Path, parent: str | Path | None = None) -> Run:
    """Read a run folder of ppo_vlmcar.py / sac_vlmcar.py; RunError saying what to do when it cannot be used.
    `parent`: the cache entry the run trained on, for runs whose args.json predates the `vlmcar_program` record."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"run folder {folder} does not exist; pass --from-run runs/RUN_NAME, a folder that "
                       "ppo_vlmcar.py or sac_vlmcar.py wrote (see `ls runs/`)")
    args_path = folder / "args.json"
    if not args_path.is_file():
        raise RunError(f"{folder} has no args.json: is it a run folder of ppo_vlmcar.py or sac_vlmcar.py? (they "
                       "write runs/RUN_NAME/args.json at startup)")
    try:
        args = json.loads(args_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {args_path} ({e}); it should hold the JSON the training script wrote at "
                       "startup: pick another run, or train again") from None
    if not isinstance(args, dict):
        raise RunError(f"{args_path} is not a JSON object of the run's arguments; pick another run")
    reward = args.get("reward", "vlmcar")
    if reward != "vlmcar":
        raise RunError(f"run {folder.name} trained with --reward {reward}, not vlmcar: refine improves the reward "
                       "program a run trained on; pick a run trained with --reward vlmcar")
    program = args.get("vlmcar_program")
    if program is None and parent is not None:
        program = parent_record(parent)
    if program is None:
        raise RunError(f"{args_path} has no `vlmcar_program` record (the reward program the run trained on); runs "
                       "that stopped before training, or from scripts older than the record, lack it: pass the "
                       "cache entry it trained on with --parent reward_cache/ENV__VIEW__KEY.json, or train again "
                       "with the current ppo_vlmcar.py or sac_vlmcar.py")
    if (not isinstance(program, dict) or not isinstance(program.get("file"), str) or not program["file"]
            or not isinstance(program.get("subtasks"), list) or not program["subtasks"]
            or not all(isinstance(s, str) for s in program["subtasks"])):
        raise RunError(f"the `vlmcar_program` record of {args_path} is malformed (it needs `file` and a list of "
                       "`subtasks`); pick another run, or train again")
    files = event_files(folder)
    if not files:
        raise RunError(f"{folder} has no TensorBoard event file (events.out.tfevents.*): the run's curves are "
                       "needed; pick a run whose folder holds its event files")
    k = len(program["subtasks"])
    tags = [SUBTASK_TAG.format(k=i) for i in range(1, k + 1)] + [SUCCESS_TAG, RETURN_TAG]
    scalars = read_scalars(files, tags)
    if not any(SUBTASK_TAG.format(k=i) in scalars for i in range(1, k + 1)):
        raise RunError(f"the event files of {folder} hold no readable `vlmcar/subtask_k_rate` scalars: either the "
                       "run logged no sub-task rates yet (they are logged every few finished episodes: train "
                       "longer) or the files are damaged (pick another run)")
    return Run(folder, args, program, scalars)


def resolve_parent(record: dict, env_id: str, view: str, reward_cache: str | Path | None = None
                   ) -> tuple[str, dict]:
    """The source of the program a run trained on, and the `parent` record of a refinement of it:
    {"file": the cache file's name (or the program file's path), "key": the cache key (None for a file)}."""
    from . import cache

    file = Path(record["file"])
    key = record.get("cache_key") or ""
    root = Path(reward_cache or cache.DEFAULT_DIR)
    candidates = [file, root / file.name]
    if key:
        candidates.append(cache.entry_path(env_id, view, key, root))
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise RunError(f"the program the run trained on, {file}, was not found (looked in "
                       f"{', '.join(str(p) for p in dict.fromkeys(candidates))}); pass --reward-cache DIR, the "
                       "folder that holds its cache entry")
    if found.suffix != ".json":  # trained with --reward-program FILE
        try:
            return found.read_text(), {"file": str(record["file"]), "key": None}
        except (OSError, UnicodeDecodeError) as e:
            raise RunError(f"cannot read the run's reward program {found}: {e}") from None
    entry = cache.read_entry(found)
    if entry["env_id"] != env_id or entry["view"] != view:
        raise RunError(f"the run's program {found} is for {entry['env_id']} ({entry['view']} view), not {env_id} "
                       f"({view} view)")
    return entry["program"], {"file": found.name, "key": entry.get("key") or key or None}


# ----------------------------------------------------------------------------------------------------------
# The prompt
# ----------------------------------------------------------------------------------------------------------
def refine_prompt_text(env_id: str, task: str, note: str, view_doc: str, program: str, summary: TrainingSummary,
                       n: int, expert_threshold: float, random_threshold: float) -> str:
    from . import prompts

    return prompts.REFINE.format(
        env_id=env_id, task=task, task_note=note, run=summary.run, steps=f"{summary.last_step:,}",
        current_program=program.strip(), summary_table=summary.summary_table(), curves_table=summary.curves_table(),
        stall=summary.stall_text(), view_doc=view_doc, program_format=prompts.PROGRAM_FORMAT,
        rules=prompts.RULES.format(n=n, expert=expert_threshold, random=random_threshold))


# ----------------------------------------------------------------------------------------------------------
# CLI: python -m cleanrl_vlmcar refine
# ----------------------------------------------------------------------------------------------------------
def cmd_refine(args) -> int:
    from .generate import backend_from_args, config_from_args, synthesize_for_cli

    if not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    run = read_run(args.from_run, getattr(args, "parent", None))
    run_env = run.args.get("env_id")
    if run_env and run_env != args.env_id:
        raise RunError(f"run {run.name} trained on {run_env}, not {args.env_id}: pass --env-id {run_env}")
    run_view = run.args.get("view") or "state"
    view = args.view or run_view
    if view != run_view:
        raise RunError(f"run {run.name} trained on the {run_view} view, not {view}: pass --view {run_view}")
    parent_program, parent = resolve_parent(run.program, args.env_id, view, args.reward_cache)
    summary = summarise(run.name, run.scalars, run.program["subtasks"], args.threshold)
    print(f"the program the run trained on: {parent['file']}\n{summary.to_text()}\n", flush=True)
    if args.summary_only:
        return 0
    if args.vlm == "cache":
        raise ValueError("refine needs a VLM to write the refined program: --vlm manual, openai or hf")

    cfg = config_from_args(args)

    def text(task: str, note: str, view_doc: str) -> str:  # the view's documentation as synthesize builds it
        return refine_prompt_text(args.env_id, task, note, view_doc, parent_program, summary, cfg.verify.n,
                                  cfg.verify.expert_threshold, cfg.verify.random_threshold)

    record: dict[str, Any] = {"parent": parent, "refined_from_run": summary.to_record()}
    code, result = synthesize_for_cli(args.env_id, view, backend_from_args(args), cfg, first_prompt_text=text,
                                      record=record)
    if code is not None:
        return code
    if result.passed:
        if result.program.strip() == parent_program.strip():
            print("note: the refined program is the same as its parent")
        print(f"refined from {parent['file']}; as the newest verified entry for {args.env_id} ({view} view) in its "
              "reward cache, it is the one training uses from now on")
    else:
        print(f"no refined program passed verification in {cfg.rounds} round(s); the parent {parent['file']} "
              "stays the verified program", file=sys.stderr)
    return 0 if result.passed else 1


def add_refine_parser(sub, add_verify_flags) -> None:
    from .generate import DEFAULT_ROUNDS, add_backend_flags

    p = sub.add_parser("refine", help="refine a reward program from a training run's sub-task curves (VLM, then "
                                      "verification)")
    p.add_argument("--env-id", required=True)
    p.add_argument("--from-run", required=True, help="the run folder (runs/RUN_NAME) of a --reward vlmcar training")
    p.add_argument("--parent", default=None, metavar="ENTRY",
                   help="the cache entry the run trained on, for runs whose args.json has no vlmcar_program record")
    p.add_argument("--view", default=None, help="the view the run's program reads (default: the run's view)")
    p.add_argument("--view-doc", default=None, metavar="FILE",
                   help="a text file describing what the view's values mean, as for synthesize (generic family)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="a sub-task completed in fewer recent episodes than this is not learned (default "
                        "%(default)s)")
    p.add_argument("--summary-only", action="store_true",
                   help="print the run's summary and where it stalls; ask no VLM")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="generate/feedback rounds (default %(default)s)")
    p.add_argument("--reward-cache", default=None, help="reward cache folder (default: the repo's reward_cache/)")
    p.add_argument("--force", action="store_true", help="refine again even when the cache has this entry")
    add_backend_flags(p)
    p.set_defaults(vlm="manual")  # `cache` cannot write a refined program
    add_verify_flags(p)
    p.set_defaults(func=cmd_refine)
