"""How much the VLM-CaR reward hook adds to a vector-env step (the program runs in the confined worker).

    OMP_NUM_THREADS=1 python benchmarks/hook_overhead.py [--env-id MiniGrid-KeyCorridorS3R1-v0] [--view state|pixels]
        [--num-envs 8] [--rollout 128] [--rounds 30]

Five set-ups live side by side in one process, each with its own SyncVectorEnv and the same random actions:
no hook; the hook with a trivial program (the hook's own machinery: views, messages, bookkeeping) and with the
shipped verified program for the env (machinery + the program's checks), each called as ppo_vlmcar.py calls it
(`hook.submit` per step, `hook.flush()` after every `--rollout` steps) and as sac_vlmcar.py does (`hook.step`, the
learner waits for the worker's answer). One round runs one rollout of every set-up in turn; the cost of a set-up
is the median over rounds of its time per vector step divided by the no-hook time of the same round, so a VM's
slow drift cancels out. Also reports the CPU time the worker itself spent per vector step.
Writes benchmarks/results/hook_overhead_{view}.json.
"""

import argparse
import json
import os
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
TRIVIAL = "SUBTASKS = ['never']\ndef subtask_1(obs, start):\n    return False\n"


class Setup:
    """One vector env (+ hook) that runs rollouts of random actions; `batch_scheduling` is the worker's."""

    def __init__(self, env_id, num_envs, program, view, queued, seed, batch_scheduling=False):
        self.envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
        self.rng = np.random.default_rng(seed)
        self.num_envs, self.queued = num_envs, queued
        _, infos = self.envs.reset(seed=seed)
        self.hook = None
        if program is not None:
            self.hook = RewardHook(program, self.envs, view=view)
            if batch_scheduling:  # a new worker under SCHED_BATCH, before the hook's first request
                worker = self.hook.runner.worker
                worker.batch_scheduling = True
                worker.start()
            self.hook.reset(infos)

    def rollout(self, steps: int) -> float:
        """Seconds per vector step over one rollout."""
        actions = self.rng.integers(0, 6, size=(steps, self.num_envs))
        hook, envs = self.hook, self.envs
        t0 = time.perf_counter()
        for a in actions:
            _, r, te, tr, infos = envs.step(a)
            if hook is not None:
                if self.queued:
                    hook.submit(r, te, tr, infos)
                else:
                    hook.step(r, te, tr, infos)
        if hook is not None and self.queued:
            hook.flush()
        return (time.perf_counter() - t0) / steps

    def worker_cpu_s(self) -> float:
        if self.hook is None:
            return 0.0
        pid = self.hook.runner.worker.proc.pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self):
        if self.hook is not None:
            self.hook.close()
        self.envs.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="MiniGrid-KeyCorridorS3R1-v0")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--rollout", type=int, default=128, help="steps per rollout (PPO's num_steps)")
    p.add_argument("--rounds", type=int, default=30)
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
    setups = {"plain": Setup(args.env_id, args.num_envs, None, args.view, False, 0)}
    for key, prog in programs.items():
        setups[key + "_submit"] = Setup(args.env_id, args.num_envs, prog, args.view, True, 0)
        setups[key + "_step"] = Setup(args.env_id, args.num_envs, prog, args.view, False, 0)
    for s in setups.values():  # warm-up: caches, the worker's first requests
        s.rollout(args.rollout)
    cpu0 = {k: s.worker_cpu_s() for k, s in setups.items()}
    times = {k: [] for k in setups}
    for _ in range(args.rounds):
        for key, s in setups.items():
            times[key].append(s.rollout(args.rollout) * 1e6)
    steps = args.rounds * args.rollout
    worker_us = {k: (s.worker_cpu_s() - cpu0[k]) / steps * 1e6 for k, s in setups.items()}
    for s in setups.values():
        s.close()
    plain = np.array(times["plain"])
    ratio = {k: float(np.median(np.array(v) / plain)) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}

    def cell(key):
        return f"{100 * (ratio[key] - 1):+.1f}% (worker {worker_us[key]:.0f} us CPU)"

    print("| env | view | envs | hook call | vector step (us) | + hook machinery (trivial program) "
          "| + hook with the shipped program |\n| --- | --- | --- | --- | --- | --- | --- |")
    for call, suffix in ((f"submit, flush every {args.rollout} (PPO)", "_submit"), ("step (SAC)", "_step")):
        print(f"| {args.env_id} | {args.view} | {args.num_envs} | {call} | {med['plain']:.0f} | "
              f"{cell('trivial' + suffix)} | {cell('program' + suffix)} |")
    print(f"(median over {args.rounds} rounds of the per-round ratio to the no-hook rollout, {args.rollout} "
          f"random-action steps each; program {name}; {platform.machine()}, {os.cpu_count()} cores)")
    out = ROOT / "benchmarks" / "results" / f"hook_overhead_{args.view}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env_id": args.env_id, "view": args.view, "num_envs": args.num_envs,
                               "rollout": args.rollout, "rounds": args.rounds, "times_us": times,
                               "overhead": {k: ratio[k] - 1 for k in times}, "worker_cpu_us_per_step": worker_us,
                               "program": name, "machine": platform.machine(), "cores": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
