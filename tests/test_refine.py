"""Tests for the refine stage (cleanrl_vlmcar.refine): the training summary, reading a run, the CLI's errors, and
refine end to end with a fake VLM (a scripted loopback chat-completions server, and the manual backend).

No network and no model: runs are built with torch's SummaryWriter in tmp folders; the parent is the shipped
KeyCorridorS3R1 state program, read only; every new cache entry and trajectory lands under pytest's tmp paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers_vlm import ChatServer, completion, user_text

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.__main__ import main
from cleanrl_vlmcar.program import check_source
from cleanrl_vlmcar.refine import (
    RETURN_TAG,
    SUCCESS_TAG,
    RunError,
    curves_table,
    downsample,
    find_stall,
    read_run,
    resolve_parent,
    summarise,
    summarise_curve,
)

# conftest's isolated_caches: nothing lands in the repository
pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("isolated_caches")]

ROOT = Path(__file__).resolve().parents[1]
ENV = "MiniGrid-KeyCorridorS3R1-v0"
PARENT = ROOT / "reward_cache" / f"{ENV}__state__1f0f93c54a91cc63.json"
PARENT_ENTRY = json.loads(PARENT.read_text())
PARENT_PROGRAM = PARENT_ENTRY["program"]
PARENT_SUBTASKS = check_source(PARENT_PROGRAM).subtasks
assert PARENT_ENTRY["passed"] and len(PARENT_SUBTASKS) == 3 and "key" in PARENT_SUBTASKS[0]

FACING_KEY = '''

def _facing(obs):
    """The cell (type, colour, state) in front of the agent, or None at the grid's edge."""
    dx, dy = DIR_TO_VEC[obs["agent_dir"]]
    x, y = obs["agent_pos"][0] + dx, obs["agent_pos"][1] + dy
    grid = obs["grid"]
    if not (0 <= x < grid.shape[0] and 0 <= y < grid.shape[1]):
        return None
    return grid[x, y]


def subtask_1(obs, start):
    cell = _facing(obs)
    if cell is None or cell[0] != KEY:  # cheap test first
        return False
    return cell[1] in [c for _, _, c in _locked_doors(start["grid"])]
