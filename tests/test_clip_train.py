"""clip-train: captions from the simulator, a tiny CLIP trained on frames and loaded by ClipReward, resume, bad
input, and the precision-recall computation of the reward-accuracy figure."""

import json
from pathlib import Path

import numpy as np
import pytest

from cleanrl_vlmcar.__main__ import main

KC = "MiniGrid-KeyCorridorS3R1-v0"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- captions ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_caption_follows_a_scripted_keycorridor_episode():
    from cleanrl_vlmcar.families.minigrid import caption, mission_done
    from cleanrl_vlmcar.trajectories import make_env, make_policy

    env = make_env(KC)
    policy = make_policy("expert", env)
    obs, _ = env.reset(seed=0)
    policy.reset(env, obs, 0)
    u = env.unwrapped
    key = next(o for o in u.grid.grid if o is not None and o.type == "key")
    locked = next(o for o in u.grid.grid if o is not None and o.type == "door" and o.is_locked)
    first = caption(env)
    assert first.startswith("the agent holds nothing; ")
    assert f"the {locked.color} door is locked" in first
    assert first.endswith(f"the agent has not completed the task: {u.mission}")
    seen, t, holds_key_at, opened_at, done_at = [first], 0, None, None, None
    while True:
        obs, reward, terminated, truncated, _ = env.step(policy.act(env, obs))
        t += 1
        c = caption(env)
        seen.append(c)
        if holds_key_at is None and f"the agent holds the {key.color} key" in c:
            holds_key_at = t
            assert u.carrying is key
        if opened_at is None and f"the {locked.color} door is open" in c:
            opened_at = t
            assert locked.is_open
        if done_at is None and "the agent has completed the task" in c:
            done_at = t
        if terminated or truncated:
            break
    assert reward > 0 and terminated  # the expert solved it
    assert holds_key_at is not None and opened_at is not None and holds_key_at < opened_at < done_at == t
    # the caption changes only at these events (and when the key is dropped to pick up the ball)
    changes = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
    assert {holds_key_at, opened_at, done_at} <= set(changes) and len(changes) <= 5
    assert mission_done(env) is True
    assert seen[-1].endswith(f"the agent has completed the task: {u.mission}")
    assert caption(env, done=False).endswith("not completed the task: " + u.mission)  # the caller's success wins


