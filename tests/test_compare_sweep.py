"""`compare` (curves + table from TensorBoard event files) and `sweep` (env x reward x seed grid runner)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
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


# ---------------------------------------------------------------- sweep with a fake training script

FAKE_SCRIPT = r'''
import argparse, json, os, sys, time
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

p = argparse.ArgumentParser()
p.add_argument("--env-id"); p.add_argument("--reward"); p.add_argument("--seed", type=int)
p.add_argument("--total-timesteps", type=int, default=1000)
p.add_argument("--exp-name", default="fake")
p.add_argument("--calls", required=True)
p.add_argument("--fail-on", default="")
p.add_argument("--sleep", type=float, default=0.0)
args = p.parse_args()
start = time.time()
time.sleep(args.sleep)
run = f"runs/{args.env_id}__{args.exp_name}-{args.reward}__{args.seed}__{int(time.time())}"
os.makedirs(run, exist_ok=True)
with open(f"{run}/args.json", "w") as f:
    json.dump(vars(args), f)
failing = f"{args.env_id}:{args.reward}:{args.seed}" == args.fail_on
w = EventFileWriter(run)
last = args.total_timesteps // 2 if failing else args.total_timesteps
for step in range(100, last + 1, 100):
    w.add_event(Event(wall_time=time.time(), step=step,
                      summary=Summary(value=[Summary.Value(tag="charts/SPS", simple_value=1000.0)])))
w.close()
with open(args.calls, "a") as f:
    f.write(json.dumps({"env": args.env_id, "reward": args.reward, "seed": args.seed, "cwd": os.getcwd(),
                        "start": start, "end": time.time()}) + "\n")
print("training", args.env_id, args.reward, args.seed)
if failing:
    print("boom: simulated crash", file=sys.stderr)
    sys.exit(1)
'''


@pytest.fixture()
def fake(tmp_path) -> dict:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    return {"script": script, "calls": tmp_path / "calls.jsonl", "runs_dir": tmp_path / "work"}


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _sweep(fake, *extra_sweep, script_args=(), cwd=None):
    cmd = [sys.executable, "-m", "cleanrl_vlmcar", "sweep", "--env-ids", "EnvA-v0", "EnvB-v0",
           "--rewards", "sparse", "vlmcar", "--seeds", "2", "--runs-dir", str(fake["runs_dir"]), *extra_sweep,
           "--", str(fake["script"]), "--calls", str(fake["calls"]), "--total-timesteps", "1000", *script_args]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or fake["runs_dir"].parent, env=env,
                          timeout=120)


def test_sweep_grid_failure_skip_and_workers(fake):
    first = _sweep(fake, "--workers", "2", script_args=("--fail-on", "EnvB-v0:vlmcar:2", "--sleep", "0.7"))
    assert first.returncode == 1, first.stdout + first.stderr
    out = first.stdout
    assert "8 to run, 0 skipped" in out
    assert out.index("plan:") < out.index("[1/8]")
    calls = _calls(fake["calls"])
    assert sorted((c["env"], c["reward"], c["seed"]) for c in calls) == sorted(
        (e, r, s) for e in ("EnvA-v0", "EnvB-v0") for r in ("sparse", "vlmcar") for s in (1, 2))
    assert {c["cwd"] for c in calls} == {str(fake["runs_dir"])}
    # two workers: some runs overlapped in time
    spans = sorted((c["start"], c["end"]) for c in calls)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    # the failure is reported with its log, whose content is the script's output
    log = fake["runs_dir"] / "sweep_logs" / "EnvB-v0__vlmcar__2.log"
    assert f"FAILED  EnvB-v0 vlmcar seed 2 (exit 1): see {log}" in out
    assert "boom: simulated crash" in out  # the log's tail is shown
    assert "sweep: 7 ok, 1 failed, 0 skipped" in out
    assert "boom: simulated crash" in log.read_text()
    assert "training EnvA-v0 sparse 1" in (fake["runs_dir"] / "sweep_logs" / "EnvA-v0__sparse__1.log").read_text()
    runs = sorted((fake["runs_dir"] / "runs").iterdir())
    assert len(runs) == 8
    assert sum((r / "done").exists() for r in runs) == 7  # no marker in the failed run

    # second invocation: only the failed run is run again (and now succeeds)
    second = _sweep(fake, "--workers", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 to run, 7 skipped" in second.stdout
    assert "incomplete (no done marker, logged to step 500 of 1000)" in second.stdout
    assert "(done marker)" in second.stdout
    calls = _calls(fake["calls"])
    assert len(calls) == 9 and (calls[-1]["env"], calls[-1]["reward"], calls[-1]["seed"]) == ("EnvB-v0", "vlmcar", 2)

    # third: everything complete; other total_timesteps would be new runs (dry run: nothing executed)
    third = _sweep(fake)
    assert third.returncode == 0 and "0 to run, 8 skipped" in third.stdout and "nothing to run" in third.stdout
    other = _sweep(fake, "--dry-run", script_args=("--total-timesteps", "2000"))  # overrides the 1000 above
    assert other.returncode == 0 and "8 to run, 0 skipped" in other.stdout
    assert "args differ (total_timesteps 1000 != 2000)" in other.stdout
    assert len(_calls(fake["calls"])) == 9


def test_sweep_dry_run_and_completion_rules(fake, tmp_path):
    runs = fake["runs_dir"] / "runs"
    runs.mkdir(parents=True)

    def made_outside(name: str, last_step: int, **args):
        """A run folder written without the sweep (no done marker)."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        d = runs / name
        d.mkdir()
        (d / "args.json").write_text(json.dumps({"exp_name": "fake", "total_timesteps": 1000,
                                                 "calls": str(fake["calls"]), **args}))
        w = EventFileWriter(str(d))
        for step in (100, last_step):
            w.add_event(Event(step=step, summary=Summary(value=[Summary.Value(tag="charts/x", simple_value=1.0)])))
        w.close()

    made_outside("EnvA-v0__fake-sparse__1__1", 960)  # >= 95 % of 1000: complete
    made_outside("EnvA-v0__fake-sparse__2__1", 900)  # < 95 %: run again
    made_outside("EnvA-v0__fake-vlmcar__1__1", 1000, exp_name="other")  # another script's run
    made_outside("whatever", 1000, env_id="EnvB-v0", reward="vlmcar", seed=2)  # identity from args.json
    proc = _sweep(fake, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    plan = {tuple(line.split()[1:5]): line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert "6 to run, 2 skipped" in proc.stdout
    assert plan[("EnvA-v0", "sparse", "seed", "1")].split()[0] == "skip"
    assert "logged to step 960 of 1000" in plan[("EnvA-v0", "sparse", "seed", "1")]
    assert plan[("EnvA-v0", "sparse", "seed", "2")].split()[0] == "run"
    assert "exp_name other != fake" in plan[("EnvA-v0", "vlmcar", "seed", "1")]
    assert plan[("EnvB-v0", "vlmcar", "seed", "2")].split()[0] == "skip"
    assert plan[("EnvB-v0", "sparse", "seed", "1")].split()[0] == "run"
    assert not _calls(fake["calls"])
    assert not (fake["runs_dir"] / "sweep_logs").exists()


def test_sweep_bad_inputs(fake, tmp_path):
    fake["runs_dir"].mkdir()
    proc = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "sweep", "--env-ids", "A", "--rewards", "r",
                           "--seeds", "1", "--", str(tmp_path / "missing.py")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "error: training script" in proc.stderr and "not found" in proc.stderr
    proc = _sweep(fake, script_args=("--seed", "3"))
    assert proc.returncode == 2 and "--seed is set by the sweep" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "sweep", "--env-ids", "A", "--rewards", "r",
                           "--seeds", "1"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "after `--`" in proc.stderr
    assert not _calls(fake["calls"])


def test_sweep_missing_ray_is_a_clear_error(fake, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    fake["runs_dir"].mkdir()
    rc = main(["sweep", "--env-ids", "A", "--rewards", "r", "--seeds", "1", "--runs-dir", str(fake["runs_dir"]),
               "--ray-address", "local", "--", str(fake["script"]), "--calls", str(fake["calls"])])
    assert rc == 2
    assert 'pip install "cleanrl-vlmcar[ray]"' in capsys.readouterr().err
    assert not _calls(fake["calls"])


def test_sweep_on_local_ray(fake):
    pytest.importorskip("ray")
    proc = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "sweep", "--env-ids", "EnvA-v0", "--rewards",
                           "sparse", "--seeds", "2", "--workers", "2", "--runs-dir", str(fake["runs_dir"]),
                           "--ray-address", "local", "--", str(fake["script"]), "--calls", str(fake["calls"]),
                           "--fail-on", "EnvA-v0:sparse:2"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sweep: 1 ok, 1 failed" in proc.stdout
    assert sorted(c["seed"] for c in _calls(fake["calls"])) == [1, 2]
    done = [r for r in (fake["runs_dir"] / "runs").iterdir() if (r / "done").exists()]
    assert len(done) == 1 and "__1__" in done[0].name


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
