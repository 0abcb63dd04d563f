#!/usr/bin/env bash
# Training speed of ppo_vlmcar.py with the sparse reward, with the VLM-CaR hook (program in the confined worker), and
# with the hook plus --subtask-obs (the hook answers every step before the next action), alternating, on an
# otherwise idle machine: bash benchmarks/ppo_sps_variants.sh [REPEATS] [STEPS]
set -euo pipefail
repeats=${1:-2}
steps=${2:-40960}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work"
for _ in $(seq "$repeats"); do
  for variant in sparse vlmcar vlmcar-subtask-obs; do
    flags=(--reward "${variant%%-*}")
    [[ "$variant" == *subtask-obs ]] && flags+=(--subtask-obs)
    sps=$(OMP_NUM_THREADS=1 python "$here/ppo_vlmcar.py" "${flags[@]}" --total-timesteps "$steps" --seed 1 2>&1 \
          | grep '^SPS:' | tail -1)
    echo "$variant $sps"
  done
done
rm -rf "$work"
