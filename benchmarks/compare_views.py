"""Do the shipped state-view and pixels-view programs of an env reward the same steps?

    python benchmarks/compare_views.py [--env-id MiniGrid-UnlockPickup-v0] [--random 100] [--noisy 50] [--expert 50]

Rolls out random, novice (50% random actions), sub-optimal (30%) and expert episodes, records both views of every
step, runs each program (in its confined worker) through the hook's own `advance` rule and compares the steps at which the sub-tasks are
completed. Prints every episode where they differ, with whether the environment counted a success and the action
that led to the first step where they disagree, and writes
benchmarks/results/compare_views_{env}.json.
"""

import argparse
import json
import platform
from pathlib import Path

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.confine import ProgramWorker
from cleanrl_vlmcar.program import load_program
from cleanrl_vlmcar.trajectories import make_env, make_policy, rollout
from cleanrl_vlmcar.views import get_spec

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="MiniGrid-UnlockPickup-v0")
    p.add_argument("--random", type=int, default=100, help="random-action episodes")
    p.add_argument("--noisy", type=int, default=50, help="episodes of each noisy expert (50% and 30% random actions)")
    p.add_argument("--expert", type=int, default=50, help="expert episodes")
    p.add_argument("--seed", type=int, default=5000)
    args = p.parse_args()

    env = make_env(args.env_id)
    programs = {}
    for view in ("state", "pixels"):
        found = cache.lookup(args.env_id, view)
        if found is None:
            raise SystemExit(f"no verified {view} program for {args.env_id} in reward_cache/")
        programs[view] = ProgramWorker(load_program(found[1]["program"], get_spec(env, view).constants(),
                                      name=found[0].name))

    rows, same, total = [], 0, 0
    for policy_name, n in (("random", args.random), ("noisy0.5", args.noisy), ("noisy0.3", args.noisy),
                           ("expert", args.expert)):
        policy = make_policy(policy_name, env)
        for i in range(n):
            traj = rollout(env, policy, args.seed + i, ["state", "pixels"], stop_on_success=False)
            steps = {v: [t for t in worker.walk(traj.views[v]).steps if t is not None]
                     for v, worker in programs.items()}
            total += 1
            if steps["state"] == steps["pixels"]:
                same += 1
                continue
            # the first step where they disagree, and the action that led to it
            a, b = steps["state"] + [None], steps["pixels"] + [None]
            j = next(j for j in range(len(a)) if a[j] != b[j])
            t = min(x for x in (a[j], b[j]) if x is not None)
            row = {"policy": policy_name, "seed": args.seed + i, "env_success": traj.success, **steps,
                   "first_difference": t, "action": int(traj.actions[t - 1])}
            rows.append(row)
            print(row)
    print(f"{args.env_id}: identical completion steps on {same} of {total} episodes")
    out = ROOT / "benchmarks" / "results" / f"compare_views_{args.env_id}.json"
    out.write_text(json.dumps({"env_id": args.env_id, "identical": same, "episodes": total, "differing": rows,
                               "machine": platform.machine()}, indent=2) + "\n")
    print(f"wrote {out}")
    for worker in programs.values():
        worker.close()


if __name__ == "__main__":
    main()
