#!/usr/bin/env bash
# Rebuild every results figure and table in the README from the raw results kept in benchmarks/results/.
# Training is not re-run here (that is `bash benchmarks/run_queue.sh benchmarks/jobs.txt`); the learning-curve
# figures and tables are read from the stored TensorBoard event files. The skill curves use 20 episodes per policy
# (collected once, then read from the trajectory store in .vlmcar/).
# Usage: bash benchmarks/make_results.sh [--no-skill]
set -euo pipefail
cd "$(dirname "$0")/.."
res=benchmarks/results
for family in minigrid panda classic; do
  python -m cleanrl_vlmcar compare "$res/$family/runs" --out "$res/figures/$family.png" --csv "$res/${family}_summary.csv"
done
[[ "${1:-}" == "--no-skill" ]] && exit 0
for env in MiniGrid-KeyCorridorS3R1-v0:KeyCorridorS3R1 PandaPush-v3:PandaPush; do
  python -m cleanrl_vlmcar evaluate --env-id "${env%%:*}" --rewards sparse vlmcar --n 20 \
    --out "$res/figures/skill_${env##*:}.png" --json "$res/skill_${env##*:}.json"
done
