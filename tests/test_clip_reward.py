"""Tests for cleanrl_vlmcar.clip_reward on a tiny, randomly initialised CLIP built on the spot.

No weights are downloaded: a character-level CLIPTokenizer, a CLIPImageProcessor (32x32) and a
2-layer CLIPModel are saved to a tmp dir and loaded back through ClipReward.  The expected
rewards are recomputed by hand from the model's own get_text_features / get_image_features.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_clip import build_tiny_clip  # noqa: E402

from cleanrl_vlmcar.clip_reward import (  # noqa: E402
    DEFAULT_NEGATIVES,
    ClipReward,
    ClipRewardConfig,
    ClipRewardError,
)

MISSION = "pick up the purple ball"
IMG = 32


def _features(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), image_size=IMG)


@pytest.fixture(scope="module")
def hand(tiny_clip_dir):
    """Model, tokenizer and processor loaded independently of ClipReward."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    proc = AutoImageProcessor.from_pretrained(tiny_clip_dir)

    def text(texts):
        t = tok(list(texts), padding=True, return_tensors="pt")
        with torch.no_grad():
            e = _features(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]))
        e = e.numpy().astype(np.float64)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def image(frames):
        px = proc(images=list(frames), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            e = _features(model.get_image_features(pixel_values=px))
        e = e.numpy().astype(np.float64)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    return text, image


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(8, IMG, IMG, 3), dtype=np.uint8)


def _cfg(model, **kw):
    return ClipRewardConfig(model=model, device="cpu", **kw)


