"""Generate: a VLM writes the reward program, verification checks it, failures go back as feedback.

`synthesize()` runs generate -> verify -> feedback for up to R rounds and records every round in the reward cache.
`reward_program()` is the one call a training script makes at startup: the newest verified program for
(env id, view) from the cache, or a new synthesis when a backend is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import cache, families, prompts
from .errors import NoProgramError, UsageError
from .backends import (BACKEND_NAMES, Backend, BackendError, ManualAnswerNeeded, ManualBackend, Prompt, image_to_png,
                       make_backend)
from .program import ProgramError, RewardProgram, extract_program, load_program, sanitize
from .trajectories import DEFAULT_CACHE, Trajectory, TrajectoryStore, collect, load_demos, make_env, rollout
from .verify import (DEFAULT_N, EXPERT_THRESHOLD, RANDOM_THRESHOLD, VerifyReport,
                     VerifySettings, file_sha256, settings_from_args, verification_sets, verify_sets)
from .views import ViewSpec, get_spec

DEFAULT_ROUNDS = 3


class SynthesisError(NoProgramError):
    """No verified program could be produced or found; the message says what to do."""


def no_program_message(env_id: str, view: str, cache_dir: str | Path | None = None) -> str:
    where = cache_dir or cache.DEFAULT_DIR
    return (f"no verified reward program for {env_id} ({view} view) in {where}. Three ways out:\n"
            f"  --vlm openai --vlm-model MODEL [--vlm-base-url URL]   an OpenAI-compatible endpoint "
            "(OPENAI_API_KEY / OPENAI_BASE_URL)\n"
            f"  --vlm hf --vlm-model HUB_ID_OR_PATH                   a local transformers VLM\n"
            f"  --vlm manual                                          write the prompt to a folder, paste the "
            "answer back\n"
            f"(or ahead of training: python -m cleanrl_vlmcar synthesize --env-id {env_id} --view {view} --vlm ...)"
            + _demos_note(env_id))


def _demos_note(env_id: str) -> str:
    """For an env without a scripted expert: verification needs demonstrations, given to `synthesize`."""
    if families.has_scripted_expert(env_id):
        return ""
    return (f"\n{env_id} has no scripted expert: verification needs demonstrations. Record them (python -m "
            f"cleanrl_vlmcar record-demos --env-id {env_id} ... --out demos.npz) and synthesize with "
            "--expert-source demos --demos demos.npz; the training scripts then use the new cache entry.")


# ----------------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------------
def task_text(env) -> tuple[str, str]:
    """The task and a note on how it varies, from the env's family (after `env.reset()`)."""
    return families.family_of(env).task(env)


def prompt_images(expert: Trajectory, view: str) -> list[tuple[str, np.ndarray]]:
    """Initial and goal frames: the view's own image for pixel views, else full renders of the episode."""
    views = expert.views[view]
    if "rgb" in views[0]:
        first, last = views[0]["rgb"], views[-1]["rgb"]
    elif len(expert.frames) == 2:
        first, last = expert.frames
    else:
        raise SynthesisError(f"cannot render frames of {expert.env_id} for the prompt")
    return [("initial frame", np.asarray(first)), ("goal frame (task completed)", np.asarray(last))]


def _rules(n: int, expert_threshold: float, random_threshold: float) -> str:
    return prompts.RULES.format(n=n, expert=expert_threshold, random=random_threshold)


def first_prompt(env_id: str, task: str, note: str, spec: ViewSpec, images, n: int = DEFAULT_N,
                 expert_threshold: float = EXPERT_THRESHOLD, random_threshold: float = RANDOM_THRESHOLD) -> Prompt:
    text = prompts.FIRST.format(env_id=env_id, task=task, task_note=note, view_doc=spec.doc(),
                                program_format=prompts.PROGRAM_FORMAT,
                                rules=_rules(n, expert_threshold, random_threshold))
    return Prompt(text=text, images=list(images), system=prompts.SYSTEM)


