"""How much the VLM-CaR reward hook adds to a vector-env step (the program runs in the confined worker).

    OMP_NUM_THREADS=1 python benchmarks/hook_overhead.py [--env-id MiniGrid-KeyCorridorS3R1-v0] [--view state|pixels]
        [--num-envs 8] [--steps 4000]

Runs the same pre-drawn random actions through a SyncVectorEnv without the hook, with the hook and a trivial program
(the hook's own machinery: views and bookkeeping), and with the hook and the shipped verified program for the env
(machinery + the program's checks), both with `hook.step` (the learner waits for the worker's answer) and with
`hook.submit` (pipelined: the worker checks step t while the learner steps the envs for t+1, as ppo_vlmcar.py
does), alternating several times; prints the median cost per vector step.
Writes benchmarks/results/hook_overhead_{view}.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401
import numpy as np

from cleanrl_vlmcar.integrate import RewardHook
from cleanrl_vlmcar.program import load_program
from cleanrl_vlmcar.views import get_spec

ROOT = Path(__file__).resolve().parents[1]


def run(env_id, num_envs, steps, program, seed, view="state", pipelined=False):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
    actions = np.random.default_rng(seed).integers(0, 6, size=(steps, num_envs))
    _, infos = envs.reset(seed=seed)
    hook = None
    if program is not None:
        hook = RewardHook(program, envs, view=view)
        hook.reset(infos)
    t0 = time.perf_counter()
    for a in actions:
        _, r, te, tr, infos = envs.step(a)
        if hook is not None:
            r = hook.submit(r, te, tr, infos) if pipelined else hook.step(r, te, tr, infos)
    if pipelined:
        hook.flush()
    elapsed = time.perf_counter() - t0
    if hook is not None:
        hook.close()
    envs.close()
    return elapsed / steps * 1e6


TRIVIAL = "SUBTASKS = ['never']\ndef subtask_1(obs, start):\n    return False\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="MiniGrid-KeyCorridorS3R1-v0")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--program", default=None, help="program file (default: the shipped cache entry)")
    p.add_argument("--view", default="state", choices=["state", "pixels"])
    args = p.parse_args()
    from cleanrl_vlmcar import cache

    constants = get_spec(gym.make(args.env_id), args.view).constants()
    if args.program:
        source, name = Path(args.program).read_text(), Path(args.program).name
    else:
        path, entry = cache.lookup(args.env_id, args.view)
        source, name = entry["program"], path.name
    programs = {"trivial": load_program(TRIVIAL, constants), "program": load_program(source, constants, name)}
    times = {"plain": [], "trivial": [], "program": [], "trivial_pipelined": [], "program_pipelined": []}
    for r in range(args.repeats):
        times["plain"].append(run(args.env_id, args.num_envs, args.steps, None, r))
        for key, prog in programs.items():
            times[key].append(run(args.env_id, args.num_envs, args.steps, prog, r, args.view))
            times[key + "_pipelined"].append(run(args.env_id, args.num_envs, args.steps, prog, r, args.view, True))
    med = {k: float(np.median(v)) for k, v in times.items()}

    def cell(key):
        return f"{med[key]:.0f} ({100 * (med[key] / med['plain'] - 1):+.1f}%)"

    print("| env | view | envs | hook call | vector step (us) | + hook machinery (trivial program) "
          "| + hook with the shipped program |\n| --- | --- | --- | --- | --- | --- | --- |")
    for call, suffix in (("step", ""), ("submit (pipelined)", "_pipelined")):
        print(f"| {args.env_id} | {args.view} | {args.num_envs} | {call} | {med['plain']:.0f} | "
              f"{cell('trivial' + suffix)} | {cell('program' + suffix)} |")
    print(f"(median of {args.repeats} alternating runs of {args.steps} random-action steps; program {name}; "
          f"{platform.machine()}, {__import__('os').cpu_count()} cores)")
    out = ROOT / "benchmarks" / "results" / f"hook_overhead_{args.view}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env_id": args.env_id, "view": args.view, "num_envs": args.num_envs, "steps": args.steps,
                               "times_us": times, "program": name, "machine": platform.machine(),
                               "cores": __import__("os").cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
