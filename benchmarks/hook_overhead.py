"""How much the VLM-CaR reward hook adds to a vector-env step (the program runs in the confined worker).

    OMP_NUM_THREADS=1 python benchmarks/hook_overhead.py [--env-id MiniGrid-KeyCorridorS3R1-v0] [--view state|pixels]
        [--num-envs 8] [--rollout 128] [--rounds 30]

Four set-ups live side by side in one process, each with its own SyncVectorEnv stepping random actions: the hook
with a trivial program (the hook's own machinery: views, messages, bookkeeping) and with the shipped verified
program for the env (machinery + the program's checks), each called as ppo_vlmcar.py calls it (`hook.submit` per
step, `hook.flush()` after every `--rollout` steps) and as sac_vlmcar.py does (`hook.step`, the learner waits for the
worker's answer). In each round every set-up runs one rollout with its hook and one without it, on the same env
instances (which goes first alternates between rounds; before a hooked rollout the hook starts over from the envs'
state, untimed). The cost of a set-up is the median over rounds of hooked time / unhooked time: the VM's slow drift
and the few-percent speed differences between env instances (object placement in memory) cancel out. Also reports
the CPU time the worker itself spent per hooked vector step (its polling between rollouts included).
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
        _, self._infos = self.envs.reset(seed=seed)
        self._ended = False  # an episode ended on the last step (its env resets on the next one)
        self._stale = False  # steps were taken without the hook: it must start over before it is used again
        self.hook = None
        if program is not None:
            self.hook = RewardHook(program, self.envs, view=view, audit_every_s=None)  # the machinery per step only
            if batch_scheduling:  # a new worker under SCHED_BATCH, before the hook's first request
                worker = self.hook.runner.worker
                worker.batch_scheduling = True
                worker.start()
            self.hook.reset(self._infos)

    def _restart_hook(self) -> None:
        """Untimed: step until no env is about to autoreset, then start the hook over from the envs' state."""
        while self._ended:
            _, _, te, tr, self._infos = self.envs.step(self.rng.integers(0, 6, size=self.num_envs))
            self._ended = bool(np.logical_or(te, tr).any())
        self.hook.reset(self._infos)
        self._stale = False

    def rollout(self, steps: int, hooked: bool = True) -> float:
        """Seconds per vector step over one rollout, with the hook or (`hooked=False`) without it."""
        hook = self.hook if hooked else None
        if hook is not None and self._stale:
            self._restart_hook()
        self._stale = self._stale or (hook is None and self.hook is not None)
        actions = self.rng.integers(0, 6, size=(steps, self.num_envs))
        envs = self.envs
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
        elapsed = time.perf_counter() - t0
        self._infos, self._ended = infos, bool(np.logical_or(te, tr).any())
        return elapsed / steps

    def worker_cpu_s(self) -> float:
        """The worker's CPU time so far: the scheduler's exact run time (/proc/PID/schedstat, nanoseconds), else
        user + system time in clock ticks (10 ms, sampled: unreliable for a process that runs in short bursts)."""
        if self.hook is None:
            return 0.0
        pid = self.hook.runner.worker.proc.pid
        try:
            return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
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
    setups = {}
    for key, prog in programs.items():
        setups[key + "_submit"] = Setup(args.env_id, args.num_envs, prog, args.view, True, 0)
        setups[key + "_step"] = Setup(args.env_id, args.num_envs, prog, args.view, False, 0)
    for s in setups.values():  # warm-up: caches, the worker's first requests
        s.rollout(args.rollout)
        s.rollout(args.rollout, hooked=False)
    cpu0 = {k: s.worker_cpu_s() for k, s in setups.items()}
    times = {k: {"hooked": [], "unhooked": []} for k in setups}
    for r in range(args.rounds):
        for key, s in setups.items():
            for hooked in ((True, False) if r % 2 == 0 else (False, True)):
                times[key]["hooked" if hooked else "unhooked"].append(s.rollout(args.rollout, hooked) * 1e6)
    steps = args.rounds * args.rollout
    worker_us = {k: (s.worker_cpu_s() - cpu0[k]) / steps * 1e6 for k, s in setups.items()}
    for s in setups.values():
        s.close()
    ratio = {k: float(np.median(np.array(v["hooked"]) / np.array(v["unhooked"]))) for k, v in times.items()}
    plain_us = float(np.median([t for v in times.values() for t in v["unhooked"]]))

    def cell(key):
        return f"{100 * (ratio[key] - 1):+.1f}% (worker {worker_us[key]:.0f} us CPU)"

    print("| env | view | envs | hook call | vector step (us) | + hook machinery (trivial program) "
          "| + hook with the shipped program |\n| --- | --- | --- | --- | --- | --- | --- |")
    for call, suffix in ((f"submit, flush every {args.rollout} (PPO)", "_submit"), ("step (SAC)", "_step")):
        print(f"| {args.env_id} | {args.view} | {args.num_envs} | {call} | {plain_us:.0f} | "
              f"{cell('trivial' + suffix)} | {cell('program' + suffix)} |")
    print(f"(median over {args.rounds} rounds of the ratio of a set-up's hooked to its unhooked rollout, "
          f"{args.rollout} random-action steps each; program {name}; {platform.machine()}, {os.cpu_count()} cores)")
    out = ROOT / "benchmarks" / "results" / f"hook_overhead_{args.view}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env_id": args.env_id, "view": args.view, "num_envs": args.num_envs,
                               "rollout": args.rollout, "rounds": args.rounds, "times_us": times,
                               "overhead": {k: ratio[k] - 1 for k in times}, "unhooked_step_us": plain_us,
                               "worker_cpu_us_per_step": worker_us,
                               "program": name, "machine": platform.machine(), "cores": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
