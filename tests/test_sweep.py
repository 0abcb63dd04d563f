"""`sweep` (env x reward x seed grid runner), driven with a fake training script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cleanrl_vlmcar.__main__ import main


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