def _np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _hand_texts(cfg, mission):
    fill = lambda m: cfg.goal_template.replace("{mission}", m)  # noqa: E731
    return [fill(mission)] + [fill(n) for n in cfg.negatives]


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_binary_matches_hand_computation(tiny_clip_dir, hand, frames):
    text, image = hand
    cfg = _cfg(tiny_clip_dir)
    r = ClipReward(cfg, mission=MISSION)
    texts = _hand_texts(cfg, MISSION)
    assert r.texts == texts
    t = text(texts)
    x = image(frames)
    np.testing.assert_allclose(r.text_embeds, t, atol=1e-5)
    p = _np_softmax((x @ t.T) / cfg.temperature)[:, 0]
    np.testing.assert_allclose(r.p_goal(frames), p, rtol=1e-4, atol=1e-8)

    # pick a threshold halfway between two observed values so both reward values occur
    ps = np.sort(p)
    thr = float(0.5 * (ps[3] + ps[4]))
    assert ps[4] - ps[3] > 1e-3 * ps[4]
    r2 = ClipReward(_cfg(tiny_clip_dir, threshold=thr), mission=MISSION)
    rewards, stats = r2(frames)
    assert rewards.dtype == np.float32 and rewards.shape == (8,)
    np.testing.assert_allclose(stats["p_goal"], p, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(stats["cos_goal"], (x @ t.T)[:, 0], atol=1e-5)
    np.testing.assert_array_equal(rewards, (p > thr).astype(np.float32))
    assert rewards.sum() == 4.0


@pytest.mark.slow
def test_batch_equals_single_calls(tiny_clip_dir, frames):
    for mode in ("binary", "vlmrm"):
        r = ClipReward(_cfg(tiny_clip_dir, mode=mode), mission=MISSION)
        rb, sb = r(frames)
        singles = [r(frames[i : i + 1]) for i in range(len(frames))]
        np.testing.assert_allclose(rb, np.concatenate([s[0] for s in singles]), atol=1e-5)
        np.testing.assert_allclose(sb["p_goal"], np.concatenate([s[1]["p_goal"] for s in singles]), atol=1e-5)
        np.testing.assert_allclose(r.p_goal(frames), sb["p_goal"], atol=1e-12)
    # a lone (H, W, 3) frame is a batch of one
    assert r(frames[0])[0].shape == (1,)


@pytest.mark.slow
def test_threshold_edges(tiny_clip_dir, frames):
    r = ClipReward(_cfg(tiny_clip_dir), mission=MISSION)
    p = r.p_goal(frames[:1])
    assert 0.0 < p[0] < 1.0
    # p exactly equal to the threshold is not a success (strict >)
    r_eq = ClipReward(_cfg(tiny_clip_dir, threshold=float(p[0])), mission=MISSION)
    rew, stats = r_eq(frames[:1])
    assert stats["p_goal"][0] == p[0]
    assert rew[0] == 0.0
    # threshold 0: every p > 0 gives 1; threshold 1: never
    assert np.all(ClipReward(_cfg(tiny_clip_dir, threshold=0.0), mission=MISSION)(frames)[0] == 1.0)
    assert np.all(ClipReward(_cfg(tiny_clip_dir, threshold=1.0), mission=MISSION)(frames)[0] == 0.0)


@pytest.mark.slow
def test_single_text_degenerate_case_rejected(tiny_clip_dir):
    with pytest.raises(ClipRewardError, match="negatives"):
        ClipReward(_cfg(tiny_clip_dir, negatives=()), mission=MISSION)
    # the mission itself is dropped from the negatives: nothing would be left
    with pytest.raises(ClipRewardError, match="negative"):
        ClipReward(_cfg(tiny_clip_dir, negatives=(" Pick up the  purple ball",)), mission=MISSION)


@pytest.mark.slow
def test_mission_removed_from_negatives(tiny_clip_dir):
    r = ClipReward(_cfg(tiny_clip_dir, negatives=("open the door", MISSION.upper())), mission=MISSION)
    assert len(r.texts) == 2 and r.negative_texts[0].endswith("open the door")


def test_negative_texts_fill_the_template_or_are_whole_sentences():
    from cleanrl_vlmcar.clip_reward import negative_texts

    t = "where the agent has completed the task: {mission}"
    negs = ("open the door", "where the agent has NOT completed the task: {mission}", "Open the  door",
            " Pick up the purple ball", "{mission}", "where the agent has completed the task: {mission}")
    assert negative_texts(t, MISSION, negs) == [
        "where the agent has completed the task: open the door",
        "where the agent has NOT completed the task: pick up the purple ball",
        "pick up the purple ball"]  # repeats and texts equal to the goal text (any spelling) dropped


@pytest.mark.slow
def test_mission_sentence_negative_and_with_negatives(tiny_clip_dir, hand, frames):
    text, image = hand
    negation = "a top-down view of a grid world where the agent has not completed the task: {mission}"
    r = ClipReward(_cfg(tiny_clip_dir, negatives=("open the door",)), mission=MISSION)
    r2 = r.with_negatives(("open the door", negation))
    assert r2.texts == r.texts + [negation.replace("{mission}", MISSION)] and r.texts[1:] == r.negative_texts
    x = image(frames)
    p = _np_softmax((x @ text(r2.texts).T) / 0.01)[:, 0]
    np.testing.assert_allclose(r2.rewards_from_embeddings(x)[1]["p_goal"], p, rtol=1e-4, atol=1e-8)
    assert r2.for_mission("open the door").negative_texts[-1].endswith("not completed the task: open the door")
    with pytest.raises(ClipRewardError, match="negative"):
        r.with_negatives(("",))


@pytest.mark.slow
def test_temperature_makes_p_more_extreme(tiny_clip_dir, frames):
    k = 1 + len(DEFAULT_NEGATIVES)
    ps = {t: ClipReward(_cfg(tiny_clip_dir, temperature=t), mission=MISSION).p_goal(frames) for t in (1e-4, 0.01, 1.0, 100.0)}
    # very low temperature: argmax, p in {0, 1}; very high: uniform 1/K
    assert np.all(np.minimum(ps[1e-4], 1 - ps[1e-4]) < 1e-3)
    np.testing.assert_allclose(ps[100.0], 1.0 / k, atol=1e-3)
    # in between, distance from uniform grows as the temperature falls
    dist = {t: np.abs(p - 1.0 / k).mean() for t, p in ps.items()}
    assert dist[100.0] < dist[1.0] < dist[0.01] <= dist[1e-4] + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_vlmrm_matches_hand_computation(tiny_clip_dir, hand, frames, alpha):
    text, image = hand
    cfg = _cfg(tiny_clip_dir, mode="vlmrm", alpha=alpha)
    r = ClipReward(cfg, mission=MISSION)
    texts = _hand_texts(cfg, MISSION)
    t = text(texts + [cfg.baseline])
    g, b = t[0], t[-1]
    x = image(frames)
    d = (g - b) / np.linalg.norm(g - b)
    P = alpha * np.outer(d, d) + (1 - alpha) * np.eye(len(d))
    expected = 1.0 - 0.5 * np.sum(((x - g) @ P) ** 2, axis=1)
    rewards, stats = r(frames)
    assert rewards.dtype == np.float32
    np.testing.assert_allclose(rewards, expected, atol=1e-5)
    p = _np_softmax((x @ t[:-1].T) / cfg.temperature)[:, 0]
    np.testing.assert_allclose(stats["p_goal"], p, atol=1e-5)
    if alpha == 0.0:
        np.testing.assert_allclose(rewards, 1.0 - 0.5 * np.sum((x - g) ** 2, axis=1), atol=1e-5)
        np.testing.assert_allclose(rewards, x @ g, atol=1e-5)  # unit vectors: equals cosine


@pytest.mark.slow
def test_pad_to_square(tiny_clip_dir, hand, frames):
    _, image = hand
    wide = np.ascontiguousarray(frames[:2, :14])  # (2, 14, 32, 3): wider than tall
    r = ClipReward(_cfg(tiny_clip_dir), mission=MISSION)
    padded = np.zeros((2, 32, 32, 3), np.uint8)
    padded[:, 9:23] = wide
    np.testing.assert_allclose(r.embed_frames(wide), image(padded), atol=1e-5)
    r_np = ClipReward(_cfg(tiny_clip_dir, pad_to_square=False), mission=MISSION)
    np.testing.assert_allclose(r_np.embed_frames(wide), image(wide), atol=1e-5)


def test_missing_checkpoint_path(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    missing = tmp_path / "no_such_clip_checkpoint"
    with pytest.raises(ClipRewardError) as ei:
        ClipReward(_cfg(str(missing)), mission=MISSION)
    assert str(missing) in str(ei.value) and "--clip-model" in str(ei.value)

    # an existing directory without a checkpoint
    with pytest.raises(ClipRewardError, match="could not load a CLIP checkpoint") as ei:
        ClipReward(_cfg(str(tmp_path)), mission=MISSION)
    assert str(tmp_path) in str(ei.value)


def test_hub_id_not_loadable_offline(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    hub_id = "no-such-org-vlmcar/no-such-clip-model"
    with pytest.raises(ClipRewardError) as ei:
        ClipReward(_cfg(hub_id), mission=MISSION)
    msg = str(ei.value)
    assert hub_id in msg and "--clip-model" in msg


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(threshold=-0.1), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-0.01), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=1.01), "alpha"),
        (dict(mode="dense"), "mode"),
        (dict(negatives=()), "negatives"),
        (dict(negatives="open the door"), "negatives"),
        (dict(negatives=("open the door", "")), "negative"),
        (dict(goal_template="a grid world"), "mission"),
        (dict(mode="vlmrm", baseline=" "), "baseline"),
    ],
)
def test_invalid_config_rejected(kw, match):
    # validation happens before any loading, so the model reference is never touched
    with pytest.raises(ClipRewardError, match=match):
        ClipReward(_cfg("/nonexistent/never/loaded", **kw), mission=MISSION)


