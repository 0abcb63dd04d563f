#!/usr/bin/env bash
# Training speed of ppo_vlmcar.py with the sparse reward and with the VLM-CaR hook (program in the confined worker),
# alternating, on an otherwise idle machine: bash benchmarks/ppo_sps_variants.sh [REPEATS] [STEPS]
set -euo pipefail
repeats=${1:-2}
steps=${2:-40960}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work"
for _ in $(seq "$repeats"); do
  for reward in sparse vlmcar; do
    sps=$(OMP_NUM_THREADS=1 python "$here/ppo_vlmcar.py" --reward "$reward" --total-timesteps "$steps" --seed 1 2>&1 \
          | grep '^SPS:' | tail -1)
    echo "$reward $sps"
  done
done
rm -rf "$work"
