"""Verify: run a reward program over expert and random trajectories and decide whether to trust it.

VLM-CaR's rule: every sub-task must be completed, in order, in (at least `expert_threshold` of) the expert
trajectories, and the whole task (the last sub-task) must be completed in at most `random_threshold` of the
random trajectories. The program runs in an isolated process with time and memory limits, through the same
progress rule (`integrate.advance`) as the reward hook. The report is data, a table for people and text a VLM
can read in the feedback round.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .confine import DEFAULT_MEMORY_MB, ProgramWorker, WalkResult, WorkerError
from .program import ProgramError, RewardProgram, load_program, sanitize
from .trajectories import Trajectory

DEFAULT_N = 20
EXPERT_THRESHOLD = 1.0
RANDOM_THRESHOLD = 0.10
#: the random limit is max(random_threshold, the environment's own random success + RANDOM_MARGIN)
RANDOM_MARGIN = 0.05
#: where the environment reports success, the final sub-task must agree with it at least this well
MIN_AGREEMENT = 0.9
#: held-out seeds: expert seed + HOLDOUT_OFFSET, random seed + 10_000 + HOLDOUT_OFFSET (never shown in a prompt)
HOLDOUT_OFFSET = 50_000
#: documented cost budget of one check call per view, in microseconds; slower checks are flagged in the report
CHECK_BUDGET_US = {"state": 20.0, "pixels": 300.0}


@dataclass
class SubtaskResult:
    index: int  # 1-based
    description: str
    expert_rate: float
    random_rate: float
    mean_expert_step: float | None
    exceptions: int = 0
    first_exception: str = ""
    us_per_call: float | None = None  # mean time of one check call (the hook runs it on every step)
    progress_problems: int = 0  # calls of progress_k (while sub-task k was next) that raised or gave no finite number
    first_progress_problem: str = ""


@dataclass
class Stall:
    """Where the first failing expert trajectory stopped making progress."""

    seed: int
    subtask: int  # 1-based: the sub-task that never completed
    stalled_after_step: int  # step of the last completed sub-task (0 = none)
    final_step: int
    final_view: str  # a text rendering of the view at the final step
    frame_png: str = ""  # for pixel views: the final frame saved as PNG


@dataclass
class FalsePositive:
    """The first random trajectory in which the program completed the task while the environment did not succeed."""

    seed: int
    step: int  # the step at which the last sub-task was completed
    view: str  # a text rendering of the view at that step
    frame_png: str = ""  # for pixel views: that frame saved as PNG


@dataclass
class VerifyReport:
    env_id: str
    view: str
    passed: bool
    reasons: list[str]
    subtasks: list[SubtaskResult] = field(default_factory=list)
    expert_n: int = 0
    random_n: int = 0
    expert_dropped: int = 0
    expert_threshold: float = EXPERT_THRESHOLD
    random_threshold: float = RANDOM_THRESHOLD
    task_expert_rate: float = 0.0
    task_random_rate: float = 0.0
    precision: float | None = None
    recall: float | None = None
    stall: Stall | None = None
    error: str = ""  # a program that could not be loaded or run at all
    env_random_rate: float | None = None  # the environment's own success on the random trajectories
    effective_random_threshold: float | None = None  # max(random_threshold, env_random_rate + margin)
    false_positive: FalsePositive | None = None
    slow_checks: list[str] = field(default_factory=list)  # checks over the view's documented budget
    settings: dict = field(default_factory=dict)  # how it was verified (re-verify an entry exactly as it passed)
    holdout: "VerifyReport | None" = None  # the same checks on fresh seeds no prompt showed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyReport":
        d = dict(d)
        d["subtasks"] = [SubtaskResult(**s) for s in d.get("subtasks", [])]
        d["stall"] = Stall(**d["stall"]) if d.get("stall") else None
        d["false_positive"] = FalsePositive(**d["false_positive"]) if d.get("false_positive") else None
        d["holdout"] = cls.from_dict(d["holdout"]) if d.get("holdout") else None
        return cls(**d)

    def to_text(self, costs: bool = True, holdout_details: bool = True) -> str:
        """The report as a Markdown table plus findings. The feedback a VLM gets is `to_text(costs=False,
        holdout_details=False)`: without the measured check costs (timings vary from run to run, and prompts must be
        reproducible for the cache and the manual backend), and with only the verdict of the held-out seeds (their
        evidence would let feedback rounds tune a program to them)."""
        out = io.StringIO()
        verdict = "PASSED" if self.passed else "FAILED"
        limit = self.effective_random_threshold if self.effective_random_threshold is not None \
            else self.random_threshold
        out.write(f"Verification {verdict} for {self.env_id} ({self.view} view): expert trajectories {self.expert_n}"
                  f" (need every sub-task in >= {self.expert_threshold:.0%}), random trajectories {self.random_n} "
                  f"(need the task in <= {limit:.0%}).\n")
        if self.env_random_rate is not None and limit > self.random_threshold:
            out.write(f"Random play itself succeeds in {self.env_random_rate:.0%} of these episodes (the environment's "
                      f"own success), so the random limit is raised from {self.random_threshold:.0%} to {limit:.0%}; "
                      "the final sub-task must then agree with the environment's success instead.\n")
        if self.expert_dropped:
            out.write(f"{self.expert_dropped} expert episode(s) did not reach the environment's success and were "
                      "dropped.\n")
        if self.error:
            out.write(f"\nThe program could not be run:\n{self.error}\n")
        if self.subtasks:
            out.write("\n| # | sub-task | expert | random | mean expert step | exceptions |"
                      + (" us per check |" if costs else "") + "\n| --- | --- | --- | --- | --- | --- |"
                      + (" --- |" if costs else "") + "\n")
            for s in self.subtasks:
                step = "-" if s.mean_expert_step is None else f"{s.mean_expert_step:.1f}"
                cost = "-" if s.us_per_call is None else f"{s.us_per_call:.1f}"
                text = sanitize(s.description, 200, single_line=True).replace("|", "\\|")
                out.write(f"| {s.index} | {text} | {s.expert_rate:.0%} | {s.random_rate:.0%} | {step} | "
                          f"{s.exceptions} |" + (f" {cost} |" if costs else "") + "\n")
            if self.precision is not None:
                out.write(f"\nAgreement of the final sub-task with the environment's success over all trajectories: "
                          f"precision {self.precision:.2f}, recall {self.recall:.2f}.\n")
        if self.reasons:
            out.write("\nFindings:\n" + "".join(f"- {r}\n" for r in self.reasons))
        if self.slow_checks and costs:
            out.write("\nSlow checks (the hook runs the next sub-task's check on every step):\n"
                      + "".join(f"- {r}\n" for r in self.slow_checks))
        for s in self.subtasks:
            if s.first_exception:
                out.write(f"\nFirst exception in subtask_{s.index}:\n{s.first_exception}\n")
            if s.first_progress_problem:
                out.write(f"\nFirst failure of progress_{s.index}:\n{s.first_progress_problem}\n")
        if self.stall:
            st = self.stall
            out.write(f"\nFirst failing expert trajectory (seed {st.seed}): sub-task {st.subtask} never completed; "
                      f"last progress at step {st.stalled_after_step}; the expert finished the task at step "
                      f"{st.final_step}. View at step {st.final_step}, where sub-task {st.subtask} should hold:\n"
                      f"{st.final_view}\n")
            if st.frame_png:
                out.write(f"(frame saved as {st.frame_png})\n")
        if self.false_positive:
            fp = self.false_positive
            out.write(f"\nFirst random trajectory that completed the task without the environment's success (seed "
                      f"{fp.seed}): the last sub-task held at step {fp.step}. View at step {fp.step}, where it should "
                      f"not hold:\n{fp.view}\n")
            if fp.frame_png:
                out.write(f"(frame saved as {fp.frame_png})\n")
        if self.holdout is not None:
            h = self.holdout
            if holdout_details:
                out.write(f"\n## Held-out validation (fresh seeds, never shown in a prompt): "
                          f"{'PASSED' if h.passed else 'FAILED'}\n\n" + h.to_text(costs, True))
            elif not h.passed:
                out.write("\nThe program passed on the trajectories above but FAILED on held-out seeds that are never "
                          "shown: it is tuned too closely to the episodes it was shown. Make the checks follow the "
                          "task's meaning (objects, positions, colours in general), not these particular episodes.\n")
        return out.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Running the program over trajectories (in the confined worker)
# ----------------------------------------------------------------------------------------------------------
def walk_all(program: RewardProgram, trajectories: list[list[dict]], with_progress: bool = False,
             timeout_s: float = 120.0, memory_mb: int = DEFAULT_MEMORY_MB,
             require_confinement: bool = False) -> list[WalkResult]:
    """Each recorded episode through the program's checks with the hook's in-order rule, one episode per message
    to one confined worker; `timeout_s` bounds the whole run (WorkerError when it is exceeded or the worker dies)."""
    deadline = time.monotonic() + timeout_s
    with ProgramWorker(program, memory_mb=memory_mb, cpu_s=max(1, int(timeout_s) + 2), load_timeout_s=timeout_s,
                        require_confinement=require_confinement) as worker:
        return [worker.walk(views, with_progress, max(0.0, deadline - time.monotonic())) for views in trajectories]


def _us_per_call(results: list[WalkResult], j: int) -> float | None:
    calls = sum(r.calls[j] for r in results)
    return 1e6 * sum(r.seconds[j] for r in results) / calls if calls else None


def describe_view(view: dict) -> str:
    """A compact text rendering of a view for reports (grids as object/colour/state layers)."""
    lines = []
    for key, value in view.items():
        if isinstance(value, np.ndarray) and value.ndim == 3 and value.dtype.kind in "iu" and value.shape[2] <= 4 \
                and value.size <= 4096:  # a small symbolic grid (MiniGrid's): one table per channel
            for c in range(value.shape[2]):
                rows = "\n".join("    " + " ".join(f"{int(v):2d}" for v in value[:, y, c]) for y in range(value.shape[1]))
                lines.append(f"  {key}[:, :, {c}] (rows are the second index, columns the first):\n{rows}")
        elif isinstance(value, np.ndarray) and value.size > 64:
            lines.append(f"  {key}: array shape {value.shape} dtype {value.dtype}")
        elif isinstance(value, np.ndarray):
            lines.append(f"  {key}: {np.array2string(value, precision=4, separator=', ')}")
        else:
            lines.append(f"  {key}: {value!r}")
    return "\n".join(lines)


def verify_program(source: str, constants: dict, env_id: str, view: str, expert: list[Trajectory],
                   random: list[Trajectory], expert_dropped: int = 0, expert_threshold: float = EXPERT_THRESHOLD,
                   random_threshold: float = RANDOM_THRESHOLD, timeout_s: float = 120.0,
                   memory_mb: int = DEFAULT_MEMORY_MB, artifacts_dir: str | Path | None = None,
                   require_confinement: bool = False, margin: float = RANDOM_MARGIN,
                   min_agreement: float = MIN_AGREEMENT, max_check_us: float | None = None) -> VerifyReport:
    """Verify `source` against expert and random trajectories; never raises for a bad program.

    Rules: every sub-task in at least `expert_threshold` of the expert trajectories; the task in at most
    max(`random_threshold`, the environment's own random success + `margin`) of the random ones; where the
    environment reports success at all, the final sub-task agrees with it (precision and recall at least
    `min_agreement`); no check raises; with `max_check_us`, no check slower than that on average."""
    if not 0.0 <= expert_threshold <= 1.0 or not 0.0 <= random_threshold <= 1.0:
        raise ValueError("thresholds must be fractions in [0, 1]")
    report = VerifyReport(env_id, view, False, [], expert_n=len(expert), random_n=len(random),
                          expert_dropped=expert_dropped, expert_threshold=expert_threshold,
                          random_threshold=random_threshold)
    try:
        program = load_program(source, constants)  # static check only: nothing of the program runs here
    except ProgramError as e:
        report.error = str(e)
        report.reasons.append("the program was rejected before running; fix the problems listed above")
        return report
    if not expert:
        report.reasons.append("no successful expert trajectories to verify against")
        return report
    trajs = [t.views[view] for t in expert] + [t.views[view] for t in random]
    try:
        results = walk_all(program, trajs, program.has_progress, timeout_s, memory_mb, require_confinement)
    except WorkerError as e:
        report.error = f"{e.kind}: {e}"
        report.reasons.append(f"the program failed in the confined worker ({e.kind}); checks must be fast, bounded "
                              "and must not raise")
        return report
    ex_res, rnd_res = results[: len(expert)], results[len(expert):]
    n_sub = program.num_subtasks
    for j in range(n_sub):
        ex_steps = [r.steps[j] for r in ex_res if r.steps[j] is not None]
        report.subtasks.append(SubtaskResult(
            index=j + 1, description=program.subtasks[j],
            expert_rate=len(ex_steps) / len(ex_res),
            random_rate=(sum(r.steps[j] is not None for r in rnd_res) / len(rnd_res)) if rnd_res else 0.0,
            mean_expert_step=float(np.mean(ex_steps)) if ex_steps else None,
            exceptions=sum(r.exceptions[j] for r in results),
            first_exception=next((tb for r in results for k, tb in r.exception_examples if k == j), ""),
            us_per_call=_us_per_call(results, j), progress_problems=sum(r.progress_problems[j] for r in results),
            first_progress_problem=next((tb for r in results for k, tb in r.progress_examples if k == j), "")))
    report.task_expert_rate = report.subtasks[-1].expert_rate
    report.task_random_rate = report.subtasks[-1].random_rate

    # agreement of "task done" with the environment's own success
    predicted = np.array([r.steps[-1] is not None for r in results])
    actual = np.array([t.success for t in expert + random])
    tp = int((predicted & actual).sum())
    report.precision = tp / int(predicted.sum()) if predicted.any() else 0.0
    report.recall = tp / int(actual.sum()) if actual.any() else 0.0

    # the random rule, relative to how easy the environment is for random play
    report.env_random_rate = float(np.mean([t.success for t in random])) if random else 0.0
    limit = max(random_threshold, report.env_random_rate + margin) if report.env_random_rate > 0 else random_threshold
    report.effective_random_threshold = limit

    # findings
    first_short = None
    for s in report.subtasks:
        if s.expert_rate < expert_threshold:
            if first_short is None:
                first_short = s.index
                report.reasons.append(f"sub-task {s.index} ({s.description!r}) was completed in only "
                                      f"{s.expert_rate:.0%} of expert trajectories (needs {expert_threshold:.0%})")
            else:
                report.reasons.append(f"sub-task {s.index} ({s.description!r}) was completed in only "
                                      f"{s.expert_rate:.0%} of expert trajectories; sub-tasks count only in order, so "
                                      f"it may only be blocked by sub-task {first_short}")
    if report.task_random_rate > limit + 1e-9:
        easy = f" (random play itself succeeds in {report.env_random_rate:.0%})" if report.env_random_rate else ""
        report.reasons.append(f"the whole task was completed in {report.task_random_rate:.0%} of random trajectories "
                              f"(allowed {limit:.0%}{easy}): the checks are too easy to satisfy")
    if actual.any() and (report.precision < min_agreement or report.recall < min_agreement):
        report.reasons.append(f"the final sub-task agrees too little with the environment's own success (precision "
                              f"{report.precision:.2f}, recall {report.recall:.2f}; needs {min_agreement:.2f} each)")
    for s in report.subtasks:
        if s.exceptions:
            report.reasons.append(f"subtask_{s.index} raised {s.exceptions} exception(s); checks must not raise")
        if s.progress_problems:
            report.reasons.append(f"progress_{s.index} failed on {s.progress_problems} view(s) (raised, or returned "
                                  "something other than a finite number)")
    budget = CHECK_BUDGET_US.get(view, CHECK_BUDGET_US["state"])
    for s in report.subtasks:
        if s.us_per_call is not None and s.us_per_call > budget:
            report.slow_checks.append(f"subtask_{s.index} takes {s.us_per_call:.0f} us per call (the {view} view's "
                                      f"budget is {budget:.0f} us)")
        if max_check_us is not None and s.us_per_call is not None and s.us_per_call > max_check_us:
            report.reasons.append(f"subtask_{s.index} takes {s.us_per_call:.0f} us per call (--max-check-us "
                                  f"{max_check_us:g})")
    first_fail = next((i for i, r in enumerate(ex_res) if None in r.steps), None)
    if first_fail is not None:
        r, traj = ex_res[first_fail], expert[first_fail]
        stuck = r.steps.index(None)
        done_steps = [s for s in r.steps if s is not None]
        views = traj.views[view]
        final = len(views) - 1
        report.stall = Stall(seed=traj.seed, subtask=stuck + 1, stalled_after_step=max(done_steps, default=0),
                             final_step=final, final_view=describe_view(views[final]))
        if "rgb" in views[final] and artifacts_dir is not None:
            report.stall.frame_png = str(save_png(views[final]["rgb"], Path(artifacts_dir) / f"stall_seed{traj.seed}.png"))
    wrong = next((i for i, r in enumerate(rnd_res) if r.steps[-1] is not None and not random[i].success), None)
    if wrong is not None:
        traj, step = random[wrong], rnd_res[wrong].steps[-1]
        view_t = traj.views[view][step]
        report.false_positive = FalsePositive(seed=traj.seed, step=step, view=describe_view(view_t))
        if "rgb" in view_t and artifacts_dir is not None:
            report.false_positive.frame_png = str(save_png(view_t["rgb"], Path(artifacts_dir)
                                                           / f"false_positive_seed{traj.seed}.png"))
    report.passed = not report.reasons
    return report


def save_png(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)
    return path


@dataclass
class VerifySettings:
    """How a program is verified; recorded in a cache entry so that `verify` re-checks it exactly as it passed."""

    n: int = DEFAULT_N
    seed: int = 0
    expert_threshold: float = EXPERT_THRESHOLD
    random_threshold: float = RANDOM_THRESHOLD
    expert_source: str = "expert"
    demos: str | None = None
    demos_sha256: str | None = None
    holdout: bool = True
    margin: float = RANDOM_MARGIN
    min_agreement: float = MIN_AGREEMENT
    max_check_us: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "VerifySettings":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def check(self) -> None:
        if self.n < 1:
            raise ValueError("--n must be at least 1")
        for name in ("expert_threshold", "random_threshold", "min_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be a fraction in [0, 1]")
        if self.expert_source not in ("expert", "demos"):
            raise ValueError(f"unknown expert source {self.expert_source!r}: use expert or demos")
        if self.expert_source == "demos" and not self.demos:
            raise ValueError("--expert-source demos needs --demos FILE.npz")


def settings_from_args(args, base=None):
    """The verification settings: `base` (an entry's recorded settings, or the defaults) with the flags given on
    the command line on top; and the names of the flags that changed a recorded setting."""
    settings = base or VerifySettings()
    given = {"n": args.n, "seed": args.seed, "expert_threshold": args.expert_threshold,
             "random_threshold": args.random_threshold, "margin": args.random_margin,
             "min_agreement": args.min_agreement, "holdout": None if args.no_holdout is None else False,
             "max_check_us": args.max_check_us, "expert_source": args.expert_source, "demos": args.demos}
    given = {k: v for k, v in given.items() if v is not None}
    if "demos" in given and "expert_source" not in given:
        given["expert_source"] = "demos"
    changed = sorted(k for k, v in given.items() if getattr(settings, k) != v)
    merged = VerifySettings(**{**settings.to_dict(), **given})
    if "demos" in given:
        merged.demos_sha256 = None  # the given file is hashed when it is used
    merged.check()
    return merged, changed


def file_sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verification_sets(env_id: str, view: str, settings: VerifySettings, holdout: bool, cache_dir=None,
                      progress: bool = True, store_trajectories: bool = True, env=None, frames: bool = False):
    """(expert, random, dropped) for the feedback seeds (`holdout=False`) or the held-out seeds (True). Demos: the
    first n successful episodes are the feedback set, the next n the held-out set."""
    from .trajectories import DEFAULT_CACHE, TrajectoryStore, collect, load_demos, make_env

    env = env or make_env(env_id)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    store = TrajectoryStore(cache / "trajectories") if store_trajectories else None
    n, offset = settings.n, HOLDOUT_OFFSET if holdout else 0
    if settings.expert_source == "demos":
        if settings.demos_sha256 and file_sha256(settings.demos) != settings.demos_sha256:
            raise ValueError(f"--demos {settings.demos} is not the file this program was verified with (its SHA-256 "
                             "differs); pass --demos with the original file or re-verify with flags")
        all_demos = load_demos(settings.demos, env_id, view, env)
        ok = [t for t in all_demos if t.success]
        expert = ok[n:2 * n] if holdout else ok[:n]
        dropped = 0 if holdout else len(all_demos) - len(ok)
    else:
        expert, dropped = collect(env_id, view, "expert", n, settings.seed + offset, store, successful_only=True,
                                  progress=progress, env=env, frames=frames)
    random, _ = collect(env_id, view, "random", n, settings.seed + 10_000 + offset, store, progress=progress, env=env)
    return expert, random, dropped


def verify_sets(source: str, constants: dict, env_id: str, view: str, settings: VerifySettings, feedback, holdout_sets,
                artifacts_dir=None, timeout_s: float = 120.0, memory_mb: int = DEFAULT_MEMORY_MB,
                require_confinement: bool = False) -> VerifyReport:
    """Verify on the feedback sets; when that passes and `holdout_sets` is given (a callable returning the held-out
    (expert, random, dropped)), also on the held-out seeds: only then is the program verified."""
    kw = dict(expert_threshold=settings.expert_threshold, random_threshold=settings.random_threshold,
              timeout_s=timeout_s, memory_mb=memory_mb, artifacts_dir=artifacts_dir,
              require_confinement=require_confinement, margin=settings.margin, min_agreement=settings.min_agreement,
              max_check_us=settings.max_check_us)
    expert, random, dropped = feedback
    report = verify_program(source, constants, env_id, view, expert, random, dropped, **kw)
    report.settings = settings.to_dict()
    if report.passed and settings.holdout and holdout_sets is not None:
        h_expert, h_random, h_dropped = holdout_sets()
        if len(h_expert) < settings.n:
            report.reasons.append(f"only {len(h_expert)} successful expert trajectories for the held-out set (needs "
                                  f"{settings.n}; with demonstrations the file needs {2 * settings.n} successful "
                                  "episodes, or pass --no-holdout)")
            report.passed = False
            return report
        report.holdout = verify_program(source, constants, env_id, view, h_expert, h_random, h_dropped, **kw)
        if not report.holdout.passed:
            report.passed = False
            report.reasons.append("it failed on the held-out seeds (see below): the checks are tuned to the "
                                  "verification episodes, not the task")
    return report


def verify_env(source: str, env_id: str, view: str = "state", settings: VerifySettings | None = None,
               cache_dir: str | Path | None = None, progress: bool = True, timeout_s: float = 120.0,
               memory_mb: int = DEFAULT_MEMORY_MB, store_trajectories: bool = True,
               require_confinement: bool = False, **overrides) -> VerifyReport:
    """Collect (or load) N expert and N random trajectories for `env_id`, verify `source` on them, and when it
    passes, on N + N more with fresh seeds (held-out validation). `settings` (default VerifySettings()), with
    keyword `overrides` of its fields (n=, seed=, random_threshold=, expert_source=, demos=, holdout=, ...)."""
    from .trajectories import DEFAULT_CACHE, make_env
    from .views import get_spec

    settings = VerifySettings(**{**(settings or VerifySettings()).to_dict(), **overrides})
    settings.check()
    if settings.expert_source == "demos" and not settings.demos_sha256:
        settings.demos_sha256 = file_sha256(settings.demos)
    env = make_env(env_id)
    spec = get_spec(env, view)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    common = dict(cache_dir=cache_dir, progress=progress, store_trajectories=store_trajectories, env=env)
    return verify_sets(source, spec.constants(), env_id, view, settings,
                       verification_sets(env_id, view, settings, False, **common),
                       lambda: verification_sets(env_id, view, settings, True, **common),
                       artifacts_dir=cache / "reports", timeout_s=timeout_s, memory_mb=memory_mb,
                       require_confinement=require_confinement)


def summary_rows(report: VerifyReport) -> list[dict[str, Any]]:
    return [{"subtask": s.description, "expert": s.expert_rate, "random": s.random_rate} for s in report.subtasks]