'''


def _refined(program: str) -> str:
    """The parent with "stand in front of the key" inserted before "pick up the key"."""
    start = program.index("SUBTASKS = [")
    end = program.index("]", start) + 1
    names = ['    "stand in front of the key that matches the locked door, facing it",'] + \
        [f"    {json.dumps(s)}," for s in PARENT_SUBTASKS]
    out = program[:start] + "SUBTASKS = [\n" + "\n".join(names) + "\n]" + program[end:]
    for k in (3, 2, 1):
        out = out.replace(f"def subtask_{k}(", f"def subtask_{k + 1}(")
    i = out.index("\n\ndef subtask_2(")
    return out[:i] + FACING_KEY + out[i:]


REFINED = _refined(PARENT_PROGRAM)
REFINED_SUBTASKS = check_source(REFINED).subtasks
assert len(REFINED_SUBTASKS) == 4 and REFINED_SUBTASKS[1:] == PARENT_SUBTASKS
REFINED_ANSWER = ("Sub-tasks:\n1. (new) stand in front of the key\n2. pick up the key\n3. open the door\n"
                  f"4. pick up the object\n\n```python\n{REFINED}```\n")
# sub-task 2 looks for a ball instead of a key: loads fine, fails verification (0% of expert episodes)
WRONG = REFINED.replace("carrying[0] != KEY", 'carrying[0] != OBJECT_TO_IDX["ball"]')
assert WRONG != REFINED
WRONG_ANSWER = f"```python\n{WRONG}```\n"

STEPS = [2_000, 4_000, 6_000, 8_000]
# the agent rarely picks up the key: progress stalls at sub-task 1
RATES = {1: [0.0, 0.10, 0.20, 0.25], 2: [0.0, 0.05, 0.10, 0.12], 3: [0.0, 0.0, 0.05, 0.08]}
SUCCESS = [0.0, 0.0, 0.05, 0.08]


# ------------------------------------------------------------------------------------------------ fixtures


def _record(file=str(PARENT), subtasks=PARENT_SUBTASKS) -> dict:
    """The `vlmcar_program` record, as rewards.record_program writes it."""
    path = Path(file)
    key = path.stem.split("__")[2] if path.stem.count("__") >= 2 else ""
    return {"file": str(file), "cache_key": key, "subtasks": list(subtasks)}


def make_run(root: Path, name: str = "run1", rates=None, success=None, returns=None, steps=STEPS,
             args: dict | None = None, program: dict | None | str = "default", events: bool = True) -> Path:
    """A run folder as ppo_vlmcar.py leaves it: args.json with the program record, and an event file."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    record = _record() if program == "default" else program
    recorded = {"env_id": ENV, "view": "state", "reward": "vlmcar", "seed": 1, **(args or {})}
    if record is not None:
        recorded["vlmcar_program"] = record
    (folder / "args.json").write_text(json.dumps(recorded, indent=2))
    if events:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(folder))
        for i, step in enumerate(steps):
            for k, curve in (RATES if rates is None else rates).items():
                writer.add_scalar(f"vlmcar/subtask_{k}_rate", curve[i], step)
            writer.add_scalar(SUCCESS_TAG, (SUCCESS if success is None else success)[i], step)
            for r in returns or [0.1 * i, 0.1 * i + 0.05]:  # two episodes end at this global step
                writer.add_scalar(RETURN_TAG, r, step)
        writer.close()
    return folder


def _refine(run: Path, *args, traj_cache, reward_cache) -> int:
    return main(["refine", "--env-id", ENV, "--from-run", str(run), "--n", "5", "--cache-dir", str(traj_cache),
                 "--reward-cache", str(reward_cache), *args])


# ------------------------------------------------------------------------------------------------ 1. summary


def test_downsample_keeps_first_and_last_and_at_most_max_points():
    pts = [(s * 10, s / 100) for s in range(100)]
    out = downsample(list(reversed(pts)), 10)
    assert len(out) == 10 and out[0] == pts[0] and out[-1] == pts[-1]
    assert [s for s, _ in out] == sorted(s for s, _ in out)
    assert downsample(pts[:7], 10) == pts[:7]
    assert downsample(pts, 1) == [pts[-1]]
    assert downsample([], 10) == []
    with pytest.raises(ValueError):
        downsample(pts, 0)


def test_summarise_curve_final_is_last_and_best_is_earliest_maximum():
    s = summarise_curve("key", [(3, 0.5), (1, 0.2), (2, 0.5), (4, 0.4)])
    assert (s.final, s.best, s.best_step) == (0.4, 0.5, 2)
    assert s.curve == [(1, 0.2), (2, 0.5), (3, 0.5), (4, 0.4)]
    empty = summarise_curve("door", [])
    assert (empty.final, empty.best, empty.curve) == (None, None, [])


def test_stall_is_the_first_subtask_below_threshold_after_one_above():
    s = find_stall([0.9, 0.3, 0.1])
    assert (s.subtask, s.kind, s.before, s.after) == (2, "below_threshold", 0.9, 0.3)
    # KeyCorridorS4R3 as in issue 15: the key learned (0.58), the door not (0.07)
    assert find_stall([0.58, 0.07, 0.01]).subtask == 2
    # the threshold is inclusive: a rate equal to it is learned
    assert find_stall([1.0, 0.5, 0.49]).subtask == 3
    assert find_stall([0.9, 0.6], threshold=0.7).subtask == 2
    # no data for a sub-task counts as not learned
    assert find_stall([0.9, None]).subtask == 2


def test_stall_when_nothing_is_learned_is_the_first_subtask():
    s = find_stall([0.0, 0.0, 0.0])
    assert (s.subtask, s.kind, s.before, s.after) == (1, "below_threshold", 1.0, 0.0)
    assert find_stall([None, None]).subtask == 1


def test_stall_when_everything_is_learned_is_the_largest_drop_or_none():
    s = find_stall([0.95, 0.9, 0.6])
    assert (s.subtask, s.kind) == (3, "largest_drop") and math.isclose(s.before - s.after, 0.3)
    # the drop from the episode start (1.0) counts: 0.4 before sub-task 1
    assert find_stall([0.6, 0.6, 0.55]).subtask == 1
    # equal drops (here 1.0 -> 0.8 -> 0.6, equal only up to float rounding): the earliest
    assert find_stall([0.8, 0.6, 0.6]).subtask == 1
    assert find_stall([1.0, 0.8, 0.6]).subtask == 2
    # at the threshold exactly: learned, so a drop rather than a stall
    assert find_stall([0.5, 0.5]).kind == "largest_drop"
    none = find_stall([1.0, 1.0, 1.0])
    assert (none.subtask, none.kind) == (None, "none")
    with pytest.raises(ValueError):
        find_stall([])
    with pytest.raises(ValueError):
        find_stall([0.5], threshold=0.0)


def test_curves_table_uses_the_last_value_at_or_before_each_row():
    table = curves_table([("a", [(10, 0.1), (30, 0.3)]), ("b", [(20, 0.2)])], max_points=10)
    lines = table.splitlines()
    assert lines[0] == "| global step | a | b |"
    assert lines[2:] == ["| 10 | 0.10 | - |", "| 20 | 0.10 | 0.20 |", "| 30 | 0.30 | 0.20 |"]
    many = curves_table([("a", [(s, s / 1000) for s in range(0, 1000, 10)])], max_points=10)
    assert len(many.splitlines()) == 2 + 10 and "| 990 | 0.99 |" in many


def test_summarise_synthetic_run():
    scalars = {f"vlmcar/subtask_{k}_rate": list(zip(STEPS, c)) for k, c in RATES.items()}
    scalars[SUCCESS_TAG] = list(zip(STEPS, SUCCESS))
    scalars[RETURN_TAG] = [(i, float(i)) for i in range(30)]
    s = summarise("run1", scalars, PARENT_SUBTASKS)
    assert s.final_rates == [0.25, 0.12, 0.08] and s.last_step == 8_000
    assert (s.stall.subtask, s.stall.kind) == (1, "below_threshold")
    assert s.success.final == 0.08 and s.final_return == pytest.approx(sum(range(20, 30)) / 10)
    assert "Progress stalls at sub-task 1" in s.stall_text() and PARENT_SUBTASKS[0] in s.stall_text()
    rec = s.to_record()
    assert rec["run"] == "run1" and rec["final_rates"] == [0.25, 0.12, 0.08] and rec["stall"]["subtask"] == 1
    table = s.curves_table()
    assert "| global step | sub-task 1 | sub-task 2 | sub-task 3 | success |" in table
    assert "| 8,000 | 0.25 | 0.12 | 0.08 | 0.08 |" in table
    # a sub-task never logged: no data, counted as not learned
    partial = summarise("run1", {"vlmcar/subtask_1_rate": [(1, 0.9)]}, ["a", "b"])
    assert partial.final_rates == [0.9, None] and partial.stall.subtask == 2 and "no data" in partial.summary_table()
    learned = summarise("run1", {f"vlmcar/subtask_{k}_rate": [(1, 1.0)] for k in (1, 2)}, ["a", "b"])
    assert learned.stall.kind == "none" and "No stall" in learned.stall_text()


# ------------------------------------------------------------------------------------------------ 2. reading a run


def test_read_run_parses_the_curves_and_the_program_record(tmp_path):
    folder = make_run(tmp_path)
    run = read_run(folder)
    assert run.name == "run1" and run.program == _record()
    for k, curve in RATES.items():
        got = run.scalars[f"vlmcar/subtask_{k}_rate"]
        assert [s for s, _ in got] == STEPS and [v for _, v in got] == pytest.approx(curve)
    assert [v for _, v in run.scalars[SUCCESS_TAG]] == pytest.approx(SUCCESS)
    # both episodes that ended at one global step are kept, in the order they were written
    assert run.scalars[RETURN_TAG][-2:] == [(8_000, pytest.approx(0.3)), (8_000, pytest.approx(0.35))]
    assert len(run.scalars[RETURN_TAG]) == 2 * len(STEPS)
    s = summarise(run.name, run.scalars, run.program["subtasks"])
    assert s.final_rates == pytest.approx([0.25, 0.12, 0.08]) and s.stall.subtask == 1
    program, parent = resolve_parent(run.program, ENV, "state")
    assert program == PARENT_PROGRAM and parent == {"file": PARENT.name, "key": "1f0f93c54a91cc63"}


def test_two_event_files_are_merged(tmp_path):
    folder = make_run(tmp_path)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "resumed"))  # a second event file, later steps
    writer.add_scalar("vlmcar/subtask_1_rate", 0.9, 10_000)
    writer.close()
    run = read_run(folder)
    assert run.scalars["vlmcar/subtask_1_rate"][-1] == (10_000, pytest.approx(0.9))
    assert len(run.scalars["vlmcar/subtask_1_rate"]) == len(STEPS) + 1


def test_parent_found_by_name_in_the_reward_cache_when_the_recorded_path_moved(tmp_path):
    rc = tmp_path / "rc"
    rc.mkdir()
    (rc / PARENT.name).write_text(PARENT.read_text())
    program, parent = resolve_parent(_record(file=f"/elsewhere/{PARENT.name}"), ENV, "state", rc)
    assert program == PARENT_PROGRAM and parent["file"] == PARENT.name
    with pytest.raises(RunError, match="--reward-cache"):
        resolve_parent(_record(file=f"/elsewhere/{PARENT.name}"), ENV, "state", tmp_path / "empty")
    with pytest.raises(RunError, match="not MiniGrid-DoorKey"):
        resolve_parent(_record(), "MiniGrid-DoorKey-5x5-v0", "state")
    py = tmp_path / "prog.py"  # a run trained with --reward-program FILE
    py.write_text(PARENT_PROGRAM)
    program, parent = resolve_parent(_record(file=str(py)), ENV, "state")
    assert program == PARENT_PROGRAM and parent == {"file": str(py), "key": None}


# ------------------------------------------------------------------------------------------------ 3. bad inputs


def _bad(tmp_path, capsys, folder, *extra) -> str:
    code = main(["refine", "--env-id", ENV, "--from-run", str(folder), "--summary-only", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_bad_runs_exit_2_with_a_message_that_says_what_to_do(tmp_path, capsys):
    err = _bad(tmp_path, capsys, tmp_path / "runs" / "nope")
    assert "does not exist" in err and "ls runs/" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no args.json" in _bad(tmp_path, capsys, empty)

    corrupt = make_run(tmp_path, "corrupt")
    (corrupt / "args.json").write_text('{"env_id": "Mini')
    err = _bad(tmp_path, capsys, corrupt)
    assert "cannot read" in err and "args.json" in err

    sparse = make_run(tmp_path, "sparse", args={"reward": "sparse"})
    assert "--reward sparse, not vlmcar" in _bad(tmp_path, capsys, sparse)

    old = make_run(tmp_path, "old", program=None)
    err = _bad(tmp_path, capsys, old)
    assert "no `vlmcar_program` record" in err and "train again" in err

    malformed = make_run(tmp_path, "malformed", program={"file": str(PARENT)})
    assert "malformed" in _bad(tmp_path, capsys, malformed)

    no_events = make_run(tmp_path, "no_events", events=False)
    assert "no TensorBoard event file" in _bad(tmp_path, capsys, no_events)

    damaged = make_run(tmp_path, "damaged", events=False)
    (damaged / "events.out.tfevents.0.host").write_bytes(b"\x00garbage, not a TFRecord" * 10)
    assert "no readable `vlmcar/subtask_k_rate`" in _bad(tmp_path, capsys, damaged)

    good = make_run(tmp_path, "good")
    err = main_err(capsys, ["refine", "--env-id", "MiniGrid-DoorKey-5x5-v0", "--from-run", str(good)])
    assert "pass --env-id MiniGrid-KeyCorridorS3R1-v0" in err
    assert "pass --view state" in _bad(tmp_path, capsys, good, "--view", "pixels")
    assert "--threshold" in _bad(tmp_path, capsys, good, "--threshold", "1.5")
    moved = make_run(tmp_path, "moved", program=_record(file=f"/elsewhere/{PARENT.name}"))
    assert "was not found" in _bad(tmp_path, capsys, moved, "--reward-cache", str(tmp_path / "rc"))
    code = main(["refine", "--env-id", ENV, "--from-run", str(good), "--vlm", "cache"])
    assert code == 2 and "refine needs a VLM" in capsys.readouterr().err


def main_err(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_summary_only_prints_the_summary_and_asks_no_vlm(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["refine", "--env-id", ENV, "--from-run", str(run), "--summary-only"]) == 0
    out = capsys.readouterr().out
    assert "Progress stalls at sub-task 1" in out and "| 8,000 | 0.25 | 0.12 | 0.08 | 0.08 |" in out
    assert not (tmp_path / "default_reward_cache").exists()


# ------------------------------------------------------------------------------------------------ 4. end to end


@pytest.mark.slow
def test_refine_with_a_fake_vlm_writes_a_verified_entry_with_its_parent_and_run(tmp_path, traj_cache):
    run = make_run(tmp_path)
    rc = tmp_path / "rc"
    with ChatServer([(200, completion(REFINED_ANSWER))]) as server:
        code = _refine(run, "--vlm", "openai", "--vlm-model", "test-vlm", "--vlm-base-url", server.url,
                       traj_cache=traj_cache, reward_cache=rc)
        assert code == 0
        assert len(server.requests) == 1
        prompt = user_text(server.requests[0])
        # the same refinement again is a cache hit: no model called
        assert _refine(run, "--vlm", "openai", "--vlm-model", "test-vlm", "--vlm-base-url", server.url,
                       traj_cache=traj_cache, reward_cache=rc) == 0
        assert len(server.requests) == 1
    # the prompt: the current program, the curves table, the stall, the request
    assert PARENT_PROGRAM.strip() in prompt and "pick up the purple ball" in prompt
    assert "| global step | sub-task 1 | sub-task 2 | sub-task 3 | success |" in prompt
    assert "| 8,000 | 0.25 | 0.12 | 0.08 | 0.08 |" in prompt
    assert "| 1 | pick up the key that matches the locked door | 0.25 | 0.25 (8,000) |" in prompt
    assert "Progress stalls at sub-task 1" in prompt and "intermediate sub-task" in prompt
    assert "`run1`" in prompt and "8,000 environment steps" in prompt
    assert "Every sub-task is completed" not in prompt

    files = sorted(rc.glob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    assert entry["passed"] and entry["complete"] and entry["program"] == REFINED
    assert entry["backend"] == "openai" and entry["model"] == "test-vlm" and len(entry["rounds"]) == 1
    assert entry["parent"] == {"file": PARENT.name, "key": "1f0f93c54a91cc63"}
    ran = entry["refined_from_run"]
    assert ran["run"] == "run1" and ran["global_step"] == 8_000 and ran["subtasks"] == PARENT_SUBTASKS
    assert ran["final_rates"] == pytest.approx([0.25, 0.12, 0.08]) and ran["stall"]["subtask"] == 1
    assert [s["description"] for s in entry["report"]["subtasks"]] == REFINED_SUBTASKS
    # it is now the verified program for the env, and it verifies again from the cache
    assert cache.lookup(ENV, "state", rc)[0] == files[0]
    assert main(["verify", "--env-id", ENV, "--reward-cache", str(rc), "--n", "5",
                 "--cache-dir", str(traj_cache)]) == 0


@pytest.mark.slow
def test_refined_program_that_fails_verification_gets_feedback_then_exit_1(tmp_path, traj_cache, capsys):
    run = make_run(tmp_path)
    rc = tmp_path / "rc"
    with ChatServer([(200, completion(WRONG_ANSWER))]) as server:
        code = _refine(run, "--rounds", "2", "--vlm", "openai", "--vlm-model", "test-vlm", "--vlm-base-url",
                       server.url, traj_cache=traj_cache, reward_cache=rc)
        assert code == 1
        assert len(server.requests) == 2
        feedback = user_text(server.requests[1])
    assert "failed verification" in feedback and 'OBJECT_TO_IDX["ball"]' in feedback
    assert "stays the verified program" in capsys.readouterr().err
    entry = json.loads(next(rc.glob("*.json")).read_text())
    assert not entry["passed"] and len(entry["rounds"]) == 2 and entry["parent"]["key"] == "1f0f93c54a91cc63"
    assert cache.lookup(ENV, "state", rc) is None


@pytest.mark.slow
def test_refine_with_the_manual_backend_writes_the_prompt_then_continues(tmp_path, traj_cache, capsys):
    run = make_run(tmp_path)
    rc, manual = tmp_path / "rc", tmp_path / "manual"
    args = ("--vlm", "manual", "--manual-dir", str(manual))
    assert _refine(run, *args, traj_cache=traj_cache, reward_cache=rc) == 3
    assert "answer.md" in capsys.readouterr().out
    (folder,) = manual.iterdir()
    prompt = (folder / "prompt.md").read_text()
    assert "Progress stalls at sub-task 1" in prompt and "| 8,000 | 0.25 | 0.12 | 0.08 | 0.08 |" in prompt
    assert not list(rc.glob("*.json"))  # nothing written before an answer exists
    (folder / "answer.md").write_text(REFINED_ANSWER)
    assert _refine(run, *args, traj_cache=traj_cache, reward_cache=rc) == 0
    entry = json.loads(next(rc.glob("*.json")).read_text())
    assert entry["passed"] and entry["backend"] == "manual" and entry["parent"]["file"] == PARENT.name
    assert entry["refined_from_run"]["run"] == "run1"


def test_parent_flag_serves_runs_older_than_the_program_record(tmp_path):
    """A run whose args.json predates the `vlmcar_program` record is read with --parent ENTRY; a bad entry is a
    clear error."""
    from cleanrl_vlmcar.refine import RunError, read_run
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "old_run"
    run.mkdir()
    (run / "args.json").write_text('{"env_id": "MiniGrid-KeyCorridorS3R1-v0", "reward": "vlmcar"}')
    with SummaryWriter(str(run)) as w:
        for step in (100, 200):
            for k in (1, 2, 3):
                w.add_scalar(f"vlmcar/subtask_{k}_rate", 0.5 / k, step)
    with pytest.raises(RunError, match="--parent"):
        read_run(run)
    entry = next(p for p in (ROOT / "reward_cache").glob("MiniGrid-KeyCorridorS3R1-v0__state__*.json")
                 if p.stem.count("__") == 2)
    got = read_run(run, entry)
    assert got.program["cache_key"] == entry.stem.split("__")[2] and len(got.program["subtasks"]) == 3
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RunError, match="not a readable reward cache entry"):
        read_run(run, bad)