def test_empty_mission_rejected():
    with pytest.raises(ClipRewardError, match="mission"):
        ClipReward(_cfg("/nonexistent"), mission="  ")


@pytest.mark.slow
def test_bad_frames_rejected(tiny_clip_dir, frames):
    r = ClipReward(_cfg(tiny_clip_dir), mission=MISSION)
    with pytest.raises(ClipRewardError, match="uint8"):
        r(frames.astype(np.float32))
    with pytest.raises(ClipRewardError, match="shape"):
        r(frames[..., :2])
    with pytest.raises(ClipRewardError, match="shape"):
        r(frames[:0])


@pytest.mark.slow
def test_fp16_ignored_on_cpu(tiny_clip_dir, frames):
    with pytest.warns(UserWarning, match="fp16"):
        r = ClipReward(_cfg(tiny_clip_dir, fp16=True), mission=MISSION)
    assert r.dtype == torch.float32
    assert r(frames[:2])[0].shape == (2,)


@pytest.mark.slow
def test_bad_device_rejected(tiny_clip_dir):
    with pytest.raises(ClipRewardError, match="device"):
        ClipReward(ClipRewardConfig(model=tiny_clip_dir, device="nonsense-device"), mission=MISSION)


def test_defaults_documented_values():
    c = ClipRewardConfig()
    assert c.model == "openai/clip-vit-base-patch32"
    assert "{mission}" in c.goal_template and c.negatives == DEFAULT_NEGATIVES and len(c.negatives) >= 3
    assert (c.temperature, c.threshold, c.mode, c.alpha, c.device, c.fp16) == (0.01, 0.5, "binary", 0.5, "auto", False)


@pytest.mark.slow
def test_truncated_texts_warn(tiny_clip_dir):
    # the tiny tokenizer is character-level with a 256-token context
    with pytest.warns(UserWarning, match="truncated"):
        ClipReward(_cfg(tiny_clip_dir), mission="pick up the purple ball " * 12)


@pytest.mark.slow
def test_clip_hook_scores_each_envs_true_frame_across_resets(tiny_clip_dir):
    """The frames the CLIP reward embeds are the envs' own full frames at every step, also after an episode ends and
    the env starts a new layout (the pixels view draws incrementally; it must start over at each reset)."""
    import types

    import gymnasium as gym
    import minigrid  # noqa: F401

    from cleanrl_vlmcar.rewards import make_reward_hook

    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.RecordEpisodeStatistics(
        gym.make("MiniGrid-KeyCorridorS3R1-v0", max_episode_steps=3)) for _ in range(2)])
    args = types.SimpleNamespace(reward="clip", clip_model=str(tiny_clip_dir), clip_negatives=None,
                                 clip_template=None, clip_end_episode=False)
    obs, infos = envs.reset(seed=0)
    hook = make_reward_hook(envs, args, None, infos, obs)
    (term,) = hook.terms
    seen = []
    real = term.clip.embed_frames
    term.clip.embed_frames = lambda frames: (seen.append(np.array(frames)), real(frames))[1]
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(12):  # episodes of 3 steps: several resets per env, each to a new layout
        obs, reward, term_, trunc, infos = envs.step(rng.integers(0, 3, size=2))
        hook.step(reward, term_, trunc, infos, obs=obs)
        truth = np.stack([e.unwrapped.get_frame(highlight=False, tile_size=16) for e in envs.envs])
        np.testing.assert_array_equal(seen[-1], truth)
        resets += int(np.logical_or(term_, trunc).sum())
    assert resets >= 4
    envs.close()
