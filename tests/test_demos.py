"""Demonstrations for environments without a scripted expert: keyboard play, a saved policy, action lists."""

import io
import json

import numpy as np
import pytest

from cleanrl_vlmcar.__main__ import main
from cleanrl_vlmcar.demos import record_keyboard, save_demos, scripted_expert_env_ids, text_map
from cleanrl_vlmcar.trajectories import load_demos, make_env, make_expert

EMPTY = "MiniGrid-Empty-5x5-v0"  # agent at (1, 1) facing right, goal at (3, 3)
TO_GOAL = "ww d ww"  # forward twice, turn right (down), forward twice: the goal


def test_keyboard_play_records_what_was_played_and_replays_to_success(tmp_path):
    lines = io.StringIO(f"{TO_GOAL}\nzz q\n{TO_GOAL}\n")  # episode 2: an unknown key, then given up
    shown = []
    played = record_keyboard(EMPTY, 3, seed=0, stdin=lines, out=shown.append)
    assert [(s, ok) for s, _, ok in played] == [(0, True), (2, True)]  # seed 1 was given up, not kept
    assert played[0][1] == [2, 2, 1, 2, 2]
    assert any("unknown key 'z'" in m for m in shown) and any("given up" in m for m in shown)
    assert "G " in shown[0] and ">" in shown[0]  # the text map: goal and agent
    path = save_demos(tmp_path / "d.npz", [(s, a) for s, a, _ in played])
    demos = load_demos(path, EMPTY, "state")
    assert [d.success for d in demos] == [True, True] and [d.length for d in demos] == [5, 5]


def test_record_demos_cli_from_action_lists_keeps_successful_episodes(tmp_path, capsys):
    episodes = [{"seed": 0, "actions": [2, 2, 1, 2, 2]}, {"seed": 1, "actions": [0, 0]},
                {"seed": 2, "actions": [2, 2, 1, 2, 2]}]
    src = tmp_path / "episodes.json"
    src.write_text(json.dumps(episodes))
    out = tmp_path / "demos.npz"
    assert main(["record-demos", "--env-id", EMPTY, "--actions", str(src), "--out", str(out)]) == 0
    assert "2 of 3 recorded reached the environment's success" in capsys.readouterr().out
    with np.load(out) as data:
        assert data["seeds"].tolist() == [0, 2] and data["lengths"].tolist() == [5, 5]
        assert data["actions"].shape == (2, 5)
    # the file verifies a program with the first episode judging and the second held out
    report_rc = main(["verify", "--env-id", EMPTY, "--program", str(_goal_program(tmp_path)), "--expert-source",
                      "demos", "--demos", str(out), "--n", "1", "--cache-dir", str(tmp_path / "c")])
    assert report_rc == 0, capsys.readouterr().out


def _goal_program(tmp_path):
    p = tmp_path / "goal.py"
    p.write_text("import numpy as np\nSUBTASKS = ['stand on the goal']\ndef subtask_1(obs, start):\n"
                 "    g = np.argwhere(start['grid'][:, :, 0] == OBJECT_TO_IDX['goal'])\n"
                 "    return len(g) > 0 and tuple(int(v) for v in g[0]) == tuple(obs['agent_pos'])\n")
    return p


def test_record_demos_bad_inputs(tmp_path, capsys):
    out = str(tmp_path / "d.npz")
    assert main(["record-demos", "--env-id", EMPTY, "--out", out]) == 2  # no source
    assert "choose one source" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["record-demos", "--env-id", EMPTY, "--actions", str(bad), "--out", out]) == 2
    assert "is not JSON" in capsys.readouterr().err
    bad.write_text(json.dumps([{"seed": "zero", "actions": []}]))
    assert main(["record-demos", "--env-id", EMPTY, "--actions", str(bad), "--out", out]) == 2
    assert "expected a list of" in capsys.readouterr().err
    none = tmp_path / "none.json"
    none.write_text(json.dumps([{"seed": 0, "actions": [0]}]))  # never reaches the goal
    assert main(["record-demos", "--env-id", EMPTY, "--actions", str(none), "--out", out]) == 1
    assert "no successful episode" in capsys.readouterr().err
    with pytest.raises(ValueError, match="keyboard play is for MiniGrid"):
        record_keyboard("CartPole-v1", 1, stdin=io.StringIO(""))


def test_record_demos_help_documents_the_format(capsys):
    with pytest.raises(SystemExit):
        main(["record-demos", "--help"])
    text = capsys.readouterr().out
    assert "seeds    (N,)" in text and "actions  (N, T_max, *shape)" in text and "held-out" in text


def test_scripted_expert_list_is_exact_and_named_in_the_error():
    ids = scripted_expert_env_ids()
    for env_id in ("MiniGrid-DoorKey-8x8-v0", "MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-Empty-5x5-v0",
                   "PandaPush-v3", "PandaReach-v3"):
        assert env_id in ids
    for env_id in ("MiniGrid-RedBlueDoors-6x6-v0", "MiniGrid-MemoryS7-v0", "PandaStack-v3", "PandaPushJoints-v3"):
        assert env_id not in ids
    with pytest.raises(ValueError) as err:
        make_expert(make_env("MiniGrid-RedBlueDoors-6x6-v0"))
    message = str(err.value)
    assert "MiniGrid-KeyCorridorS3R1-v0" in message and "PandaPush-v3" in message and "..." not in message
    assert "record-demos" in message


def test_text_map_shows_doors_keys_and_what_is_carried():
    env = make_env("MiniGrid-DoorKey-5x5-v0")
    env.reset(seed=0)
    text = text_map(env)
    assert "D" in text and "K" in text and "##" in text and "carrying: nothing" in text