def feedback_prompt(env_id: str, task: str, note: str, spec: ViewSpec, images, previous_program: str,
                    report: VerifyReport, stall_image: np.ndarray | None = None, n: int = DEFAULT_N,
                    expert_threshold: float = EXPERT_THRESHOLD, random_threshold: float = RANDOM_THRESHOLD,
                    false_positive_image: np.ndarray | None = None) -> Prompt:
    images = list(images)
    extra = ""
    if stall_image is not None:
        images.append(("frame where the expert had completed the task but your check did not fire", stall_image))
        extra = " The third image is the frame where your program's progress stalled in an expert episode."
    if false_positive_image is not None:
        images.append(("frame of a random episode where your program said the task was done but it was not",
                       false_positive_image))
        extra += (f" Image {len(images)} is the frame of a random episode where your program's last check held "
                  "although the environment did not count the task as done.")
    text = prompts.FEEDBACK.format(env_id=env_id, task=task, task_note=note, extra_images=extra,
                                   view_doc=spec.doc(), program_format=prompts.PROGRAM_FORMAT,
                                   rules=_rules(n, expert_threshold, random_threshold),
                                   previous_program=previous_program.strip() or "(no program could be read from "
                                   "your answer)", report=report.to_text(costs=False,
                                                                                holdout_details=False))
    return Prompt(text=text, images=images, system=prompts.SYSTEM)


# ----------------------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SynthesisResult:
    path: Path
    entry: dict
    passed: bool
    report: VerifyReport | None
    from_cache: bool

    @property
    def program(self) -> str:
        return self.entry["program"]


