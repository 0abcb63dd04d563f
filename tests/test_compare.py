"""`compare`: curves and a table from TensorBoard event files (`sweep` is in test_sweep.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cleanrl_vlmcar.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SUCCESS = "charts/success_rate"
RETURN = "charts/episodic_return"


# ---------------------------------------------------------------- event files written like the training scripts


def write_run(parent: Path, env_id: str, reward: str, seed: int, curves: dict, *, exp_name: str = "ppo_vlmcar",
              total_timesteps: int = 3000, with_args: bool = True, stamp: int = 1700000000) -> Path:
    """A run folder `{env}__{exp}-{reward}__{seed}__{t}` with args.json and scalars {tag: [(step, value)]}."""
    from torch.utils.tensorboard import SummaryWriter

    run = parent / f"{env_id}__{exp_name}-{reward}__{seed}__{stamp + seed}"
    writer = SummaryWriter(str(run))
    for tag, points in curves.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    if with_args:
        (run / "args.json").write_text(json.dumps({"exp_name": exp_name, "seed": seed, "env_id": env_id,
                                                   "reward": reward, "total_timesteps": total_timesteps}))
    return run


STEPS = list(range(100, 3001, 100))
# group (EnvA, vlmcar): success rises linearly to 1.0; seed s first reaches >= 0.9 at CROSS[s]
CROSS = {1: 900, 2: 1000, 3: 1300}


def rising(cross: int) -> list[tuple[int, float]]:
    return [(s, 0.95 if s >= cross else 0.5 * s / cross) for s in STEPS]


def flat(level: float) -> list[tuple[int, float]]:
    return [(s, level) for s in STEPS]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare") / "runs"
    for seed in (1, 2, 3):
        # EnvA: vlmcar crosses 0.9 at 900/1000/1300; sparse never does (final 0.3)
        write_run(root, "EnvA-v0", "vlmcar", seed, {SUCCESS: rising(CROSS[seed]),
                                                   RETURN: [(s, 0.5 + 0.1 * seed) for s in STEPS]})
        write_run(root, "EnvA-v0", "sparse", seed, {SUCCESS: flat(0.3), RETURN: flat(0.1 * seed)})
        # EnvB: sparse crosses at 2000 for seeds 1 and 2 only (seed 3 never: "not reached (1 of 3)");
        # vlmcar crosses at step 500 for every seed; these runs have no args.json (identity from the name)
        b_sparse = rising(2000) if seed < 3 else flat(0.5)
        write_run(root / "nested", "EnvB-v0", "sparse", seed, {SUCCESS: b_sparse, RETURN: flat(1.0)}, with_args=False)
        write_run(root / "nested", "EnvB-v0", "vlmcar", seed, {SUCCESS: rising(500), RETURN: flat(2.0)},
                  with_args=False)
    return root


def _table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| env "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells
    return rows


def test_compare_figure_table_and_csv(runs_dir, tmp_path, capsys):
    out, table_csv = tmp_path / "fig.png", tmp_path / "table.csv"
    rc = main(["compare", str(runs_dir), "--out", str(out), "--csv", str(table_csv), "--threshold", "0.9",
               "--min-episodes", "1",
               "--smooth", "3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size[0] > 500 and im.size[1] > 500  # 2 env rows x 2 tag columns
    rows = _table_rows(text)
    assert set(rows) == {("EnvA-v0", "sparse"), ("EnvA-v0", "vlmcar"), ("EnvB-v0", "sparse"), ("EnvB-v0", "vlmcar")}
    assert all(r[2] == "3" for r in rows.values())  # 3 seeds each

    crosses = np.array(list(CROSS.values()), dtype=float)
    mean, se = crosses.mean(), crosses.std(ddof=1) / np.sqrt(3)
    assert rows[("EnvA-v0", "vlmcar")][3] == f"{mean:.0f} ± {se:.0f}"  # 1067 ± 120
    assert rows[("EnvA-v0", "sparse")][3] == "not reached (3 of 3)"
    assert rows[("EnvB-v0", "sparse")][3] == "2000 ± 0 (2 of 3); not reached (1 of 3)"
    assert rows[("EnvB-v0", "vlmcar")][3] == "500 ± 0"
    assert rows[("EnvA-v0", "vlmcar")][4] == "0.95 ± 0.00"  # final success
    assert rows[("EnvA-v0", "sparse")][4] == "0.30 ± 0.00"
    assert rows[("EnvA-v0", "vlmcar")][5] == "0.70 ± 0.06"  # final return: 0.6, 0.7, 0.8

    with open(table_csv) as f:
        by_key = {(r["env"], r["reward"]): r for r in csv.DictReader(f)}
    assert set(by_key) == set(rows)
    assert float(by_key[("EnvA-v0", "vlmcar")]["steps_mean"]) == pytest.approx(mean)
    assert float(by_key[("EnvA-v0", "vlmcar")]["steps_se"]) == pytest.approx(se)
    assert by_key[("EnvB-v0", "sparse")]["reached"] == "2" and by_key[("EnvB-v0", "sparse")]["with_success"] == "3"
    assert by_key[("EnvA-v0", "sparse")]["steps_mean"] == ""
    assert by_key[("EnvA-v0", "vlmcar")]["steps_to_threshold"] == rows[("EnvA-v0", "vlmcar")][3]


def test_compare_threshold_and_single_tag(runs_dir, tmp_path, capsys):
    rc = main(["compare", str(runs_dir / "nested"), "--out", str(tmp_path / "b.png"), "--min-episodes", "1",
               "--tags", SUCCESS,
               "--threshold", "0.4"])
    rows = _table_rows(capsys.readouterr().out)
    assert rc == 0
    assert set(rows) == {("EnvB-v0", "sparse"), ("EnvB-v0", "vlmcar")}
    # rising(2000) first reaches 0.4 at step 1600; flat(0.5) at step 100
    steps = np.array([1600, 1600, 100], dtype=float)
    assert rows[("EnvB-v0", "sparse")][3] == f"{steps.mean():.0f} ± {steps.std(ddof=1) / np.sqrt(3):.0f}"


def test_compare_separates_algorithms_and_warns_on_duplicate_seeds(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, "EnvC-v0", "vlmcar", 1, {SUCCESS: flat(1.0)})
    write_run(root, "EnvC-v0", "vlmcar", 1, {SUCCESS: flat(1.0)[:5]}, stamp=1600000000)  # shorter duplicate
    write_run(root, "EnvC-v0", "vlmcar", 1, {SUCCESS: flat(0.0)}, exp_name="ppo_vlmcar_pixels")
    rc = main(["compare", str(root), "--out", str(tmp_path / "c.png"), "--tags", SUCCESS])
    captured = capsys.readouterr()
    rows = _table_rows(captured.out)
    assert rc == 0
    assert set(rows) == {("EnvC-v0", "ppo_vlmcar-vlmcar"), ("EnvC-v0", "ppo_vlmcar_pixels-vlmcar")}
    assert rows[("EnvC-v0", "ppo_vlmcar-vlmcar")][2] == "1"
    assert rows[("EnvC-v0", "ppo_vlmcar-vlmcar")][3] == "100"
    assert "seed 1: 2 runs" in captured.err


def test_compare_names_args_that_differ_between_seeds(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, "EnvD-v0", "vlmcar", 1, {SUCCESS: flat(1.0)})
    write_run(root, "EnvD-v0", "vlmcar", 2, {SUCCESS: flat(1.0)}, total_timesteps=6000)
    newer = write_run(root, "EnvD-v0", "vlmcar", 3, {SUCCESS: flat(1.0)})
    args = json.loads((newer / "args.json").read_text())
    (newer / "args.json").write_text(json.dumps({**args, "clip_end_episode": False}))  # a flag added later
    assert main(["compare", str(root), "--out", str(tmp_path / "d.png"), "--tags", SUCCESS]) == 0
    err = capsys.readouterr().err
    assert "warning: EnvD-v0 vlmcar: the seeds' args.json differ in total_timesteps (3000, 6000)" in err
    assert "note: EnvD-v0 vlmcar: only some seeds' args.json record clip_end_episode" in err
    assert "clip_end_episode (false" not in err


def test_compare_bad_inputs(runs_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert main(["compare", str(empty), "--out", str(tmp_path / "x.png")]) == 2
    assert "no runs in" in capsys.readouterr().err

    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a directory" in capsys.readouterr().err

    assert main(["compare", str(runs_dir), "--out", str(tmp_path / "x.png"), "--tags", "charts/nope", SUCCESS]) == 2
    err = capsys.readouterr().err
    assert "error: tag charts/nope is in none of the 12 runs" in err
    assert "tags that exist: charts/episodic_return, charts/success_rate" in err

    assert main(["compare", str(runs_dir), "--out", str(tmp_path / "missing_dir" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(runs_dir), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["compare", str(runs_dir), "--out", str(tmp_path / "x.txt")]) == 2
    assert "image file name" in capsys.readouterr().err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["compare", str(runs_dir), "--out", str(locked / "x.png")]) == 2
        assert "permission denied" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_compare_cli_exit_code(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "compare", str(tmp_path / "empty"), "--out",
                           str(tmp_path / "x.png")], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no runs in")


def test_success_before_the_window_fills_is_not_counted(tmp_path, capsys):
    # a lucky first episode reads as 100% success; steps-to-threshold counts from the 10th episode on
    root = tmp_path / "runs"
    success = [(100, 1.0), (200, 0.5), (300, 0.4)] + [(s, 0.95) for s in range(1500, 3001, 100)]
    write_run(root, "EnvC-v0", "sparse", 1, {SUCCESS: success, RETURN: [(s, 0.0) for s in range(100, 3001, 100)]})
    assert main(["compare", str(root), "--out", str(tmp_path / "c.png"), "--min-episodes", "10"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows[("EnvC-v0", "sparse")][3] == "1500"
    assert main(["compare", str(root), "--out", str(tmp_path / "c.png"), "--min-episodes", "1"]) == 0
    assert _table_rows(capsys.readouterr().out)[("EnvC-v0", "sparse")][3] == "100"


def test_step_axis_labels_are_short():
    from cleanrl_vlmcar.compare import _steps_label

    assert [_steps_label(x) for x in (0, 500, 25000, 125000, 1e6, 1.5e6)] == ["0", "500", "25k", "125k", "1M", "1.5M"]


def test_clip_runs_table_reads_what_the_agent_was_paid(tmp_path):
    """benchmarks/clip_runs_table.py: per run the env's success and the CLIP reward's own numbers; only clip runs of
    the env; a clear error when there are none."""
    env = "MiniGrid-KeyCorridorS3R1-v0"
    for seed, paid in ((1, 270.0), (2, 1.0)):
        write_run(tmp_path, env, "clip", seed, {SUCCESS: [(10_000, 0.5), (30_000, 0.2), (40_000, 0.1)],
                                                 "charts/shaped_return": [(10_000, 0.0), (30_000, paid)],
                                                 "clip/rewarded_fraction": [(30_000, 0.7), (40_000, 0.4)]},
                  exp_name="ppo_vlmcar_clip_x")
    write_run(tmp_path, env, "vlmcar", 1, {SUCCESS: [(30_000, 1.0)]})
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "clip_runs_table.py"), str(tmp_path), "--env-id", env,
           "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [(r["variant"], r["seed"]) for r in rows] == [("ppo_vlmcar_clip_x", 1), ("ppo_vlmcar_clip_x", 2)]
    r = rows[0]
    assert r["final_success"] == pytest.approx(0.1) and r["best_success"] == pytest.approx(0.2)  # 0.5 is before 20k
    assert r["best_clip_return"] == 270.0 and r["rewarded_fraction_max"] == pytest.approx(0.7)
    assert r["rewarded_fraction_end"] == pytest.approx(0.4) and r["episodes_ended_by_clip"] is None
    assert "| ppo_vlmcar_clip_x | 2 | 0.10 ± 0.00 | 0.20 ± 0.00 |" in done.stdout
    bad = subprocess.run(cmd[:3] + ["--env-id", "MiniGrid-Empty-5x5-v0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no --reward clip runs of MiniGrid-Empty-5x5-v0" in bad.stderr
