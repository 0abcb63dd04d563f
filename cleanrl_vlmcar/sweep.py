"""`python -m cleanrl_vlmcar sweep --env-ids A B --rewards sparse vlmcar --seeds 3 -- SCRIPT [ARGS...]`.

Runs the grid env x reward x seed (seeds 1..N) as `python SCRIPT --env-id E --reward R --seed S ARGS...`,
each in its own subprocess whose working directory is `--runs-dir` (default: the current folder), so the
script's `runs/{run_name}` lands in `{runs_dir}/runs/`. Each run's stdout and stderr go to
`{runs_dir}/sweep_logs/{E}__{R}__{S}.log` (overwritten by a new attempt). `--workers N` runs N at a time
(default 1); unless OMP_NUM_THREADS is already set, each run gets OMP_NUM_THREADS = cores // workers, so
parallel runs do not fight over threads (this changes speed only, not results).

Which runs are skipped (already complete). A folder `{runs_dir}/runs/*` belongs to (E, R, S) when its
args.json (or, lacking env_id/reward/seed there, its name `{E}__{exp_name}-{R}__{S}__{time}`) says so. It
counts as the same run only if it has an args.json and

* every option of ARGS whose name is a key of args.json has the same value there (`--total-timesteps 1000`
  is compared with `total_timesteps`, `--view pixels` with `view`, `--no-track` with `track`, numbers as
  numbers); options args.json does not record are not compared;
* its `exp_name` is the `--exp-name` of ARGS, or, without one, the script's file name without `.py`
  (CleanRL's default), so runs of another script never count;

and it is complete if it holds a `done` marker, which the sweep writes into the run folder the script
created when the script exits with code 0, or (runs made without the sweep) the largest global step of any
scalar in its event files is >= 95 % of args.json's `total_timesteps` (PPO's last step is
num_iterations x batch_size, slightly under total_timesteps). A killed or crashed run has no marker and
stops short, so it is run again (in a new folder; the old one stays, `compare` keeps the furthest run).
The plan (`run`/`skip`, with the reason) is printed first; `--dry-run` prints it only.

A run that exits non-zero (or exceeds `--timeout`) is reported with its log path and the log's last lines;
the sweep then exits 1. Bad input (missing script, --seed in ARGS, ...) exits 2.

`--ray-address auto|local|HOST:PORT|ray://HOST:PORT` hands the same runs to Ray instead, one `ray.remote`
task (num_cpus=1) per run calling the same subprocess function. `local` starts a Ray instance on this
machine with `--workers` CPUs (Ray >= 2.4x no longer has the serial `local_mode`); `auto` joins the cluster
this machine belongs to; `HOST:PORT` is a cluster's GCS address (this machine must be a node of it) and
`ray://HOST:PORT` uses Ray Client. On a cluster, SCRIPT and `--runs-dir` must be the same paths on every
node (a shared file system) and cleanrl_vlmcar must be installed there. Ray is optional:
`pip install "cleanrl-vlmcar[ray]"`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

COMPLETE_FRACTION = 0.95
DONE_MARKER = "done"
_GRID_FLAGS = ("--env-id", "--reward", "--seed", "--env_id")


@dataclass
class Job:
    env_id: str
    reward: str
    seed: int
    script: str
    extra: list
    runs_dir: str
    log: str
    env: dict
    timeout: float | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.env_id, self.reward, self.seed)

    def command(self, python: str) -> list[str]:
        return [python, self.script, "--env-id", self.env_id, "--reward", self.reward, "--seed", str(self.seed),
                *self.extra]

    def label(self) -> str:
        return f"{self.env_id} {self.reward} seed {self.seed}"


# ---------------------------------------------------------------- matching existing runs


def parse_options(tokens: list[str]) -> dict[str, object]:
    """`--foo-bar 1 --baz --no-qux --x=y --list a b` -> {foo_bar: ['1'], baz: True, qux: False, x: ['y'],
    list: ['a', 'b']}. Tokens before the first option are ignored."""
    out: dict[str, object] = {}
    key = None
    for tok in tokens:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            key = name.replace("-", "_")
            if eq:
                out[key] = [value]
                key = None
            else:
                out[key] = True
        elif key is not None:
            cur = out[key]
            out[key] = ([] if cur is True else cur) + [tok]
    # `--no-flag` (tyro/argparse BooleanOptionalAction) means flag = False
    for k in [k for k, v in out.items() if v is True and k.startswith("no_")]:
        out.setdefault(k[3:], False)
    return out


def _scalar_equal(recorded, text: str) -> bool:
    if recorded is None:
        return text.lower() in ("none", "null")
    if isinstance(recorded, bool):
        return text.lower() in (("true", "1", "yes") if recorded else ("false", "0", "no"))
    if isinstance(recorded, (int, float)):
        try:
            return math.isclose(float(text), float(recorded), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(recorded) == text


def option_mismatches(recorded: dict, options: dict[str, object]) -> list[str]:
    """Options of ARGS whose value differs from the run's args.json (only keys args.json has)."""
    bad = []
    for key, given in options.items():
        if key not in recorded:
            continue
        have = recorded[key]
        if isinstance(given, bool):
            ok = have is given if isinstance(have, bool) else False
            shown = str(given).lower()
        elif isinstance(have, (list, tuple)):
            ok = len(have) == len(given) and all(_scalar_equal(h, g) for h, g in zip(have, given))
            shown = " ".join(given)
        else:
            ok = len(given) == 1 and _scalar_equal(have, given[0])
            shown = " ".join(given)
        if not ok:
            bad.append(f"{key} {json.dumps(have)} != {shown}")
    return bad


