#!/usr/bin/env bash
# Run a list of training jobs, at most SLOTS at a time (default 2: this machine has 2 cores), skipping finished ones.
# Usage: bash benchmarks/run_queue.sh JOBS_FILE   (each line: RESULTS_SUBDIR SCRIPT ENV_ID REWARD SEED STEPS [flags])
# The run's exp name is the script's name (+ _pixels with --view pixels), or the `--exp-name NAME` among the flags.
# Event files land in benchmarks/results/RESULTS_SUBDIR/runs/, logs beside them.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
slots=${SLOTS:-2}
export OMP_NUM_THREADS=1  # one core per run: runs are compared by steps, threads would only fight
while read -r sub script env_id reward seed steps flags; do
  [[ -z "$sub" || "$sub" == \#* ]] && continue
  dir="$root/benchmarks/results/$sub"; mkdir -p "$dir"
  exp="$(basename "$script" .py)"; [[ "$flags" == *"--view pixels"* ]] && exp="${exp}_pixels"
  if [[ "$flags" =~ --exp-name[[:space:]]+([^[:space:]]+) ]]; then  # a variant named in the jobs file
    exp="${BASH_REMATCH[1]}"; flags="${flags/${BASH_REMATCH[0]}/}"
  fi
  if ls "$dir/runs" 2>/dev/null | grep -q "^${env_id}__${exp}-${reward}__${seed}__"; then
    echo "skip $env_id $exp $reward $seed"; continue
  fi
  while [ "$(pgrep -fc "python .*_vlmcar.py --env-id")" -ge "$slots" ]; do sleep 15; done
  echo "$(date +%H:%M) run $env_id $exp $reward $seed"
  eval "flagv=($flags)"  # flags may hold quoted texts with spaces (e.g. --clip-negatives "...")
  (cd "$dir" && python "$root/$script" --env-id "$env_id" --reward "$reward" --seed "$seed" \
      --total-timesteps "$steps" --exp-name "$exp" "${flagv[@]}" > "log_${env_id}_${exp}_${reward}_${seed}.txt" 2>&1 \
      || echo "FAILED $env_id $exp $reward $seed") &
  sleep 5
done < "$1"
wait
