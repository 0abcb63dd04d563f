"""Command line: `python -m cleanrl_vlmcar {check,verify,synthesize,...}`.

Exit codes: 0 success / passed, 1 the program failed (check, verification or synthesis), 2 bad input,
3 a manual answer is needed (synthesize --vlm manual), 4 the VLM backend failed (rounds so far are saved).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import VLMCaRError


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read program file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"program file {path} is not UTF-8 text") from None


def _all_constants() -> dict:
    from .views import all_specs

    constants: dict = {}
    for spec in all_specs():
        constants.update(spec.constants())
    return constants


def cmd_check(args) -> int:
    """Static: parse and apply the rules; nothing of the program runs (that happens only in `verify`)."""
    from .program import ProgramError, load_program, sanitize

    source = _read(args.program)
    if args.env_id:
        from .trajectories import make_env
        from .views import get_spec

        constants = get_spec(make_env(args.env_id), args.view).constants()
    else:
        constants = _all_constants()
    try:
        program = load_program(source, constants, name=args.program)
    except ProgramError as e:
        print(e)
        return 1
    print(f"{sanitize(args.program, 300, single_line=True)}: OK (static check; run `verify` to run it)")
    print(program.summary())
    return 0


def _add_verify_flags(p: argparse.ArgumentParser) -> None:
    from .verify import DEFAULT_N, EXPERT_THRESHOLD, MIN_AGREEMENT, RANDOM_MARGIN, RANDOM_THRESHOLD

    # defaults are None so that `verify` can tell a flag given from the settings an entry was verified with
    p.add_argument("--n", type=int, default=None, help=f"expert and random trajectories each (default {DEFAULT_N})")
    p.add_argument("--seed", type=int, default=None, help="first seed of the expert episodes (random: seed + 10000; "
                                                          "held-out: + 50000); default 0")
    p.add_argument("--expert-threshold", type=float, default=None,
                   help=f"fraction of expert trajectories that must complete every sub-task (default {EXPERT_THRESHOLD})")
    p.add_argument("--random-threshold", type=float, default=None,
                   help=f"largest fraction of random trajectories allowed to complete the task (default "
                        f"{RANDOM_THRESHOLD}); raised to the environment's own random success + --random-margin")
    p.add_argument("--random-margin", type=float, default=None,
                   help=f"margin over the environment's own random success (default {RANDOM_MARGIN})")
    p.add_argument("--min-agreement", type=float, default=None,
                   help=f"precision and recall of the final sub-task against the environment's success, where it "
                        f"reports success (default {MIN_AGREEMENT})")
    p.add_argument("--no-holdout", action="store_const", const=True, default=None,
                   help="skip the held-out validation on fresh seeds (default: a program must pass both)")
    p.add_argument("--max-check-us", type=float, default=None,
                   help="fail a program whose checks take longer than this on average (default: only flag checks "
                        "over the view's budget)")
    p.add_argument("--expert-source", choices=["expert", "demos"], default=None,
                   help="scripted expert (default), or your demonstrations (--demos)")
    p.add_argument("--demos", default=None, help="demonstrations .npz (seeds, lengths, actions)")
    p.add_argument("--cache-dir", default=None, help="trajectory cache folder (default .vlmcar or $VLMCAR_CACHE)")
    p.add_argument("--verify-timeout", type=float, default=120.0,
                   help="wall-clock limit of the whole verification run in the confined worker, seconds")
    p.add_argument("--memory-mb", type=int, default=1024, help="memory limit of the confined worker, MB")
    p.add_argument("--require-confinement", action="store_true",
                   help="fail when the kernel lacks Landlock or seccomp (default: warn and run with process "
                        "isolation and rlimits only)")


def cmd_verify(args) -> int:
    from . import cache
    from .families import make_env
    from .verify import VerifySettings, settings_from_args, verify_env

    make_env(args.env_id).close()  # an unknown env id is reported as such, not as a missing program
    base = None
    if args.program:
        source = _read(args.program)
    else:
        found = cache.lookup(args.env_id, args.view, args.reward_cache)
        if found is None:
            raise ValueError(f"no cached program for {args.env_id} ({args.view} view) in "
                             f"{args.reward_cache or cache.DEFAULT_DIR}; pass --program FILE or run "
                             "`python -m cleanrl_vlmcar synthesize` first")
        print(f"verifying the cached program {found[0]}")
        source = found[1]["program"]
        if found[1].get("verification"):
            base = VerifySettings.from_dict(found[1]["verification"])
    settings, changed = settings_from_args(args, base)
    if base is not None:
        print("with the settings it was verified with" + (f", except {', '.join(changed)} (from the command line)"
                                                           if changed else ""))
    report = verify_env(source, args.env_id, args.view, settings, cache_dir=args.cache_dir,
                        timeout_s=args.verify_timeout, memory_mb=args.memory_mb,
                        require_confinement=args.require_confinement)
    print(report.to_text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cleanrl_vlmcar", description="VLM-CaR: verified reward code.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="statically check a reward program file (nothing of it runs) and print its "
                                     "sub-tasks")
    p.add_argument("program", help="the program file (.py)")
    p.add_argument("--env-id", default=None, help="also load it with this env's view constants")
    p.add_argument("--view", default="state", help="view of --env-id (default state)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("verify", help="verify a program over expert and random trajectories")
    p.add_argument("--env-id", required=True)
    p.add_argument("--view", default="state", help="the view programs read: state or pixels (MiniGrid, panda-gym), obs or pixels (any other environment)")
    p.add_argument("--program", default=None, help="program file; default: the cached program for env and view")
    p.add_argument("--reward-cache", default=None, help="reward cache folder (default: the repo's reward_cache/)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    _add_verify_flags(p)
    p.set_defaults(func=cmd_verify)

    try:
        from .generate import add_synthesize_parser
    except ImportError:  # pragma: no cover - during development only
        pass
    else:
        add_synthesize_parser(sub, _add_verify_flags)
        from .refine import add_refine_parser; add_refine_parser(sub, _add_verify_flags)  # noqa: E702
    from .evaluate import add_evaluate_parser

    add_evaluate_parser(sub)
    from .compare import add_compare_parser; add_compare_parser(sub)  # noqa: E702
    from .sweep import add_sweep_parser; add_sweep_parser(sub)  # noqa: E702
    from .demos import add_record_demos_parser; add_record_demos_parser(sub)  # noqa: E702
    from .clip_train import add_clip_train_parser; add_clip_train_parser(sub)  # noqa: E702
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (VLMCaRError, ValueError, FileNotFoundError) as e:  # errors that carry their own advice; bad input
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