@dataclass
class SynthesisConfig:
    """How a program is synthesized: rounds, where trajectories and entries live, the worker's limits, and how each
    candidate is verified (`verify`, the settings the cache entry records)."""

    rounds: int = DEFAULT_ROUNDS
    verify: VerifySettings = dataclasses.field(default_factory=VerifySettings)
    traj_cache: str | Path | None = None
    reward_cache: str | Path | None = None
    verify_timeout: float = 120.0
    memory_mb: int = 1024
    require_confinement: bool = False
    force: bool = False
    progress: bool = True
    view_doc: str | None = None  # the user's description of the view, added to its documentation in the prompt

    def verify_settings(self) -> VerifySettings:
        """`verify`, with the demonstration file's hash when the expert set comes from one."""
        demos = self.verify.demos
        return dataclasses.replace(self.verify, demos_sha256=file_sha256(demos) if demos else None)


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def synthesize(env_id: str, view: str, backend: Backend, config: SynthesisConfig | None = None, *,
               first_prompt_text: Callable[[str, str, str], str] | None = None,
               record: dict | None = None) -> SynthesisResult:
    """Generate, verify and repair a reward program for (env id, view); every round is kept in the cache entry.

    A finished synthesis with the same content key is returned from the cache without calling the backend. An
    interrupted one (a backend error, or a manual answer still to be written) is saved as incomplete and resumed
    from its recorded answers on the next call. `first_prompt_text(task, task_note, view_doc)` replaces the first
    round's prompt text (the `refine` stage); `record` adds fields to the new entry (e.g. its parent).
    """
    cfg = config or SynthesisConfig()
    vs = cfg.verify
    if cfg.rounds < 1:
        raise ValueError("--rounds must be at least 1")
    env = make_env(env_id)
    spec = get_spec(env, view)
    if cfg.view_doc:
        spec = dataclasses.replace(spec, notes=(spec.notes + "\n\n" if spec.notes else "")
                                   + "What the values mean (the user's description):\n\n" + cfg.view_doc.strip())
    if backend.name == "cache":  # replay only: the newest verified entry for (env id, view); no model, no rollouts
        found = cache.lookup(env_id, view, cfg.reward_cache)
        if found is None:
            raise SynthesisError(no_program_message(env_id, view, cfg.reward_cache))
        _log(f"cache hit: {found[0]}", cfg.progress)
        report = VerifyReport.from_dict(found[1]["report"]) if found[1].get("report") else None
        return SynthesisResult(found[0], found[1], True, report, from_cache=True)
    constants = spec.constants()
    traj_root = Path(cfg.traj_cache) if cfg.traj_cache else DEFAULT_CACHE
    store = TrajectoryStore(traj_root / "trajectories")
    _log(f"collecting {vs.n} expert and {vs.n} random trajectories for {env_id} ({view} view)", cfg.progress)
    if vs.expert_source == "demos":
        if not vs.demos:
            raise ValueError("--expert-source demos needs --demos FILE.npz")
        demos = load_demos(vs.demos, env_id, view, env)
        expert = [t for t in demos if t.success][: vs.n]
        dropped = len(demos) - len([t for t in demos if t.success])
        if expert and not expert[0].frames:  # replayed demos carry no frames: render the first one for the prompt
            expert[0].frames = rollout(env, None, expert[0].seed, [view], stop_on_success=False,
                                       actions=expert[0].actions, frames=True).frames
    else:
        expert, dropped = collect(env_id, view, "expert", vs.n, vs.seed, store, successful_only=True,
                                  frames=True, progress=cfg.progress, env=env)
    random, _ = collect(env_id, view, "random", vs.n, vs.seed + 10_000, store, progress=cfg.progress, env=env)
    if not expert:
        raise SynthesisError(f"no successful expert episode for {env_id}: cannot show a goal frame or verify")

    # the prompt: task text of the first expert episode, its first and last frames
    env.reset(seed=expert[0].seed)
    task, note = task_text(env)
    images = prompt_images(expert[0], view)
    prompt1 = first_prompt(env_id, task, note, spec, images, vs.n, vs.expert_threshold, vs.random_threshold)
    if first_prompt_text is not None:
        prompt1 = Prompt(text=first_prompt_text(task, note, spec.doc()), images=list(images), system=prompts.SYSTEM)
    settings = {**backend.settings(), "rounds": cfg.rounds, "n": vs.n, "seed": vs.seed,
                "expert_threshold": vs.expert_threshold, "random_threshold": vs.random_threshold,
                "expert_source": vs.expert_source}
    key = cache.content_key(env_id, view, prompt1.text, [image_to_png(img) for _, img in images], backend.name,
                            backend.model, settings)
    path = cache.entry_path(env_id, view, key, cfg.reward_cache)
    recorded: list[dict] = []
    if path.exists():
        entry = cache.read_entry(path)
        if not entry.get("complete", True):
            recorded = entry["rounds"]  # resume an interrupted synthesis from its recorded answers
        elif not cfg.force:
            _log(f"cache hit: {path}", cfg.progress)
            report = VerifyReport.from_dict(entry["report"]) if entry.get("report") else None
            return SynthesisResult(path, entry, bool(entry["passed"]), report, from_cache=True)
        else:  # --force: synthesize again, and keep the earlier entry beside the new one
            if isinstance(backend, ManualBackend):  # ask again: do not replay the answer.md files it was made from
                backend.used_answers.update(r["answer"] for r in entry["rounds"])
            _log(f"--force: the earlier entry is kept as {cache.set_aside(path)}", cfg.progress)

    entry: dict[str, Any] = {
        "env_id": env_id, "view": view, "backend": backend.name, "model": backend.model, "settings": settings,
        "key": key, "task": task, "created": cache.now(), "rounds": [], "program": "", "passed": False,
        "report": None, "complete": False,
        "expert": {"n": len(expert), "dropped": dropped, "seeds": [t.seed for t in expert]},
        "random": {"n": len(random), "seeds": [t.seed for t in random]},
        **(record or {}),
    }
    vsettings = cfg.verify_settings()
    entry["verification"] = vsettings.to_dict()
    prompt, report, program_text = prompt1, None, ""
    for r in range(1, cfg.rounds + 1):
        if r > 1:
            stall = wrong = None
            if report.stall is not None and "rgb" in expert[0].views[view][0]:
                stalled = next(t for t in expert if t.seed == report.stall.seed)
                stall = stalled.views[view][report.stall.final_step]["rgb"]
            if report.false_positive is not None and "rgb" in expert[0].views[view][0]:
                fp = next(t for t in random if t.seed == report.false_positive.seed)
                wrong = fp.views[view][report.false_positive.step]["rgb"]
            prompt = feedback_prompt(env_id, task, note, spec, images, program_text, report, stall, vs.n,
                                     vs.expert_threshold, vs.random_threshold, wrong)
        if r <= len(recorded) and recorded[r - 1].get("prompt") == prompt.text:
            answer = recorded[r - 1]["answer"]
            _log(f"round {r}/{cfg.rounds}: replaying the recorded answer", cfg.progress)
        else:
            _log(f"round {r}/{cfg.rounds}: asking {backend.name}{' ' + backend.model if backend.model else ''}",
                 cfg.progress)
            try:
                answer = backend.complete(prompt)
            except BackendError:
                if entry["rounds"]:  # nothing is lost: the next call resumes from the recorded rounds
                    entry["program"] = program_text
                    entry["report"] = report.to_dict() if report else None
                    cache.write_entry(entry, path)
                raise
        if isinstance(backend, ManualBackend):  # a later round whose prompt repeats this one must ask again
            backend.used_answers.add(answer)
        try:
            program_text = extract_program(answer)
        except ProgramError as e:
            program_text = ""
            report = VerifyReport(env_id, view, False, ["the answer held no usable program"], error=str(e),
                                  expert_threshold=vs.expert_threshold, random_threshold=vs.random_threshold)
        else:
            _log(f"round {r}/{cfg.rounds}: verifying", cfg.progress)
            report = verify_sets(program_text, constants, env_id, view, vsettings, (expert, random, dropped),
                                 lambda: verification_sets(env_id, view, vsettings, True, cache_dir=traj_root,
                                                           progress=cfg.progress, env=env),
                                 artifacts_dir=traj_root / "reports", timeout_s=cfg.verify_timeout,
                                 memory_mb=cfg.memory_mb, require_confinement=cfg.require_confinement)
        why = "" if report.passed else ": " + sanitize(report.error or "; ".join(report.reasons[:2]), 300,
                                                         single_line=True)
        _log(f"round {r}/{cfg.rounds}: {'PASSED' if report.passed else 'FAILED'}{why}", cfg.progress)
        entry["rounds"].append({"round": r, "prompt": prompt.text, "system": prompt.system,
                                "images": [caption for caption, _ in prompt.images], "answer": answer,
                                "program": program_text, "passed": report.passed, "report": report.to_dict(),
                                "time": cache.now()})
        if report.passed:
            break
    entry.update(program=program_text, passed=bool(report.passed), report=report.to_dict(), complete=True)
    cache.write_entry(entry, path)
    return SynthesisResult(path, entry, bool(report.passed), report, from_cache=False)


