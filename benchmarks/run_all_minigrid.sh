#!/usr/bin/env bash
# The MiniGrid PPO runs behind the README's results, as two queues (this machine has 2 cores).
# Re-running skips runs already present in benchmarks/results/minigrid/runs/.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
queue_a() {
  bash "$here/run_minigrid_ppo.sh" MiniGrid-KeyCorridorS3R1-v0 300000 "1 2 3" "sparse vlmcar"
  EXP=ppo_vlmcar_pixels bash "$here/run_minigrid_ppo.sh" MiniGrid-KeyCorridorS3R1-v0 300000 "1 2 3" "vlmcar" --view pixels
  bash "$here/run_minigrid_ppo.sh" MiniGrid-DoorKey-8x8-v0 1000000 "1 2 3" "sparse vlmcar"
}
queue_b() {
  bash "$here/run_minigrid_ppo.sh" MiniGrid-KeyCorridorS3R3-v0 1000000 "1 2 3" "sparse vlmcar"
  bash "$here/run_minigrid_ppo.sh" MiniGrid-UnlockPickup-v0 1000000 "1 2 3" "sparse vlmcar"
}
case "${1:-both}" in
  a) queue_a ;;
  b) queue_b ;;
  *) queue_a & queue_b & wait ;;
esac
