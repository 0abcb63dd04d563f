"""The training scripts' one startup call: `make_reward_hook(envs, args, writer, infos, obs)` builds the reward hook
for `--reward sparse|vlmcar|clip`, finding (or synthesizing) and verifying the program first, and says which program
the run uses. Everything it raises is a VLMCaRError whose message says what to do; the scripts stop on those."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gymnasium as gym

from .errors import NoExpertError, NoProgramError, UnsupportedEnvError, UsageError
from .families import family_for_id
from .integrate import RewardHook
from .program import RewardProgram, load_program

log = logging.getLogger(__name__)

REWARDS = ("sparse", "vlmcar", "clip")


def _entry_settings(path: Path, entry: dict, env_id: str, view: str):
    """The verification settings a cache entry recorded, with a relative demonstrations path resolved from the
    working directory or else from the folder that holds reward_cache/."""
    from .verify import VerifySettings

    if entry.get("env_id") != env_id or entry.get("view") != view:
        raise UsageError(f"--reward-program {path} is an entry for {entry.get('env_id')} ({entry.get('view')} view), "
                         f"not {env_id} ({view} view)")
    settings = VerifySettings.from_dict(entry.get("verification"))
    if settings.demos and not Path(settings.demos).exists():
        beside = path.resolve().parent.parent / settings.demos
        if beside.exists():
            settings.demos = str(beside)
    return settings


def program_for_run(args: Any):
    """The reward program a training run uses: `args.reward_program` (a program file, verified now with the default
    settings, or a cache entry `.json`, verified again with the settings it records, e.g. its demonstrations) or
    the newest verified cache entry (or a new synthesis with `args.vlm`)."""
    from .generate import reward_program
    from .verify import verify_env

    view = getattr(args, "view", "state")
    path = getattr(args, "reward_program", None)
    if path:
        from . import cache
        from .families import make_env
        from .views import get_spec

        settings = None
        if str(path).endswith(".json"):
            entry = cache.read_entry(path)  # CacheError (a NoProgramError) naming the file when it is unreadable
            source = entry.get("program")
            if not isinstance(source, str):
                raise NoProgramError(f"--reward-program {path} is not a reward cache entry with a program")
            settings = _entry_settings(Path(path), entry, args.env_id, view)
        else:
            try:
                source = open(path).read()
            except OSError as e:
                raise NoProgramError(f"cannot read --reward-program {path}: {e.strerror}") from None
        program = load_program(source, get_spec(make_env(args.env_id), view).constants(), name=str(path))
        try:
            report = verify_env(source, args.env_id, view, settings, progress=False,
                                require_confinement=getattr(args, "require_confinement", False))
        except UnsupportedEnvError as e:
            raise UnsupportedEnvError(f"{e}\nFor an environment without a scripted expert, pass a verified cache "
                                      "entry instead (--reward-program reward_cache/ENV__VIEW__KEY.json): it is "
                                      "verified again with the demonstrations it records.") from None
        if not report.passed:
            raise NoProgramError(f"--reward-program {path} failed verification; fix it or train on a verified program:"
                                 f"\n{report.to_text()}")
        log.info("%s passed verification (%d expert and %d random trajectories)", path, report.expert_n,
                 report.random_n)
        program.cache_path = path
        program.us_per_check = max((s.us_per_call or 0.0 for s in report.subtasks), default=None)
        return program
    backend_kwargs = {k: v for k, v in (("model", getattr(args, "vlm_model", "")),
                                        ("base_url", getattr(args, "vlm_base_url", None))) if v}
    try:
        return reward_program(args.env_id, view, getattr(args, "vlm", None), **backend_kwargs)
    except NoExpertError:  # the scripts take no demonstrations: synthesis goes through the CLI
        raise NoExpertError(
            f"no scripted expert for {args.env_id}, so a new program is verified against demonstrations, which "
            "the training scripts do not take. Record them (python -m cleanrl_vlmcar record-demos --env-id "
            f"{args.env_id} --keyboard|--policy PATH|--actions FILE.json --out demos.npz), synthesize with them "
            f"(python -m cleanrl_vlmcar synthesize --env-id {args.env_id} --view {view} --expert-source demos "
            "--demos demos.npz --vlm ...), then train: the new cache entry is used, or pass it with "
            "--reward-program reward_cache/ENV__VIEW__KEY.json. Or train on the environment's own reward "
            "with --reward sparse.") from None
    except UnsupportedEnvError as e:
        raise UnsupportedEnvError(f"{e} (or train on the environment's own reward with --reward sparse)") from None


def record_program(program: RewardProgram, writer=None) -> None:
    """Say which reward program a run uses: printed at startup, and with a TensorBoard `writer`, in its text tab and in
    the run's args.json (`vlmcar_program`: file, cache key, sub-tasks)."""
    import json
    from pathlib import Path

    path = str(program.cache_path or program.name)
    key = Path(path).stem.split("__")[2] if Path(path).stem.count("__") >= 2 else ""
    info = {"file": path, "cache_key": key, "subtasks": program.subtasks}
    print(f"VLM-CaR reward program: {path}" + (f" (cache key {key})" if key else "") + "\n" + program.summary(),
          flush=True)
    if writer is None:
        return
    writer.add_text("vlmcar/reward_program", f"`{path}`\n\n" + "\n".join(f"{i}. {s}" for i, s in
                                                                       enumerate(program.subtasks, 1)))
    args_json = Path(writer.log_dir) / "args.json"
    if args_json.exists():
        recorded = json.loads(args_json.read_text())
        recorded["vlmcar_program"] = info
        args_json.write_text(json.dumps(recorded, indent=2))


def make_reward_hook(envs: gym.vector.VectorEnv, args: Any, writer=None, infos: dict | None = None, obs: Any = None):
    """The one startup call of the training scripts: a reward hook for `args.reward`, after `envs.reset()` (which
    returned `obs`, `infos`).

    Reads these fields of `args` (missing ones take the defaults shown): reward ("vlmcar"), env_id, view
    ("state"), reward_program (None: the cached verified program), vlm (None: the cached verified program only),
    vlm_model (""), vlm_base_url (None), bonus (1.0), shaping ("bonus"), gamma (0.99), use_progress (False),
    require_confinement (False), and for `clip` the clip_* fields. Fails before training, with a message that says
    what to do, when no verified program exists or the env/view is not supported.
    """
    kind = getattr(args, "reward", "vlmcar")
    if kind not in REWARDS:
        raise UsageError(f"unknown --reward {kind!r}; choose one of {', '.join(REWARDS)}")
    if getattr(args, "reward_program", None) and kind != "vlmcar":
        raise UsageError("--reward-program is a VLM-CaR program: use it with --reward vlmcar")
    if kind == "clip":
        from .clip_reward import make_clip_hook

        hook = make_clip_hook(envs, args, writer)
        hook.reset(infos, obs)
        return hook
    program = None
    view = getattr(args, "view", "state")
    if kind == "vlmcar":
        program = program_for_run(args)
        record_program(program, writer)
    hook = RewardHook(program, envs, view=view, bonus=getattr(args, "bonus", 1.0),
                      shaping=getattr(args, "shaping", "bonus"), gamma=getattr(args, "gamma", 0.99),
                      use_progress=getattr(args, "use_progress", False), writer=writer,
                      require_confinement=getattr(args, "require_confinement", False),
                      success=family_for_id(args.env_id).success if getattr(args, "env_id", None) else None)
    hook.reset(infos, obs)
    return hook
