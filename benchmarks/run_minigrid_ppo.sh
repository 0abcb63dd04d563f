#!/usr/bin/env bash
# MiniGrid PPO benchmark runs (issue 8): sparse vs vlmcar, several seeds; event files land in
# benchmarks/results/minigrid/runs/ so the figures can be rebuilt without re-training.
# Usage: [EXP=name] bash benchmarks/run_minigrid_ppo.sh ENV_ID STEPS "SEEDS" "REWARDS" [extra ppo flags...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
env_id=$1; steps=$2; seeds=$3; rewards=$4; shift 4
exp=${EXP:-ppo_vlmcar}
mkdir -p "$root/benchmarks/results/minigrid"
cd "$root/benchmarks/results/minigrid"
export OMP_NUM_THREADS=1  # one core per run: runs are compared by steps, and threads only fight here
for seed in $seeds; do
  for reward in $rewards; do
    if ls runs 2>/dev/null | grep -q "^${env_id}__${exp}-${reward}__${seed}__"; then
      echo "skip $env_id $reward $seed (done)"; continue
    fi
    echo "run $env_id $reward seed $seed"
    python "$root/ppo_vlmcar.py" --env-id "$env_id" --reward "$reward" --seed "$seed" --total-timesteps "$steps" --exp-name "$exp" "$@" \
      > "log_${env_id}_${exp}_${reward}_${seed}.txt" 2>&1 || echo "FAILED $env_id $reward $seed"
  done
done
