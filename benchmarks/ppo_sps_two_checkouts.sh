#!/usr/bin/env bash
# Training speed of two checkouts of this repository side by side, the way two trainings share a small machine:
# ppo_vlmcar.py --reward vlmcar of OTHER_CHECKOUT and of this one run at the same time (same seed and settings, one
# torch thread each), REPEATS times; prints each run's final SPS.
#   git worktree add /tmp/old <commit>; bash benchmarks/ppo_sps_two_checkouts.sh /tmp/old [REPEATS] [STEPS] [ENV_ID]
set -euo pipefail
other=$(cd "$1" && pwd)
repeats=${2:-2}
steps=${3:-102400}
env_id=${4:-MiniGrid-KeyCorridorS3R1-v0}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work"
for r in $(seq "$repeats"); do
  for tree in "$other" "$here"; do
    mkdir -p "$work/$r/$(basename "$tree")"
    (cd "$work/$r/$(basename "$tree")" && PYTHONPATH="$tree" OMP_NUM_THREADS=1 python "$tree/ppo_vlmcar.py" \
        --env-id "$env_id" --reward vlmcar --total-timesteps "$steps" --seed 1 > log.txt 2>&1) &
  done
  wait
  for tree in "$other" "$here"; do
    echo "round $r $tree $(grep '^SPS:' "$work/$r/$(basename "$tree")/log.txt" | tail -1)"
  done
done
rm -rf "$work"