def run_dirs_of(runs_root: Path, key: tuple[str, str, int]) -> list[tuple[Path, dict | None]]:
    """Folders of runs_root that belong to (env_id, reward, seed), with their identity (args etc.)."""
    from .compare import parse_run_name, run_identity

    found = []
    if not runs_root.is_dir():
        return found
    for d in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        ident = run_identity(d) if (d / "args.json").is_file() else None
        if ident is None:
            parsed = parse_run_name(d.name)
            if parsed and (parsed["env_id"], parsed["reward"], parsed["seed"]) == key:
                found.append((d, None))
            continue
        if (ident["env_id"], ident["reward"], ident["seed"]) == key:
            found.append((d, ident))
    return found


def last_logged_step(run_dir: Path) -> int:
    from .compare import load_scalars

    try:
        _tags, scalars = load_scalars(run_dir, None)
    except Exception:  # noqa: BLE001 - a half-written event file counts as not complete
        return -1
    return max((int(s[-1]) for s, _ in scalars.values() if len(s)), default=-1)


def completion(runs_root: Path, key, options: dict, exp_name: str) -> tuple[bool, str]:
    """(complete?, reason) for the grid point `key` given the sweep's ARGS options."""
    candidates = run_dirs_of(runs_root, key)
    if not candidates:
        return False, "no run folder yet"
    reasons = []
    for d, ident in reversed(candidates):  # newest name last -> check newest first
        rel = f"runs/{d.name}"
        if ident is None or not ident["args"]:
            reasons.append(f"{rel}: no args.json")
            continue
        args = ident["args"]
        if args.get("exp_name", exp_name) != exp_name:
            reasons.append(f"{rel}: exp_name {args.get('exp_name')} != {exp_name}")
            continue
        bad = option_mismatches(args, options)
        if bad:
            reasons.append(f"{rel}: args differ ({'; '.join(bad)})")
            continue
        if (d / DONE_MARKER).exists():
            return True, f"complete: {rel} (done marker)"
        total = args.get("total_timesteps")
        if not isinstance(total, (int, float)) or total <= 0:
            reasons.append(f"{rel}: no done marker and no total_timesteps in args.json")
            continue
        step = last_logged_step(d)
        if step >= COMPLETE_FRACTION * total:
            return True, f"complete: {rel} (logged to step {step} of {int(total)})"
        reasons.append(f"{rel}: incomplete (no done marker, logged to step {max(step, 0)} of {int(total)})")
    return False, "; ".join(reasons)


# ---------------------------------------------------------------- running one job (local thread or Ray task)

_LIVE: set = set()
_LIVE_LOCK = threading.Lock()


