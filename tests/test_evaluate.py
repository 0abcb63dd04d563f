"""The evaluate verb: skill curve over random/novice/sub-optimal/expert policies, precision/recall, figure."""

import json

import pytest
from PIL import Image

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.__main__ import main
from cleanrl_vlmcar.evaluate import POLICIES, _prf
from cleanrl_vlmcar.program import check_source

KC = "MiniGrid-KeyCorridorS3R1-v0"


def test_prf_hand_values():
    import numpy as np

    p, r, f = _prf(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    assert (p, r, f) == (0.5, 0.5, 0.5)
    assert _prf(np.zeros(3, bool), np.ones(3, bool)) == (0.0, 0.0, 0.0)


def test_evaluate_vlmcar_and_sparse(tmp_path, capsys):
    out, js = tmp_path / "skill.png", tmp_path / "skill.json"
    code = main(["evaluate", "--env-id", KC, "--rewards", "sparse", "vlmcar", "--n", "4", "--out", str(out),
                 "--json", str(js), "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    text = capsys.readouterr().out
    assert "| reward | random | novice | sub-optimal | expert | precision | recall | F1 |" in text
    results = {r["reward"]: r for r in json.loads(js.read_text())}
    assert set(results) == {"sparse", "vlmcar"}
    for r in results.values():
        assert set(r["mean_return"]) == set(POLICIES)
        assert r["mean_return"]["expert"] > r["mean_return"]["random"]
    # the verified program agrees with the environment's success on these episodes
    assert results["vlmcar"]["precision"] == 1.0 and results["vlmcar"]["recall"] == 1.0
    # sub-task bonuses: expert episodes earn one bonus per sub-task of the shipped program on top of the env return
    k = len(check_source(cache.lookup(KC, "state")[1]["program"]).subtasks)
    assert results["vlmcar"]["mean_return"]["expert"] == pytest.approx(results["sparse"]["mean_return"]["expert"] + k)
    assert Image.open(out).size[0] > 100


@pytest.mark.slow
def test_evaluate_clip_pr_curve(tmp_path, tiny_clip, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    js = tmp_path / "clip.json"
    code = main(["evaluate", "--env-id", KC, "--rewards", "clip", "--n", "2", "--clip-model", tiny_clip,
                 "--out", str(tmp_path / "clip.png"), "--json", str(js), "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    (clip,) = json.loads(js.read_text())
    thresholds = [t for t, _, _ in clip["pr_curve"]]
    assert thresholds[0] == 0.0 and thresholds[-1] == 1.0
    assert clip["pr_curve"][0][2] == 1.0  # threshold 0: every episode counts as done, recall 1
    assert clip["pr_curve"][-1][2] == 0.0  # threshold 1: none
    assert (tmp_path / "clip.png").exists()


def test_evaluate_bad_input(tmp_path, capsys):
    assert main(["evaluate", "--env-id", KC, "--n", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["evaluate", "--env-id", "MiniGrid-Nope-v0", "--out", str(tmp_path / "x.png")]) == 2
    with pytest.raises(SystemExit):
        main(["evaluate", "--env-id", KC, "--rewards", "magic"])


def test_evaluate_without_a_program_fails_before_simulating(tmp_path, capsys):
    """No verified program for the env: evaluate says to synthesize one, before any trajectory is collected."""
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    code = main(["evaluate", "--env-id", "MiniGrid-DoorKey-5x5-v0", "--rewards", "sparse", "vlmcar", "--n", "2",
                 "--reward-cache", str(empty), "--cache-dir", str(tmp_path / "store"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "synthesize one first" in err and "--vlm openai|hf|manual" in err
    assert not any(p.is_file() for p in (tmp_path / "store").rglob("*"))  # nothing was simulated


def test_verify_names_an_unknown_env_id(capsys):
    assert main(["verify", "--env-id", "NoSuchEnv-v0"]) == 2
    assert "cannot make environment 'NoSuchEnv-v0'" in capsys.readouterr().err