# ----------------------------------------------------------------------------------------------------------
# The startup call of the training scripts
# ----------------------------------------------------------------------------------------------------------
def reward_program(env_id: str, view: str = "state", vlm: str | None = None, *, reward_cache: str | Path | None = None,
                   synthesis: SynthesisConfig | None = None, **backend_kwargs) -> RewardProgram:
    """The verified reward program for (env id, view): the newest passing cache entry, else a new synthesis with
    the `vlm` backend ("openai", "hf", "manual"); with neither, SynthesisError naming the three ways out."""
    env = make_env(env_id)
    spec = get_spec(env, view)  # clear error for an unsupported family or view, before anything else
    found = cache.lookup(env_id, view, reward_cache)
    if found is None:
        if vlm in (None, "", "cache"):
            raise SynthesisError(no_program_message(env_id, view, reward_cache))
        backend = make_backend(vlm, **backend_kwargs)
        cfg = synthesis or SynthesisConfig()
        cfg.reward_cache = reward_cache
        result = synthesize(env_id, view, backend, cfg)
        if not result.passed:
            raise SynthesisError(f"no program passed verification after {cfg.rounds} round(s); see {result.path}\n"
                                 + (result.report.to_text() if result.report else ""))
        found = (result.path, result.entry)
    path, entry = found
    program = load_program(entry["program"], spec.constants(), name=str(path))
    program.cache_path = path
    costs = [s.get("us_per_call") for s in (entry.get("report") or {}).get("subtasks", [])]
    costs = [c for c in costs if isinstance(c, (int, float)) and c >= 0]
    program.us_per_check = max(costs) if costs else None
    return program