def run_one(job: Job) -> dict:
    """Run one grid point in a subprocess (cwd = runs dir, output to its log); write the done marker on exit 0.
    Runs in a local worker thread or as a Ray task; returns a plain dict."""
    runs_root = Path(job.runs_dir) / "runs"
    before = {d for d, _ in run_dirs_of(runs_root, job.key)}
    cmd = job.command(sys.executable)
    env = {**os.environ, **job.env}
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timed_out = False
    with open(job.log, "w") as log:
        log.write("# " + " ".join(cmd) + f"\n# cwd {job.runs_dir}\n# started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=job.runs_dir, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)
        except OSError as e:
            log.write(f"# could not start: {e}\n")
            return {"key": list(job.key), "rc": 127, "log": job.log, "seconds": 0.0, "run_dirs": [],
                    "error": str(e)}
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            rc = proc.wait(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            rc = proc.wait()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
        seconds = time.time() - start
        log.write(f"\n# exit code {rc}" + (f" (killed after the {job.timeout:g} s timeout)" if timed_out else "")
                  + f" after {seconds:.1f} s\n")
    new_dirs = sorted({d for d, _ in run_dirs_of(runs_root, job.key)} - before)
    if rc == 0 and not timed_out:
        for d in new_dirs:
            (d / DONE_MARKER).write_text(json.dumps({"exit_code": 0, "seconds": round(seconds, 1), "command": cmd,
                                                     "log": job.log}, indent=1) + "\n")
    return {"key": list(job.key), "rc": rc, "log": job.log, "seconds": seconds, "timed_out": timed_out,
            "run_dirs": [str(d) for d in new_dirs]}


# ---------------------------------------------------------------- CLI


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)


def _log_tail(path: str, n: int = 8) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [ln for ln in lines if not ln.startswith("# exit code")]
    return "\n".join("      " + ln for ln in lines[-n:])


def _report(i: int, n: int, job: Job, res: dict, failures: list) -> None:
    if res["rc"] == 0 and not res.get("timed_out"):
        note = "" if res["run_dirs"] else " (warning: no new run folder under runs/, so it will run again)"
        print(f"[{i}/{n}] ok      {job.label()} ({res['seconds']:.1f} s){note}", flush=True)
        return
    why = f"timed out after {job.timeout:g} s" if res.get("timed_out") else f"exit {res['rc']}"
    if res.get("error"):
        why += f": {res['error']}"
    failures.append((job, why))
    print(f"[{i}/{n}] FAILED  {job.label()} ({why}): see {res['log']}", flush=True)
    tail = _log_tail(res["log"])
    if tail:
        print(tail, flush=True)


def _run_local(jobs: list[Job], workers: int, failures: list) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_one, job): job for job in jobs}
        pending = set(futures)
        done_count = 0
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done_count += 1
                    job = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as e:  # noqa: BLE001 - e.g. the log folder is not writable
                        res = {"rc": -1, "log": job.log, "seconds": 0.0, "run_dirs": [], "error": repr(e)}
                    _report(done_count, len(jobs), job, res, failures)
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            with _LIVE_LOCK:
                for proc in list(_LIVE):
                    proc.terminate()
            raise


def _run_ray(jobs: list[Job], address: str, workers: int, failures: list) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError('--ray-address needs Ray, an optional extra: pip install "cleanrl-vlmcar[ray]"') from None
    if address == "local":
        ray.init(num_cpus=workers, include_dashboard=False)
    else:
        ray.init(address=address)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_one)
        refs = {remote.remote(job): job for job in jobs}
        pending = list(refs)
        done_count = 0
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                done_count += 1
                job = refs[ref]
                try:
                    res = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - RayTaskError, worker crash
                    res = {"rc": -1, "log": job.log, "seconds": 0.0, "run_dirs": [], "error": f"Ray task failed: {e}"}
                _report(done_count, len(jobs), job, res, failures)
    finally:
        ray.shutdown()


