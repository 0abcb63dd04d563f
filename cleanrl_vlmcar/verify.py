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

from .confine import DEFAULT_MEMORY_MB, WalkResult, WorkerError
from .program import ProgramError, RewardProgram, load_program, sanitize
from .trajectories import Trajectory

DEFAULT_N = 20
EXPERT_THRESHOLD = 1.0
RANDOM_THRESHOLD = 0.10


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyReport":
        d = dict(d)
        d["subtasks"] = [SubtaskResult(**s) for s in d.get("subtasks", [])]
        d["stall"] = Stall(**d["stall"]) if d.get("stall") else None
        return cls(**d)

    def to_text(self, costs: bool = True) -> str:
        """The report as a Markdown table plus findings; the same text, without the measured check costs (timings
        vary from run to run, and prompts must be reproducible for the cache and the manual backend), is sent
        back to the VLM as feedback."""
        out = io.StringIO()
        verdict = "PASSED" if self.passed else "FAILED"
        out.write(f"Verification {verdict} for {self.env_id} ({self.view} view): expert trajectories {self.expert_n}"
                  f" (need every sub-task in >= {self.expert_threshold:.0%}), random trajectories {self.random_n} "
                  f"(need the task in <= {self.random_threshold:.0%}).\n")
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
                out.write(f"| {s.index} | {s.description} | {s.expert_rate:.0%} | {s.random_rate:.0%} | {step} | "
                          f"{s.exceptions} |" + (f" {cost} |" if costs else "") + "\n")
            if self.precision is not None:
                out.write(f"\nAgreement of the final sub-task with the environment's success over all trajectories: "
                          f"precision {self.precision:.2f}, recall {self.recall:.2f}.\n")
        if self.reasons:
            out.write("\nFindings:\n" + "".join(f"- {r}\n" for r in self.reasons))
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
    with program.worker(memory_mb=memory_mb, cpu_s=max(1, int(timeout_s) + 2),
                        require_confinement=require_confinement) as worker:
        return [worker.walk(views, with_progress, max(0.0, deadline - time.monotonic())) for views in trajectories]


def _us_per_call(results: list[WalkResult], j: int) -> float | None:
    calls = sum(r.calls[j] for r in results)
    return 1e6 * sum(r.seconds[j] for r in results) / calls if calls else None


def describe_view(view: dict) -> str:
    """A compact text rendering of a view for reports (grids as object/colour/state layers)."""
    lines = []
    for key, value in view.items():
        if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[2] == 3 and key == "grid":
            for c, name in enumerate(("object", "color", "state")):
                rows = "\n".join("    " + " ".join(f"{int(v):2d}" for v in value[:, y, c]) for y in range(value.shape[1]))
                lines.append(f"  {key}[:, :, {c}] ({name} index; rows are y, columns are x):\n{rows}")
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
                   require_confinement: bool = False) -> VerifyReport:
    """Verify `source` against expert and random trajectories; never raises for a bad program."""
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
    if report.task_random_rate > random_threshold:
        report.reasons.append(f"the whole task was completed in {report.task_random_rate:.0%} of random trajectories "
                              f"(allowed {random_threshold:.0%}): the checks are too easy to satisfy")
    for s in report.subtasks:
        if s.exceptions:
            report.reasons.append(f"subtask_{s.index} raised {s.exceptions} exception(s); checks must not raise")
        if s.progress_problems:
            report.reasons.append(f"progress_{s.index} failed on {s.progress_problems} view(s) (raised, or returned "
                                  "something other than a finite number)")
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
    report.passed = not report.reasons
    return report


def save_png(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)
    return path


def verify_env(source: str, env_id: str, view: str = "state", n: int = DEFAULT_N, seed: int = 0,
               expert_threshold: float = EXPERT_THRESHOLD, random_threshold: float = RANDOM_THRESHOLD,
               expert_source: str = "expert", demos: str | None = None, cache_dir: str | Path | None = None,
               progress: bool = True, timeout_s: float = 120.0, memory_mb: int = DEFAULT_MEMORY_MB,
               store_trajectories: bool = True, require_confinement: bool = False) -> VerifyReport:
    """Collect (or load) N expert and N random trajectories for `env_id` and verify `source` on them
    (`store_trajectories=False`: simulate afresh and keep nothing on disk)."""
    from .trajectories import DEFAULT_CACHE, TrajectoryStore, collect, load_demos, make_env
    from .views import get_spec

    env = make_env(env_id)
    spec = get_spec(env, view)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    store = TrajectoryStore(cache / "trajectories") if store_trajectories else None
    if expert_source == "demos":
        if not demos:
            raise ValueError("--expert-source demos needs --demos FILE.npz")
        all_demos = load_demos(demos, env_id, view, env)
        expert = [t for t in all_demos if t.success][:n]
        dropped = len(all_demos) - len([t for t in all_demos if t.success])
    elif expert_source == "expert":
        expert, dropped = collect(env_id, view, "expert", n, seed, store, successful_only=True, progress=progress,
                                  env=env)
    else:
        raise ValueError(f"unknown expert source {expert_source!r}: use expert or demos")
    random, _ = collect(env_id, view, "random", n, seed + 10_000, store, progress=progress, env=env)
    return verify_program(source, spec.constants(), env_id, view, expert, random, dropped, expert_threshold,
                          random_threshold, timeout_s, memory_mb, artifacts_dir=cache / "reports",
                          require_confinement=require_confinement)


def summary_rows(report: VerifyReport) -> list[dict[str, Any]]:
    return [{"subtask": s.description, "expert": s.expert_rate, "random": s.random_rate} for s in report.subtasks]