# ----------------------------------------------------------------------------------------------------------
# CLI: python -m cleanrl_vlmcar synthesize
# ----------------------------------------------------------------------------------------------------------
def add_backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vlm", choices=BACKEND_NAMES, default="cache",
                   help="openai (OpenAI-compatible endpoint), hf (local transformers VLM), manual (prompt files, "
                        "paste the answer), cache (replay only)")
    p.add_argument("--vlm-model", default="", help="model name (openai) or hub id / local path (hf); "
                                                   "default $VLMCAR_MODEL")
    p.add_argument("--vlm-base-url", default=None, help="OpenAI-compatible base URL (default $OPENAI_BASE_URL)")
    p.add_argument("--vlm-api-key", default=None, help="API key (default $OPENAI_API_KEY)")
    p.add_argument("--vlm-timeout", type=float, default=120.0, help="seconds per VLM request")
    p.add_argument("--vlm-temperature", type=float, default=0.2)
    p.add_argument("--vlm-max-tokens", type=int, default=4096)
    p.add_argument("--vlm-device", default="auto", help="hf backend: auto, cpu or cuda")
    p.add_argument("--manual-dir", default=str(DEFAULT_CACHE / "manual"), help="manual backend: prompt folder")


def backend_from_args(args) -> Backend:
    return make_backend(args.vlm, model=args.vlm_model, base_url=args.vlm_base_url, api_key=args.vlm_api_key,
                        timeout=args.vlm_timeout, temperature=args.vlm_temperature, max_tokens=args.vlm_max_tokens,
                        device=args.vlm_device, manual_dir=args.manual_dir)


def read_view_doc(path: str | None) -> str | None:
    """The text of a `--view-doc` file (at most 20,000 characters), or None."""
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read --view-doc {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--view-doc {path} is not UTF-8 text") from None
    if len(text) > 20_000:
        raise UsageError(f"--view-doc {path} has {len(text)} characters; keep the description under 20,000")
    return text


def config_from_args(args) -> SynthesisConfig:
    """The synthesis settings of a CLI verb (synthesize, refine) from its flags."""
    vs, _ = settings_from_args(args)
    return SynthesisConfig(rounds=args.rounds, verify=vs, traj_cache=args.cache_dir, reward_cache=args.reward_cache,
                           verify_timeout=args.verify_timeout, memory_mb=args.memory_mb, force=args.force,
                           require_confinement=args.require_confinement, view_doc=read_view_doc(args.view_doc))


def synthesize_for_cli(env_id: str, view: str, backend: Backend, cfg: SynthesisConfig,
                       **kwargs) -> tuple[int | None, SynthesisResult | None]:
    """`synthesize` for a CLI verb: (3, None) when a manual answer is needed and (4, None) when the backend failed,
    each said on the console; else (None, result) with the entry and its report printed."""
    try:
        result = synthesize(env_id, view, backend, cfg, **kwargs)
    except ManualAnswerNeeded as e:
        print(str(e))
        return 3, None
    except BackendError as e:
        print(f"error: {e}\n(the rounds so far are saved; re-run the same command to resume)", file=sys.stderr)
        return 4, None
    print(f"reward cache entry: {result.path}{' (cache hit, no model called)' if result.from_cache else ''}")
    if result.report is not None:
        print(result.report.to_text())
    return None, result


def cmd_synthesize(args) -> int:
    code, result = synthesize_for_cli(args.env_id, args.view, backend_from_args(args), config_from_args(args))
    return code if code is not None else (0 if result.passed else 1)


def add_synthesize_parser(sub, add_verify_flags) -> None:
    p = sub.add_parser("synthesize", help="generate, verify and repair a reward program with a VLM")
    p.add_argument("--env-id", required=True)
    p.add_argument("--view", default="state", help="the view programs read: state or pixels (MiniGrid, panda-gym), obs or pixels (any other environment)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="generate/feedback rounds (default %(default)s)")
    p.add_argument("--reward-cache", default=None, help="reward cache folder (default: the repo's reward_cache/)")
    p.add_argument("--force", action="store_true", help="synthesize again even when the cache has this entry")
    p.add_argument("--view-doc", default=None, metavar="FILE",
                   help="a text file describing what the view's values mean (for environments of the generic family, "
                        "whose views are documented only from the observation space)")
    add_backend_flags(p)
    add_verify_flags(p)
    p.set_defaults(func=cmd_synthesize)
