"""How long a pipe round trip to another process takes on this machine, back to back and after the other side has
slept: the floor under the confined worker's cost per vector step.

    python benchmarks/pipe_wakeup.py

A parent busy-waits `gap` microseconds (standing in for the environment step), then writes 4 bytes to a child that
echoes them. Prints the mean round trip for each gap and writes benchmarks/results/pipe_wakeup.json.
"""

import json
import os
import platform
import time
from pathlib import Path

GAPS_US = (0, 200, 1000)
N = 2000


def busy(us: float) -> None:
    until = time.perf_counter() + us / 1e6
    while time.perf_counter() < until:
        pass


def main() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w1)
        while True:
            b = os.read(r1, 4)
            if not b:
                os._exit(0)
            os.write(w2, b)
    os.close(r1)
    out = {}
    for gap in GAPS_US:
        total = 0.0
        for _ in range(N):
            busy(gap)
            t = time.perf_counter()
            os.write(w1, b"ping")
            os.read(r2, 4)
            total += time.perf_counter() - t
        out[gap] = total / N * 1e6
        print(f"after {gap:5d} us of other work: round trip {out[gap]:6.0f} us")
    os.close(w1)
    os.waitpid(pid, 0)
    path = Path(__file__).resolve().parent / "results" / "pipe_wakeup.json"
    path.write_text(json.dumps({"round_trip_us_by_gap_us": out, "n": N, "machine": platform.machine(),
                                "cores": os.cpu_count(), "kernel": platform.release()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