def cmd_sweep(args) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("give the training script after `--`, e.g. `... --seeds 3 -- ppo_vlmcar.py "
                         "--total-timesteps 100000`")
    script, extra = command[0], command[1:]
    script_path = Path(script).expanduser().resolve()
    if not script_path.is_file():
        raise ValueError(f"training script {script} not found")
    for tok in extra:
        if tok.split("=", 1)[0] in _GRID_FLAGS:
            raise ValueError(f"{tok.split('=', 1)[0]} is set by the sweep (from --env-ids/--rewards/--seeds); "
                             "remove it from the script arguments")
    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    env_ids = list(dict.fromkeys(args.env_ids))
    rewards = list(dict.fromkeys(args.rewards))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    runs_dir = Path(args.runs_dir).expanduser().resolve()
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ValueError(f"--runs-dir {args.runs_dir} is not a folder")
    if not args.dry_run:
        try:
            (runs_dir / "sweep_logs").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create {runs_dir / 'sweep_logs'}: {e.strerror or e}") from None
        if not os.access(runs_dir, os.W_OK):
            raise ValueError(f"--runs-dir {runs_dir} is not writable")

    options = parse_options(extra)
    exp_name = options.get("exp_name")
    exp_name = exp_name[0] if isinstance(exp_name, list) and exp_name else script_path.stem
    env_overrides = {"PYTHONUNBUFFERED": "1"}
    if "OMP_NUM_THREADS" not in os.environ:
        per_run = 1 if args.ray_address else max(1, (os.cpu_count() or 1) // args.workers)
        env_overrides["OMP_NUM_THREADS"] = str(per_run)

    runs_root = runs_dir / "runs"
    jobs, plan = [], []
    for env_id in env_ids:
        for reward in rewards:
            for seed in seeds:
                complete, reason = completion(runs_root, (env_id, reward, seed), options, exp_name)
                log = runs_dir / "sweep_logs" / f"{_safe(env_id)}__{_safe(reward)}__{seed}.log"
                job = Job(env_id, reward, seed, str(script_path), extra, str(runs_dir), str(log), env_overrides,
                          args.timeout)
                plan.append(("skip" if complete else "run", job, reason))
                if not complete:
                    jobs.append(job)
    total = len(plan)
    where = f"Ray ({args.ray_address})" if args.ray_address else f"{args.workers} local worker(s)"
    print(f"plan: {len(env_ids)} env(s) x {len(rewards)} reward(s) x {len(seeds)} seed(s) = {total} runs; "
          f"{len(jobs)} to run, {total - len(jobs)} skipped; {where}; runs dir {runs_dir}")
    print(f"command: python {script_path} --env-id E --reward R --seed S {' '.join(extra)}".rstrip())
    width = max(len(job.label()) for _, job, _ in plan)
    for verb, job, reason in plan:
        print(f"  {verb:4s}  {job.label():{width}s}  {reason}")
    sys.stdout.flush()
    if args.dry_run or not jobs:
        if not jobs:
            print("nothing to run")
        return 0

    failures: list = []
    start = time.time()
    try:
        if args.ray_address:
            _run_ray(jobs, args.ray_address, args.workers, failures)
        else:
            _run_local(jobs, args.workers, failures)
    except KeyboardInterrupt:
        print("\ninterrupted: running jobs were stopped; completed runs keep their done marker", file=sys.stderr)
        return 130
    ok = len(jobs) - len(failures)
    print(f"\nsweep: {ok} ok, {len(failures)} failed, {total - len(jobs)} skipped in {time.time() - start:.0f} s")
    for job, why in failures:
        print(f"  failed: {job.label()} ({why}); log: {job.log}")
    return 1 if failures else 0


def add_sweep_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a training script over env x reward x seed, skipping completed runs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="python -m cleanrl_vlmcar sweep --env-ids ENV [ENV ...] --rewards R [R ...] "
                             "--seeds N [options] -- SCRIPT [ARGS ...]")
    p.add_argument("--env-ids", nargs="+", required=True, metavar="ENV")
    p.add_argument("--rewards", nargs="+", required=True, metavar="R", help="reward variants (sparse, vlmcar, ...)")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="run seeds 1..N")
    p.add_argument("--first-seed", type=int, default=1, help="first seed (default 1: seeds 1..N)")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--runs-dir", default=".", help="working folder of the runs: runs/ and sweep_logs/ land here "
                   "(default: the current folder)")
    p.add_argument("--ray-address", default=None, metavar="auto|local|HOST:PORT",
                   help="run the grid as Ray tasks (optional extra: pip install \"cleanrl-vlmcar[ray]\")")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed (default: none)")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- SCRIPT [ARGS ...]",
                   help="the training script and its own arguments")
    p.set_defaults(func=cmd_sweep)
    return p