# -- clip-train ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("clip") / "kc-tiny"
    args = ["clip-train", "--env-id", KC, "--size", "tiny", "--out", str(out), "--episodes", "2",
            "--frames-per-episode", "3", "--epochs", "1", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    return out, args


@pytest.mark.slow
def test_clip_train_writes_a_checkpoint_clip_reward_loads(trained):
    from cleanrl_vlmcar.clip_reward import ClipReward, ClipRewardConfig
    from cleanrl_vlmcar.trajectories import make_env
    from cleanrl_vlmcar.views import make_view

    out, _ = trained
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "train_log.json",
                 "train_state.pt", "dataset.npz"):
        assert (out / name).exists(), name
    log = json.loads((out / "train_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1]
    e = log["epochs"][0]
    assert np.isfinite(e["loss"]) and 0.0 <= e["heldout_retrieval_acc"] <= 1.0
    assert log["settings"]["size"] == "tiny" and log["params"] < 5_000_000
    assert set(log["train_seeds"]).isdisjoint(log["heldout_seeds"]) and len(log["heldout_seeds"]) == 1
    with np.load(out / "dataset.npz") as z:
        assert z["frames"].dtype == np.uint8 and len(z["frames"]) == len(z["captions"])
        assert z["done"].any()  # the expert's last frame
        assert set(z["policies"]) == {"random", "novice", "sub-optimal", "expert"}

    env = make_env(KC)
    pixels = make_view(env, "pixels")
    env.reset(seed=5)
    frames = np.stack([pixels.reset()["rgb"], pixels.step()["rgb"]])
    reward = ClipReward(ClipRewardConfig(model=str(out), device="cpu"), env.unwrapped.mission)
    r, stats = reward(frames)
    assert r.shape == (2,) and set(np.unique(r)) <= {0.0, 1.0}
    assert np.all((stats["p_goal"] >= 0) & (stats["p_goal"] <= 1))


@pytest.mark.slow
def test_clip_train_resume_continues_and_refuses_to_overwrite(trained, capsys):
    out, args = trained
    assert main(args[:args.index("--epochs")] + ["--epochs", "2"] + args[args.index("--threads"):]) == 2
    assert "--resume" in capsys.readouterr().err
    resumed = args[:args.index("--epochs")] + ["--epochs", "2", "--resume"] + args[args.index("--threads"):]
    assert main(resumed) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert log["epochs"][1]["steps"] > log["epochs"][0]["steps"] and np.isfinite(log["epochs"][1]["loss"])
    # other settings than the run's
    other = [a if a != "2" else "3" for a in resumed]  # --episodes 3
    assert main(other) == 2
    assert "episodes was 2, now 3" in capsys.readouterr().err


def test_selection_key_ranks_ap_then_f1_and_keeps_the_earliest_of_equals():
    from cleanrl_vlmcar.clip_train import best_epoch, selection_key

    e = [{"epoch": 1, "heldout_p_goal_ap": None, "heldout_reward_f1": 0.9, "heldout_retrieval_acc": 0.9},
         {"epoch": 2, "heldout_p_goal_ap": 0.8, "heldout_reward_f1": 0.1, "heldout_retrieval_acc": 0.1},
         {"epoch": 3, "heldout_p_goal_ap": 1.0, "heldout_reward_f1": 0.5, "heldout_retrieval_acc": 0.9},
         {"epoch": 4, "heldout_p_goal_ap": 1.0, "heldout_reward_f1": 0.7, "heldout_retrieval_acc": 0.2},
         {"epoch": 5, "heldout_p_goal_ap": 1.0, "heldout_reward_f1": 0.7, "heldout_retrieval_acc": 0.2},
         {"epoch": 6, "heldout_p_goal_ap": 0.5, "heldout_reward_f1": 1.0, "heldout_retrieval_acc": 1.0}]
    assert selection_key(e[0])[0] == -1.0  # no AP (no success frame held out) ranks lowest
    assert best_epoch(e)["epoch"] == 4
    assert best_epoch(e[:2])["epoch"] == 2 and best_epoch([]) is None


@pytest.mark.slow
def test_clip_train_keeps_the_best_epoch_and_resumes_from_the_last(tmp_path, monkeypatch, capsys):
    """OUT holds the epoch with the best held-out AP of p(goal), OUT/last the last one, and --resume continues the
    last; --select last keeps the last in OUT."""
    from safetensors.numpy import load_file

    import cleanrl_vlmcar.clip_train as ct

    aps = iter([0.9, 0.4, 0.95, 0.9, 0.1])  # epochs 1..3 of the first run, then 1..2 of the --select last run
    real = ct._evaluate

    def fake(*a, **k):
        return {**real(*a, **k), "heldout_p_goal_ap": next(aps)}

    monkeypatch.setattr(ct, "_evaluate", fake)
    out = tmp_path / "kc"
    base = ["clip-train", "--env-id", KC, "--size", "tiny", "--out", str(out), "--episodes", "2",
            "--frames-per-episode", "2", "--threads", "1", "--no-progress"]

    assert main(base + ["--epochs", "2"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["selected_epoch"] == 1 and [e["heldout_p_goal_ap"] for e in log["epochs"]] == [0.9, 0.4]
    assert "holds epoch 1 (the best held-out AP" in capsys.readouterr().out
    kept, last = load_file(out / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert kept.keys() == last.keys()
    from cleanrl_vlmcar.clip_reward import ClipReward, ClipRewardConfig

    ClipReward(ClipRewardConfig(model=str(out / "last"), device="cpu"), "pick up the ball")  # a whole checkpoint
    assert any(not np.array_equal(kept[k], last[k]) for k in kept)  # epoch 2 trained on: OUT did not follow
    # --resume continues from the last epoch (not the kept one) and keeps epoch 3, now the best
    assert main(base + ["--epochs", "3", "--resume"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["selected_epoch"] == 3 and log["epochs"][2]["steps"] == 3 * log["epochs"][0]["steps"]
    kept, last = load_file(out / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert all(np.array_equal(kept[k], last[k]) for k in kept)
    # --select last: OUT follows the last epoch even when it is worse
    out2 = tmp_path / "kc-last"
    assert main([a if a != str(out) else str(out2) for a in base] + ["--epochs", "2", "--select", "last"]) == 0
    log = json.loads((out2 / "train_log.json").read_text())
    assert log["selected_epoch"] == 2 and log["epochs"][1]["heldout_p_goal_ap"] == 0.1
    kept, last = load_file(out2 / "model.safetensors"), load_file(out2 / "last" / "model.safetensors")
    assert all(np.array_equal(kept[k], last[k]) for k in kept)
    # a resume with another --select is refused like any other changed setting
    assert main([a if a != str(out) else str(out2) for a in base] + ["--epochs", "3", "--resume"]) == 2
    assert "select was 'last', now 'best'" in capsys.readouterr().err


def test_clip_train_bad_input(tmp_path, capsys):
    base = ["clip-train", "--env-id", KC, "--out", str(tmp_path / "o"), "--episodes", "2", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(base + ["--size", "huge"])
    assert e.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["clip-train", "--env-id", "PandaReach-v3", "--size", "tiny", "--out", str(tmp_path / "p")]) == 2
    assert "panda family of PandaReach-v3 has no captions yet" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["clip-train", "--env-id", KC, "--size", "tiny", "--out", str(blocker / "sub")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err
    assert main(base + ["--size", "tiny", "--episodes", "1"]) == 2


# -- precision-recall ------------------------------------------------------------------------------------------------
def test_pr_curve_on_synthetic_scores():
    from cleanrl_vlmcar.clip_train import average_precision, pr_curve, pr_point

    scores = [0.9, 0.8, 0.7, 0.6, 0.1]
    labels = [1, 0, 1, 0, 0]
    thr, precision, recall = pr_curve(scores, labels)
    assert thr.tolist() == [0.9, 0.8, 0.7, 0.6, 0.1]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5, 0.4])
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert average_precision(scores, labels) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # ties form one point
    thr, precision, recall = pr_curve([0.5, 0.5, 0.2], [1, 0, 1])
    assert thr.tolist() == [0.5, 0.2] and precision.tolist() == [0.5, 2 / 3] and recall.tolist() == [0.5, 1.0]
    # a perfect ranking has AP 1; the binary reward's point is strict (p > threshold)
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert pr_point(np.array([0.9, 0.5, 0.1]) > 0.5, [1, 1, 0]) == (1.0, 0.5)
    assert pr_point([False, False], [True, False]) == (1.0, 0.0)


def test_pr_figure_from_a_result(tmp_path):
    from PIL import Image

    from cleanrl_vlmcar.clip_train import _thin, plot_pr_curves, pr_curve, pr_table

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.05
    p = np.clip(0.6 * y + 0.5 * rng.random(300), 0, 1)
    curve = _thin(*pr_curve(p, y))
    assert curve[-1][2] == 1.0 and len(curve) <= y.sum() + 1
    result = {"env_id": KC, "episodes_per_policy": 3, "seeds": [0, 2], "frames": 300, "positives": int(y.sum()),
              "positive_rate": float(y.mean()), "threshold": 0.5,
              "models": [{"label": "tiny", "average_precision": 0.9, "curve": curve,
                          "at_threshold": {"threshold": 0.5, "precision": 0.8, "recall": 0.7}}],
              "program": {"view": "state", "precision": 1.0, "recall": 1.0}}
    out = plot_pr_curves(result, tmp_path / "pr.png")
    assert Image.open(out).size[0] > 300
    assert "| verified program (state view) | - | - | 1.000 | 1.000 |" in pr_table(result)


@pytest.mark.slow
def test_evaluate_pr_curve_end_to_end(trained, tmp_path, capsys):
    from cleanrl_vlmcar.clip_train import reward_pr_curves

    out, _ = trained
    fig = tmp_path / "pr.png"
    code = main(["evaluate", "--env-id", KC, "--rewards", "sparse", "--n", "2", "--clip-model", str(out),
                 "--pr-curve", str(fig), "--out", str(tmp_path / "skill.png"), "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    assert "| verified program (state view) | - | - | 1.000 | 1.000 |" in capsys.readouterr().out
    result = json.loads(fig.with_suffix(".json").read_text())
    assert fig.exists() and result["seeds"] == [2_000_000, 2_000_001]
    assert result["frames"] > 8 and result["positives"] >= 6  # novice, sub-optimal and expert succeed
    (m,) = result["models"]
    assert 0.0 <= m["average_precision"] <= 1.0 and m["curve"][-1][2] == 1.0
    assert 0.0 <= m["cos_goal"]["average_precision"] <= 1.0 and m["cos_goal"]["curve"][-1][2] == 1.0
    # the shipped verified program completes its last sub-task exactly at the success frames
    assert result["program"]["precision"] == 1.0 and result["program"]["recall"] == 1.0
    with pytest.raises(ValueError, match="overlap the seeds"):
        reward_pr_curves(KC, [str(out)], n=1, seed=1_000_000, progress=False)


@pytest.mark.slow
def test_pr_curves_with_added_negatives(trained, tmp_path):
    """--add-negatives: a second curve per model from the same embeddings; more negatives can only lower p(goal)."""
    import subprocess
    import sys

    from cleanrl_vlmcar.clip_train import reward_pr_curves

    out, _ = trained
    negation = "a top-down view of a grid world where the agent has not completed the task: {mission}"
    r = reward_pr_curves(KC, [str(out)], n=1, labels=["tiny"], progress=False,
                         variants=[("+ negation", ("{defaults}", negation)), ("negation only", (negation,))])
    base, more, only = r["models"]
    assert (base["label"], more["label"], only["label"]) == ("tiny", "tiny + negation", "tiny negation only")
    assert more["negatives"] == base["negatives"] + [negation] and only["negatives"] == [negation]
    assert "cos_goal" in base and "cos_goal" not in more
    assert more["p_goal_mean_positive"] <= base["p_goal_mean_positive"] + 1e-12
    assert more["p_goal_mean_negative"] <= base["p_goal_mean_negative"] + 1e-12
    assert more["p_goal_mean_positive"] <= only["p_goal_mean_positive"] + 1e-12
    # the benchmark script: replaced negatives, a bad flag
    fig = tmp_path / "pr.png"
    cmd = [sys.executable, "benchmarks/clip_pr_curves.py", "--env-id", KC, "--models", str(out), "--n", "1",
           "--negatives", "open the door", "--variant", "+ negation", "{defaults}", negation, "--out", str(fig), "--json",
           str(tmp_path / "pr.json"), "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "pr.json").read_text())
    assert res["negatives"] == ["open the door"] and [m["negatives"] for m in res["models"]] == [
        ["open the door"], ["open the door", negation]]
    assert fig.exists() and "+ negation" in done.stdout
    bad = subprocess.run(cmd[:-6] + ["--negatives", "", "--out", str(fig)], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, timeout=300)
    assert bad.returncode == 2 and "negative" in bad.stderr
    bad = subprocess.run(cmd[:-6] + ["--variant", "lonely-label", "--out", str(fig)], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, timeout=300)
    assert bad.returncode == 2 and "--variant needs a label and at least one negative" in bad.stderr


@pytest.mark.slow
def test_clip_state_sweep_covers_the_layouts_states(tiny_clip, tmp_path):
    """benchmarks/clip_state_sweep.py: every constructed state of a KeyCorridor layout, rendered as the pixels view
    renders it, with the success states exactly those where the agent carries the mission's object."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    try:
        from clip_state_sweep import layout_states
    finally:
        sys.path.pop(0)
    from cleanrl_vlmcar.trajectories import make_env

    env = make_env(KC)
    states, mission = layout_states(env, 5)
    env.reset(seed=5)
    assert mission == env.unwrapped.mission
    frames = np.stack([f for f, _, _ in states])
    assert frames.shape[1:] == env.unwrapped.get_frame(highlight=False, tile_size=16).shape
    assert len({f.tobytes() for f in frames}) == len(frames)  # every state looks different
    groups = {g for _, _, g in states}
    assert "carrying key, key carried, door locked" in groups and not any(
        g.startswith("carrying object") and g.endswith("door locked") for g in groups)
    assert all(y == g.startswith("carrying object") for _, y, g in states)
    # the layout is left as it was: the start frame renders again
    np.testing.assert_array_equal(env.unwrapped.get_frame(highlight=False, tile_size=16), _frame_at(KC, 5))
    out = tmp_path / "sweep.json"
    cmd = [sys.executable, "benchmarks/clip_state_sweep.py", "--clip-model", tiny_clip, "--layouts", "2", "--json",
           str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())
    assert r["states"] == sum(g["states"] for g in r["groups"].values()) and r["success_states"] > 0
    bad = subprocess.run(cmd[:2] + ["--env-id", "MiniGrid-Empty-5x5-v0", "--clip-model", tiny_clip], text=True,
                         capture_output=True, cwd=Path(__file__).parent.parent, timeout=300)
    assert bad.returncode == 2 and "no key or locked door" in bad.stderr


def _frame_at(env_id, seed):
    from cleanrl_vlmcar.trajectories import make_env

    e = make_env(env_id)
    e.reset(seed=seed)
    return e.unwrapped.get_frame(highlight=False, tile_size=16)
