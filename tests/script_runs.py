"""Running a training script as a subprocess and reading its TensorBoard event files back (shared by the script tests)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def run_script(script: str, args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def scalars(run_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_run(cwd: Path) -> Path:
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


CLIP_TAGS = ["charts/episodic_return", "charts/shaped_return", "charts/success_rate", "clip/p_goal_mean",
             "clip/rewarded_fraction"]


def assert_every_frame_rewarded(tags: dict[str, list[float]]) -> None:
    """A --reward clip run with --clip-threshold 0: the CLIP tags exist, every frame was rewarded, and the shaped
    return (the CLIP reward, which replaces the env's) equals each episode's length."""
    for tag in CLIP_TAGS:
        assert tag in tags, (tag, sorted(tags))
    assert tags["clip/rewarded_fraction"][-1] == 1.0
    assert tags["charts/shaped_return"] == pytest.approx(tags["charts/episodic_length"])
    assert all(0.0 <= p <= 1.0 for p in tags["clip/p_goal_mean"])
