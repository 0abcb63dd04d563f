"""Train a CLIP model on an environment's own frames, and measure the CLIP reward it gives (Baumli et al. 2023, Fig. 4).

No pretrained CLIP weights can be downloaded on these machines, so the CLIP reward (`--reward clip`,
clip_reward.py) is measured here with CLIP models trained *on the environment's own frames*, paired with captions
generated from the simulator's state. This is not the off-the-shelf CLIP of Baumli et al.: it has seen this
environment's frames and the family's caption language, and nothing else.

    python -m cleanrl_vlmcar clip-train --env-id MiniGrid-KeyCorridorS3R1-v0 --size tiny --out clip/kc-tiny

Data. `--episodes N` episodes of each of the random, novice (expert with 50% random actions), sub-optimal (30%) and
expert policies, from seeds DATA_SEED + k (k < N; the same layouts for every policy). Every frame is the `pixels`
view's frame (what the reward hook embeds); its caption is the family's `caption(env, done)` (a plain function in
the family module, e.g. families/minigrid.py) with `done` the environment's own success at that step. Of each
episode, the frames where the caption changes (the first frame, picking up, opening, success) are kept and up to
`--frames-per-episode` others at random. A fraction `--heldout` of the episode seeds (chosen with `--seed`) is held
out for evaluation.

Training. A `transformers.CLIPModel` built from a `CLIPConfig` of one of SIZES, and a byte-level BPE tokenizer
trained on the captions and the CLIP reward's texts (`tokenizers`, wrapped as CLIPTokenizer). The loss is CLIP's
symmetric cross-entropy over image-text similarities times a learnable temperature (exp(logit_scale), clamped at
100 as in CLIP). Each frame is paired with one of its true texts per epoch: the full caption (half of the time),
one of its clauses, or the CLIP reward's goal sentence (the family's goal template filled with the mission; for a
frame where the mission is not done, the same sentence with "has completed" -> "has not completed"). Texts true of
several frames of a batch (frames share captions) are multiple positives: each image's target spreads uniformly over
the batch's texts that are true of it, each text's over the images it is true of. Frames where the mission is done
(about one in 30) are seen `--success-repeat` times per epoch.

Output (`--out DIR`): the selected epoch's model (`save_pretrained`; `--select best`, the default: the highest
held-out AP of p(goal), the reward's own ranking; `--select last`), tokenizer and image processor, so that
`ClipReward(ClipRewardConfig(model=DIR))` and `--clip-model DIR` load it like a hub checkpoint; `last/` (the model
after the last epoch) and `train_state.pt` (optimizer and epoch), for `--resume`; `dataset.npz` (the frames and captions, so a resumed run does not simulate
again); `train_log.json` (the settings, the seeds of both splits, and per epoch the loss and the held-out metrics).

The second half of this module scores the CLIP reward against the environment's success per frame on fresh
episodes: precision-recall curves over the threshold on p(goal), with the verified program's single point
(benchmarks/clip_pr_curves.py, `evaluate --pr-curve`).
"""

from __future__ import annotations

import importlib
import json
import os
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UnsupportedEnvError, UsageError

__all__ = [
    "SIZES",
    "ClipSize",
    "add_clip_train_parser",
    "average_precision",
    "caption_function",
    "char_tokenizer",
    "make_clip_model",
    "make_image_processor",
    "plot_pr_curves",
    "pr_curve",
    "reward_pr_curves",
    "save_checkpoint",
    "train_clip",
    "train_tokenizer",
]

POLICIES = {"random": "random", "novice": "noisy0.5", "sub-optimal": "noisy0.3", "expert": "expert"}
DATA_SEED = 1_000_000
"""episode k of the training data (every policy) starts from seed DATA_SEED + k"""
PR_SEED = 2_000_000
"""first seed of the episodes the precision-recall curves are measured on (never training data)"""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
LOG_NAME, STATE_NAME, DATA_NAME = "train_log.json", "train_state.pt", "dataset.npz"
LAST_DIR = "last"  # the model after the last epoch (what --resume continues); OUT itself holds the selected epoch
WARMUP_STEPS = 100
"""learning-rate warm-up: this many steps, or one epoch when an epoch is shorter"""
MAX_LOGIT_SCALE = float(np.log(100.0))


# ----------------------------------------------------------------------------------------------------------
# Model, tokenizer and image processor from scratch (no downloads); tests/tiny_clip.py builds its model here too
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSize:
    """Widths and depths of a CLIPConfig, and the training defaults that go with them."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    projection_dim: int
    mlp_ratio: int = 4
    max_text_len: int = 77
    batch_size: int = 128
    lr: float = 5e-4
    epochs: int = 10

    def config(self, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
        from transformers import CLIPConfig

        return CLIPConfig(
            text_config=dict(
                vocab_size=vocab_size, hidden_size=self.text_width, intermediate_size=self.mlp_ratio * self.text_width,
                num_hidden_layers=self.text_layers, num_attention_heads=self.text_heads,
                max_position_embeddings=self.max_text_len, bos_token_id=bos_id, eos_token_id=eos_id,
                pad_token_id=pad_id,
            ),
            vision_config=dict(
                image_size=self.image_size, patch_size=self.patch_size, hidden_size=self.vision_width,
                intermediate_size=self.mlp_ratio * self.vision_width, num_hidden_layers=self.vision_layers,
                num_attention_heads=self.vision_heads,
            ),
            projection_dim=self.projection_dim,
        )


SIZES: dict[str, ClipSize] = {
    # ~1.7M parameters. The patch sizes match MiniGrid's cells: a KeyCorridorS3R1 frame (7 x 3 cells of 16 px,
    # padded to 112 x 112) is resized to 7 x 7 patches, one cell per patch, at every size.
    "tiny": ClipSize(image_size=56, patch_size=8, vision_width=128, vision_layers=4, vision_heads=4, text_width=128,
                     text_layers=4, text_heads=4, projection_dim=128, batch_size=128, lr=5e-4, epochs=15),
    # ~16M parameters
    "small": ClipSize(image_size=112, patch_size=16, vision_width=384, vision_layers=6, vision_heads=6,
                      text_width=256, text_layers=6, text_heads=4, projection_dim=256, batch_size=128, lr=3e-4,
                      epochs=10),
    # ViT-B/32's widths and depths (vision 768 x 12 at 224 px with 32 px patches, text 512 x 12, projection 512)
    "base": ClipSize(image_size=224, patch_size=32, vision_width=768, vision_layers=12, vision_heads=12,
                     text_width=512, text_layers=12, text_heads=8, projection_dim=512, batch_size=128, lr=1e-4,
                     epochs=6),
}


def _clip_tokenizer(vocab: dict[str, int], merges: list):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=vocab, merges=merges)


def char_tokenizer():
    """A character-level CLIPTokenizer (BPE without merges): every printable character, alone and word-final."""
    vocab = {BOS: 0, EOS: 1}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return _clip_tokenizer(vocab, [])


def train_tokenizer(texts: list[str], vocab_size: int = 2000):
    """A byte-level BPE CLIPTokenizer trained on `texts` with the `tokenizers` library (CLIP's normaliser and
    pre-tokeniser, word-final `</w>` symbols). Every byte, alone and word-final, is in the vocabulary, so any text
    tokenizes (unseen words into smaller pieces)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                   r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=alphabet,
                         end_of_word_suffix="</w>", continuing_subword_prefix="", show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for c in sorted(alphabet):  # every byte alone and word-final (the trainer adds only those seen)
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return _clip_tokenizer(vocab, merges)


def make_image_processor(image_size: int):
    """CLIP's image processor at `image_size` (resize the short side, centre crop; CLIP's mean and std)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def make_clip_model(size: ClipSize, tokenizer, seed: int = 0):
    """A randomly initialised CLIPModel of `size` for `tokenizer`'s vocabulary (initialised from `seed`)."""
    import torch
    from transformers import CLIPModel

    vocab_size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    config = size.config(vocab_size, tokenizer.convert_tokens_to_ids(BOS), tokenizer.convert_tokens_to_ids(EOS),
                         tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return CLIPModel(config)


def save_checkpoint(out: str | Path, model=None, tokenizer=None, image_processor=None) -> str:
    """`save_pretrained` of each part given into `out`, as a hub checkpoint is laid out. The model is written to a
    temporary folder first and moved in file by file, so `out` always holds a complete model."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        tmp = out / ".saving"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        tmp.rmdir()
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if image_processor is not None:
        image_processor.save_pretrained(out)
    return str(out)


# ----------------------------------------------------------------------------------------------------------
# Data: frames and captions from rollouts of the four policies
# ----------------------------------------------------------------------------------------------------------
def caption_function(env_id: str):
    """The `caption(env, done=None) -> str` function of the env's family module; UnsupportedEnvError if none."""
    from .families import families, family_for_id

    family = family_for_id(env_id)
    fn = None
    if family.shipped:
        try:
            fn = getattr(importlib.import_module(f"{__package__}.families.{family.name}"), "caption", None)
        except ImportError:
            fn = None
    if not callable(fn):
        have = [f.name for f in families() if f.shipped and callable(getattr(
            importlib.import_module(f"{__package__}.families.{f.name}"), "caption", None))]
        raise UnsupportedEnvError(
            f"the {family.name} family of {env_id} has no captions yet: clip-train pairs frames with captions from "
            f"the simulator's state, written by a `caption(env, done=None) -> str` function in the family's module "
            f"(families with captions: {', '.join(have) or 'none'}; see families/minigrid.py)")
    return fn


def reward_texts(env_id: str) -> tuple[str, tuple[str, ...]]:
    """The CLIP reward's goal template and negatives for this env's family (what `--reward clip` uses by default)."""
    from .clip_reward import ClipRewardConfig
    from .families import family_for_id

    defaults, base = family_for_id(env_id).clip, ClipRewardConfig()
    return defaults.goal_template or base.goal_template, tuple(defaults.negatives or base.negatives)


def _fill(template: str, mission: str) -> str:
    return template.replace("{mission}", mission)


def status_text(template: str, mission: str, done: bool) -> str | None:
    """The goal sentence of the CLIP reward for a frame: the template filled with the mission when it is done;
    when it is not, the same sentence negated ("has completed" -> "has not completed"), or None for a template
    without that phrase."""
    if done:
        return _fill(template, mission)
    if "has completed" in template:
        return _fill(template.replace("has completed", "has not completed", 1), mission)
    return None


def _pad_frames(frames: list[np.ndarray]) -> np.ndarray:
    """Pad each frame with black to one square (the side of the largest frame), centred as ClipReward pads."""
    side = max(max(f.shape[0], f.shape[1]) for f in frames)
    out = np.zeros((len(frames), side, side, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        h, w = f.shape[:2]
        top, left = (side - h) // 2, (side - w) // 2
        out[i, top:top + h, left:left + w] = f[..., :3]
    return out


def _episode(env, policy, seed: int, caption, stop_on_success: bool):
    """One episode: frames (after reset and after each step), captions, done flags and the mission."""
    from .families import family_of
    from .views import make_view

    family = family_of(env)
    pixels = make_view(env, "pixels")
    obs, info = env.reset(seed=seed)
    policy.reset(env, obs, seed)
    frames, captions, done = [pixels.reset(obs, info)["rgb"]], [caption(env, done=False)], [False]
    while True:
        obs, reward, terminated, truncated, info = env.step(policy.act(env, obs))
        success = family.success(reward, terminated, info)
        frames.append(pixels.step(obs, info)["rgb"])
        captions.append(caption(env, done=bool(success)))
        done.append(bool(success))
        if terminated or truncated or (stop_on_success and success):
            break
    return frames, captions, done, env.unwrapped.mission if hasattr(env.unwrapped, "mission") else ""


def collect_dataset(env_id: str, episodes: int, frames_per_episode: int, seed: int, progress: bool = True) -> dict:
    """Frames and captions of `episodes` episodes of each policy (seeds DATA_SEED + k)."""
    from tqdm.auto import tqdm

    from .trajectories import make_env, make_policy

    caption = caption_function(env_id)
    env = make_env(env_id)
    frames, captions, done, missions, seeds, policies, steps = [], [], [], [], [], [], []
    bar = tqdm(total=episodes * len(POLICIES), desc=f"episodes ({env_id})", disable=not progress, mininterval=1.0)
    for p, (label, name) in enumerate(POLICIES.items()):
        policy = make_policy(name, env)
        for k in range(episodes):
            s = DATA_SEED + k
            f, c, d, mission = _episode(env, policy, s, caption, stop_on_success=name != "random")
            events = [t for t in range(len(c)) if t == 0 or c[t] != c[t - 1]]
            rest = np.setdiff1d(np.arange(len(c)), events)
            rng = np.random.default_rng([seed, s, p])
            extra = rng.choice(rest, size=min(frames_per_episode, len(rest)), replace=False) if len(rest) else []
            for t in sorted(set(events) | {int(x) for x in extra}):
                frames.append(f[t])
                captions.append(c[t])
                done.append(d[t])
                missions.append(mission)
                seeds.append(s)
                policies.append(label)
                steps.append(t)
            bar.update(1)
    bar.close()
    return {"frames": _pad_frames(frames), "captions": np.array(captions), "done": np.array(done, dtype=bool),
            "missions": np.array(missions), "seeds": np.array(seeds, dtype=np.int64),
            "policies": np.array(policies), "steps": np.array(steps, dtype=np.int64)}


def split_seeds(episodes: int, heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """(training seeds, held-out seeds): a fraction `heldout` of the episode seeds, at least one of each."""
    n_held = min(episodes - 1, max(1, int(round(heldout * episodes))))
    order = np.random.default_rng(seed).permutation(episodes)
    held = sorted(DATA_SEED + int(k) for k in order[:n_held])
    train = sorted(DATA_SEED + int(k) for k in order[n_held:])
    return train, held


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def _texts_of(caption: str, mission: str, done: bool, template: str) -> tuple[str, list[str], str | None]:
    """(full caption, its clauses, the goal sentence) of one frame."""
    clauses = [c.strip() for c in caption.split(";") if c.strip()]
    return caption, clauses, status_text(template, mission, done)


class _Texts:
    """Every frame's true texts, and a sampler of one text per frame (caption 1/2, clause 1/4, goal sentence 1/4)."""

    def __init__(self, data: dict, template: str):
        self.items = [_texts_of(str(c), str(m), bool(d), template)
                      for c, m, d in zip(data["captions"], data["missions"], data["done"])]
        self.truth = [frozenset([full, *clauses] + ([status] if status else []))
                      for full, clauses, status in self.items]

    def sample(self, i: int, rng: np.random.Generator) -> str:
        full, clauses, status = self.items[i]
        u = rng.random()
        if u < 0.5 or (u >= 0.75 and status is None):
            return full
        if u < 0.75:
            return clauses[int(rng.integers(len(clauses)))]
        return status


def _features(out):
    from .clip_reward import _features as f

    return f(out)


def _embed_texts(model, tokenizer, texts: list[str], max_len: int, device):
    import torch

    tok = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    feats = _features(model.get_text_features(input_ids=tok["input_ids"].to(device),
                                              attention_mask=tok["attention_mask"].to(device)))
    return torch.nn.functional.normalize(feats.float(), dim=-1)


def _pixels(processor, frames: np.ndarray):
    """The CLIP processor on already square frames: the path ClipReward.preprocess takes."""
    return processor(images=list(frames), return_tensors="pt", input_data_format="channels_last")["pixel_values"]


def _embed_frames(model, processor, frames: np.ndarray, device, batch: int = 256):
    import torch

    out = []
    for i in range(0, len(frames), batch):
        feats = _features(model.get_image_features(pixel_values=_pixels(processor, frames[i:i + batch]).to(device)))
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1))
    return torch.cat(out)


def clip_loss(image_emb, text_emb, logit_scale, truth):
    """CLIP's symmetric cross-entropy with multiple positives: `truth[i, j]` says text j is true of image i; each
    image's target is uniform over its true texts, each text's over the images it is true of. Texts true of no image
    of the batch (negatives only) enter the images' softmax but have no text-to-image term."""
    import torch

    logits = logit_scale.exp() * image_emb @ text_emb.T
    t = truth.float()
    loss_i = -(t / t.sum(1, keepdim=True) * torch.log_softmax(logits, dim=1)).sum(1).mean()
    has = t.sum(0) > 0
    tt = t.T[has]
    loss_t = -(tt / tt.sum(1, keepdim=True) * torch.log_softmax(logits.T[has], dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def p_goal_from_embeddings(x: np.ndarray, missions: list[str], embed, template: str, negatives: tuple[str, ...],
                           temperature: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """p(goal | frame) as ClipReward computes it (goal and negatives through the template, a negative equal to the
    mission dropped) and cos(frame, goal text), from image embeddings `x` (N, D) and `embed(texts) -> (K, D)` unit
    text embeddings."""
    from .clip_reward import negative_texts

    p, cos = np.zeros(len(x)), np.zeros(len(x))
    for mission in sorted(set(missions)):
        idx = [i for i, m in enumerate(missions) if m == mission]
        t = embed([_fill(template, mission)] + negative_texts(template, mission, negatives))
        sims = x[idx] @ t.T
        p[idx], cos[idx] = _softmax(sims / temperature)[:, 0], sims[:, 0]
    return p, cos


def _evaluate(model, tokenizer, processor, data: dict, idx: np.ndarray, size: ClipSize, template: str,
              negatives: tuple[str, ...], device, threshold: float = 0.5) -> dict:
    """Held-out metrics: image-to-caption top-1 retrieval among the distinct held-out captions; goal-sentence
    accuracy (done vs not-done sentence of the frame's mission); average precision against success frames of the
    CLIP reward's p(goal) and of the cosine with the goal text alone (VLM-RMs' reward with alpha = 0); precision,
    recall and F1 of the binary reward p(goal) > threshold."""
    import torch

    model.eval()
    with torch.inference_mode():
        x = _embed_frames(model, processor, data["frames"][idx], device)
        caps = [str(c) for c in data["captions"][idx]]
        distinct = sorted(set(caps))
        t = torch.cat([_embed_texts(model, tokenizer, distinct[i:i + 256], size.max_text_len, device)
                       for i in range(0, len(distinct), 256)])
        pred = (x @ t.T).argmax(1).cpu().numpy()
        retrieval = float(np.mean([distinct[j] == c for j, c in zip(pred, caps)]))
        missions = [str(m) for m in data["missions"][idx]]
        done = data["done"][idx]
        status_acc = None
        if "has completed" in template:
            ms = sorted(set(missions))
            texts = [s for m in ms for s in (status_text(template, m, True), status_text(template, m, False))]
            e = _embed_texts(model, tokenizer, texts, size.max_text_len, device)
            sims = (x @ e.T).cpu().numpy()
            col = {m: 2 * i for i, m in enumerate(ms)}
            said_done = np.array([sims[r, col[m]] > sims[r, col[m] + 1] for r, m in enumerate(missions)])
            status_acc = float(np.mean(said_done == done))

        def embed(texts):
            return _embed_texts(model, tokenizer, texts, size.max_text_len, device).cpu().numpy().astype(np.float64)

        p, cos = p_goal_from_embeddings(x.cpu().numpy().astype(np.float64), missions, embed, template, negatives)
    model.train()
    prec, rec = pr_point(p > threshold, done)
    return {"heldout_retrieval_acc": retrieval, "heldout_goal_sentence_acc": status_acc,
            "heldout_p_goal_ap": average_precision(p, done) if done.any() else None,
            "heldout_reward_precision": prec, "heldout_reward_recall": rec,
            "heldout_reward_f1": 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0,
            "heldout_cos_goal_ap": average_precision(cos, done) if done.any() else None,
            "heldout_frames": int(len(idx)), "heldout_done_frames": int(done.sum()),
            "heldout_distinct_captions": len(distinct)}


SELECT_KEY = ("heldout_p_goal_ap", "heldout_reward_f1", "heldout_retrieval_acc")


def selection_key(entry: dict) -> tuple[float, ...]:
    """How `--select best` ranks epochs: the held-out AP of p(goal) (the reward's own ranking), then the F1 of the
    binary reward at the threshold, then caption retrieval; a metric that could not be computed ranks lowest."""
    return tuple(-1.0 if entry.get(k) is None else float(entry[k]) for k in SELECT_KEY)


def best_epoch(epochs: list[dict]) -> dict | None:
    """The log entry `--select best` keeps: the highest selection_key, the earliest of equals."""
    best = None
    for e in epochs:
        if best is None or selection_key(e) > selection_key(best):
            best = e
    return best


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {str(out)!r}: {e.strerror or e}; pass a writable directory") from None


def _settings(args) -> dict:
    return {"env_id": args.env_id, "size": args.size, "episodes": args.episodes, "seed": args.seed,
            "frames_per_episode": args.frames_per_episode, "heldout": args.heldout,
            "success_repeat": args.success_repeat, "select": args.select}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def train_clip(args) -> dict:
    """The clip-train verb; returns the training log (also in OUT/train_log.json)."""
    import torch
    from tqdm.auto import tqdm

    if args.size not in SIZES:
        raise UsageError(f"unknown --size {args.size!r}; use one of {', '.join(SIZES)}")
    size = SIZES[args.size]
    epochs = args.epochs if args.epochs is not None else size.epochs
    batch_size = args.batch_size or size.batch_size
    lr = args.lr or size.lr
    if args.episodes < 2:
        raise UsageError("--episodes must be at least 2 (one seed is held out)")
    if epochs < 1 or batch_size < 2 or not 0.0 < args.heldout < 1.0 or args.frames_per_episode < 0 \
            or args.success_repeat < 1:
        raise UsageError("--epochs >= 1, --batch-size >= 2, 0 < --heldout < 1, --frames-per-episode >= 0 and "
                         "--success-repeat >= 1")
    caption_function(args.env_id)  # a clear error before anything is written
    out = Path(args.out).expanduser()
    _check_out(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    progress = not args.no_progress
    log_path, state_path, data_path = out / LOG_NAME, out / STATE_NAME, out / DATA_NAME
    settings = _settings(args)
    resuming = state_path.exists()
    if resuming and not log_path.exists():
        raise UsageError(f"{out} holds {STATE_NAME} but no {LOG_NAME}: an incomplete run; pass a new --out")
    if resuming and not args.resume:
        raise UsageError(f"{out} already holds a clip-train run (epoch "
                         f"{json.loads(log_path.read_text())['epochs'][-1]['epoch'] if log_path.exists() else '?'}); "
                         "pass --resume to continue it, or a new --out")
    if args.resume and not resuming:
        print(f"--resume: no checkpoint in {out} yet, starting from epoch 0")
    template, negatives = reward_texts(args.env_id)
    try:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              "cpu" if args.device == "auto" else args.device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"invalid --device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} but CUDA is not available; use --device cpu or auto")

    # -- data ------------------------------------------------------------------------------------------------
    if resuming:
        log = json.loads(log_path.read_text())
        diff = {k: (log["settings"].get(k), v) for k, v in settings.items() if log["settings"].get(k) != v}
        if diff:
            raise UsageError(f"--resume with other settings than the run in {out}: "
                             + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
    data_key = json.dumps({k: settings[k] for k in ("env_id", "episodes", "seed", "frames_per_episode")},
                          sort_keys=True)
    data = None
    if data_path.exists():
        with np.load(data_path, allow_pickle=False) as z:
            if "settings" in z.files and str(z["settings"]) == data_key:
                data = {k: z[k] for k in z.files if k != "settings"}
    if data is None:
        data = collect_dataset(args.env_id, args.episodes, args.frames_per_episode, args.seed, progress)
        data["settings"] = np.array(data_key)
        tmp = data_path.with_name(data_path.name + ".tmp.npz")
        np.savez_compressed(tmp, **data)
        os.replace(tmp, data_path)
        del data["settings"]
    train_seeds, held_seeds = split_seeds(args.episodes, args.heldout, args.seed)
    is_held = np.isin(data["seeds"], held_seeds)
    train_idx, held_idx = np.flatnonzero(~is_held), np.flatnonzero(is_held)
    if args.eval_frames and len(held_idx) > args.eval_frames:  # keep every done frame, subsample the rest
        rng = np.random.default_rng([args.seed, 7])
        d = held_idx[data["done"][held_idx]]
        rest = rng.choice(held_idx[~data["done"][held_idx]], size=max(0, args.eval_frames - len(d)), replace=False)
        held_idx = np.sort(np.concatenate([d, rest]))
    texts = _Texts(data, template)

    # -- model -----------------------------------------------------------------------------------------------
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    if resuming:
        model = CLIPModel.from_pretrained(out / LAST_DIR if (out / LAST_DIR / "config.json").exists() else out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        state = torch.load(state_path, map_location="cpu", weights_only=False)
    else:
        corpus = sorted({s for i in train_idx for s in texts.truth[int(i)]}  # the training split's texts only
                        | {_fill(template, n) for n in negatives} | set(negatives) | {template})
        tokenizer = train_tokenizer(corpus)
        model = make_clip_model(size, tokenizer, seed=args.seed)
        for d in (out, out / LAST_DIR):  # complete checkpoints once the model is saved there after an epoch
            save_checkpoint(d, None, tokenizer, make_image_processor(size.image_size))
        log = {"settings": settings, "note": "CLIP trained here on this environment's own frames and "
               "simulator captions (not an off-the-shelf CLIP)", "train_seeds": train_seeds,
               "heldout_seeds": held_seeds, "epochs": []}
        state = None
    processor = AutoImageProcessor.from_pretrained(out)  # exactly what ClipReward will load
    if resuming and not (out / LAST_DIR / "tokenizer_config.json").exists():
        save_checkpoint(out / LAST_DIR, None, tokenizer, processor)  # a run from before OUT/last existed
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    start_epoch, step = 0, 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        for g in opt.param_groups:
            g["lr"] = lr
    n_params = sum(p.numel() for p in model.parameters())
    log.update(params=n_params, frames={"train": int(len(train_idx)), "heldout": int((is_held).sum()),
                                        "heldout_evaluated": int(len(held_idx))},
               batch_size=batch_size, lr=lr, template=template, negatives=list(negatives))
    if start_epoch >= epochs:
        print(f"{out} is already trained for {start_epoch} epoch(s) (--epochs {epochs}); nothing to do")
        return log
    print(f"clip-train {args.env_id} --size {args.size}: {n_params / 1e6:.1f}M parameters, {len(train_idx)} "
          f"training frames ({len(train_seeds)} seeds x {len(POLICIES)} policies, "
          f"{int(data['done'][train_idx].sum())} with the mission done), {int(is_held.sum())} held-out "
          f"frames ({len(held_seeds)} seeds); epochs {start_epoch + 1}..{epochs}")

    frames = data["frames"]
    train_done = train_idx[data["done"][train_idx]]
    epoch_idx = np.concatenate([train_idx] + [train_done] * (args.success_repeat - 1))
    warmup = min(WARMUP_STEPS, max(1, len(epoch_idx) // batch_size))
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        rng = np.random.default_rng([args.seed, epoch])
        order = rng.permutation(epoch_idx)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches = batches[:-1]
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, mininterval=1.0)
        for b in bar:
            chosen = [texts.sample(int(i), rng) for i in b]
            uniq = sorted(set(chosen))
            truth = torch.tensor([[u in texts.truth[int(i)] for u in uniq] for i in b], device=device)
            img = _features(model.get_image_features(pixel_values=_pixels(processor, frames[b]).to(device)))
            txt = _embed_texts(model, tokenizer, uniq, size.max_text_len, device)
            loss = clip_loss(torch.nn.functional.normalize(img.float(), dim=-1), txt, model.logit_scale, truth)
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / warmup)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
        bar.close()
        train_s = time.time() - t0
        metrics = _evaluate(model, tokenizer, processor, data, held_idx, size, template, negatives, device)
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "steps": step,
                 "logit_scale": float(model.logit_scale.detach().exp()), **metrics,
                 "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1)}
        # the last epoch always goes to OUT/last (for --resume); OUT gets it too when it is the one to keep
        save_checkpoint(out / LAST_DIR, model)
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"optimizer": opt.state_dict(), "epoch": epoch + 1, "step": step}, tmp)
        os.replace(tmp, state_path)
        keep = args.select == "last" or best_epoch(log["epochs"] + [entry]) is entry
        if keep:
            save_checkpoint(out, model)
            log["selected_epoch"] = epoch + 1
        log["epochs"].append(entry)
        _write_json(log_path, log)
        ap = metrics["heldout_p_goal_ap"]
        print(f"epoch {epoch + 1}: loss {entry['loss']:.4f}, held-out retrieval {metrics['heldout_retrieval_acc']:.3f}"
              + (f", goal sentence {metrics['heldout_goal_sentence_acc']:.3f}"
                 if metrics["heldout_goal_sentence_acc"] is not None else "")
              + (f", AP of p(goal) {ap:.3f}, of cos(goal) {metrics['heldout_cos_goal_ap']:.3f}" if ap is not None
                 else "") + f", reward F1 {metrics['heldout_reward_f1']:.3f} ({entry['seconds']:.0f}s)"
              + (" *" if keep and args.select == "best" else ""))
    print(f"{out} holds epoch {log['selected_epoch']} ("
          + ("the best held-out AP of p(goal)" if args.select == "best" else "the last") + f"; {out / LAST_DIR} "
          f"the last); load it with --clip-model {out}")
    return log


def cmd_clip_train(args) -> int:
    train_clip(args)
    return 0


def add_clip_train_parser(sub) -> None:
    p = sub.add_parser("clip-train", help="train a CLIP model on the environment's own frames with captions from its "
                                          "simulator state (the CLIP reward's model, measured here)")
    p.add_argument("--env-id", required=True)
    p.add_argument("--size", required=True, choices=list(SIZES),
                   help="tiny (1.7M parameters, minutes on 2 cores), small (16M), base (ViT-B/32 widths, 126M)")
    p.add_argument("--out", required=True, help="checkpoint directory (loadable with --clip-model OUT)")
    p.add_argument("--episodes", type=int, default=100, help="episodes per policy (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="total epochs (default per size: "
                   + ", ".join(f"{k} {v.epochs}" for k, v in SIZES.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="initialisation, held-out split, frame choice and batch order")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch saved in --out")
    p.add_argument("--select", choices=("best", "last"), default="best",
                   help="the epoch --out holds: best (default: the highest held-out AP of p(goal), the reward's own "
                        "ranking; ties by the binary reward's F1, then retrieval) or last (OUT/last always holds the "
                        "last)")
    p.add_argument("--frames-per-episode", type=int, default=16,
                   help="frames kept per episode besides those where the caption changes (default %(default)s)")
    p.add_argument("--success-repeat", type=int, default=3,
                   help="each training frame where the mission is done is seen this many times per epoch (they are "
                        "about one frame in 30; default %(default)s)")
    p.add_argument("--heldout", type=float, default=0.2,
                   help="fraction of episode seeds held out (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="default per size (128)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate after warm-up (default per size: "
                   + ", ".join(f"{k} {v.lr:g}" for k, v in SIZES.items()) + ")")
    p.add_argument("--eval-frames", type=int, default=1000,
                   help="held-out frames evaluated after each epoch (every done frame and a sample of the rest; "
                        "0: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_clip_train)


# ----------------------------------------------------------------------------------------------------------
# Reward accuracy: precision-recall of the CLIP reward against the environment's success, per frame
# ----------------------------------------------------------------------------------------------------------
def pr_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall) with one point per distinct score v, highest first: the frames with score
    >= v predicted positive (the binary reward with a threshold just below v). Precision is 1 where nothing is
    predicted; recall is 0 without positives."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    tp, fp = tp[last], fp[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / labels.sum() if labels.any() else np.zeros(len(tp))
    return s[last], precision, recall


def average_precision(scores, labels) -> float:
    """Sum over the curve of (recall step) x precision, as scikit-learn's average_precision_score."""
    _, precision, recall = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_point(predicted, labels) -> tuple[float, float]:
    """(precision, recall) of a binary prediction (precision 1 when nothing is predicted)."""
    predicted, labels = np.asarray(predicted, dtype=bool), np.asarray(labels, dtype=bool)
    tp = float((predicted & labels).sum())
    return (tp / predicted.sum() if predicted.any() else 1.0), (tp / labels.sum() if labels.any() else 0.0)


def _thin(thresholds, precision, recall) -> list[list[float]]:
    """The curve's points where recall steps up (one per positive frame reached) and its last point."""
    keep = np.r_[np.flatnonzero(np.diff(np.r_[0.0, recall]) > 0), len(recall) - 1] if len(recall) else []
    return [[round(float(thresholds[i]), 6), round(float(precision[i]), 6), round(float(recall[i]), 6)]
            for i in sorted(set(int(k) for k in keep))]


def _training_seeds(model: str) -> set[int]:
    path = Path(model).expanduser() / LOG_NAME
    if not path.exists():
        return set()
    try:
        log = json.loads(path.read_text())
        return set(log.get("train_seeds", [])) | set(log.get("heldout_seeds", []))
    except (OSError, ValueError):
        return set()


def reward_pr_curves(env_id: str, models: list[str], n: int = 50, seed: int = PR_SEED, view: str = "state",
                     reward_cache: str | Path | None = None, labels: list[str] | None = None, threshold: float = 0.5,
                     temperature: float = 0.01, batch: int = 64, progress: bool = True,
                     negatives: tuple[str, ...] | None = None,
                     variants: list[tuple[str, tuple[str, ...]]] | None = None) -> dict:
    """Per-frame precision-recall of each CLIP model's p(goal) against the environment's success ("done" = the
    frame after the step where the environment reports success), over `n` episodes of each of the four policies
    from seeds seed..seed+n-1, with the verified program's single point (its last sub-task completed at that frame,
    the shipped cache entry for `view` walked in the confined worker). The frames after each step are scored (the
    frames the reward hook scores); the reward texts are the family's defaults, as `--reward clip` uses them.
    Only the last frame of a successful episode counts as a success frame: episodes end at success in MiniGrid (and
    the non-random policies stop there); in an environment that does not terminate at success, a random episode's
    earlier success frames would count as failures. `negatives` replaces the family's negative texts;
    Each `(label, negatives)` of `variants` adds a curve per model with those negative texts, "{defaults}" among them
    standing for the main ones (the frames are embedded once; the label is appended to the model's)."""
    from tqdm.auto import tqdm

    from .clip_reward import ClipReward, ClipRewardConfig
    from .errors import VLMCaRError
    from .trajectories import make_env, make_policy, rollout

    if n < 1:
        raise UsageError("n (episodes per policy) must be at least 1")
    if not models:
        raise UsageError("give at least one CLIP model directory")
    seeds = set(range(seed, seed + n))
    for m in models:
        overlap = seeds & _training_seeds(m)
        if overlap:
            raise UsageError(f"episode seeds {seed}..{seed + n - 1} overlap the seeds {m} was trained or validated on "
                             f"(e.g. {min(overlap)}); pass another seed (default {PR_SEED})")
    template, default_negatives = reward_texts(env_id)
    negatives = tuple(negatives) if negatives else default_negatives
    variants = [("", negatives)] + [
        (f" {label}", tuple(x for n in negs for x in (negatives if n == "{defaults}" else (n,))))
        for label, negs in (variants or [])]
    env = make_env(env_id)
    env.reset(seed=seed)
    first_mission = getattr(env.unwrapped, "mission", None) or env_id
    program, program_note = None, None
    try:
        from .generate import reward_program

        program = reward_program(env_id, view, reward_cache=reward_cache)
    except VLMCaRError as e:
        program_note = f"no verified program point: {e}"
    base = [ClipReward(ClipRewardConfig(model=m, goal_template=template, negatives=negatives, threshold=threshold,
                                        temperature=temperature, device="cpu"), first_mission)
            for m in models]
    clips = [[b.with_negatives(negs) for _, negs in variants] for b in base]  # per model, per negatives variant
    scores: list[list[list[np.ndarray]]] = [[[] for _ in variants] for _ in models]
    cosines: list[list[np.ndarray]] = [[] for _ in models]
    truth, state_views, episodes = [], [], []
    bar = tqdm(total=n * len(POLICIES), desc=f"PR episodes ({env_id})", disable=not progress, mininterval=1.0)
    for label, name in POLICIES.items():
        policy = make_policy(name, env)
        for s in range(seed, seed + n):
            traj = rollout(env, policy, s, ["state", "pixels"] if view != "pixels" else ["pixels"],
                           stop_on_success=name != "random")
            pix = traj.views["pixels"][1:]
            frames = np.stack([v["rgb"] for v in pix])
            mission = pix[0].get("mission") or env_id
            for j, model_clips in enumerate(clips):
                x = np.concatenate([base[j].embed_frames(frames[i:i + batch]) for i in range(0, len(frames), batch)])
                for v, clip in enumerate(model_clips):
                    c = clip.for_mission(mission) if mission != clip.mission else clip
                    stats = c.rewards_from_embeddings(x)[1]
                    scores[j][v].append(stats["p_goal"])
                    if v == 0:
                        cosines[j].append(stats["cos_goal"])
            y = np.zeros(len(pix), dtype=bool)
            y[-1] = traj.success  # episodes end at the environment's success
            truth.append(y)
            state_views.append(traj.views[view])
            episodes.append({"policy": label, "seed": s, "frames": len(pix), "success": bool(traj.success)})
            bar.update(1)
    bar.close()
    y = np.concatenate(truth)
    result = {"env_id": env_id, "episodes_per_policy": n, "seeds": [seed, seed + n - 1], "frames": int(len(y)),
              "positives": int(y.sum()), "positive_rate": float(y.mean()), "template": template,
              "negatives": list(negatives), "temperature": temperature,
              "threshold": threshold,
              "unit": "frame (after each step); done = the environment's success at that step", "models": [],
              "program": None}
    names = labels or [Path(m).name or m for m in models]
    for m, name, model_scores, cc in zip(models, names, scores, cosines):
        cos = np.concatenate(cc)
        for v, ((suffix, negs), sc) in enumerate(zip(variants, model_scores)):
            p = np.concatenate(sc)
            at = pr_point(p > threshold, y)
            entry = {"model": str(m), "label": name + suffix, "negatives": list(negs),
                     "average_precision": average_precision(p, y),
                     "at_threshold": {"threshold": threshold, "precision": at[0], "recall": at[1]},
                     "p_goal_mean_positive": float(p[y].mean()) if y.any() else None,
                     "p_goal_mean_negative": float(p[~y].mean()) if (~y).any() else None,
                     "curve": _thin(*pr_curve(p, y))}
            if v == 0:  # the cosine with the goal text does not depend on the negatives
                entry["cos_goal"] = {"average_precision": average_precision(cos, y), "curve": _thin(*pr_curve(cos, y))}
            result["models"].append(entry)
    if program is not None:
        from .verify import walk_all

        predicted = []
        for ep, walked in zip(episodes, walk_all(program, state_views)):
            pred = np.zeros(ep["frames"], dtype=bool)
            last = walked.steps[-1]
            if last is not None:
                pred[last - 1] = True  # views[t] is the view after step t; frame index t - 1 here
            predicted.append(pred)
        prec, rec = pr_point(np.concatenate(predicted), y)
        result["program"] = {"path": str(getattr(program, "cache_path", "")), "view": view, "precision": prec,
                             "recall": rec, "subtasks": program.num_subtasks}
    else:
        result["program_note"] = program_note
    return result


def plot_pr_curves(result: dict, out: str | Path) -> Path:
    """One figure: each model's precision-recall curve of p(goal) (AP in the legend, its point at the reward's
    threshold as a dot) and, dashed, of the cosine with the goal text alone (VLM-RMs' reward with alpha = 0), the
    verified program's point as a star, and the rate of positive frames (a constant reward's precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.2, 4.4))
    for i, m in enumerate(result["models"]):
        color = f"C{i}"
        pts = np.array(m["curve"]) if m["curve"] else np.zeros((0, 3))
        if len(pts):
            ax.step(np.r_[0.0, pts[:, 2]], np.r_[pts[0, 1], pts[:, 1]], where="pre", color=color,
                    label=f"CLIP {m['label']} (AP {m['average_precision']:.2f})")
        cos = np.array(m["cos_goal"]["curve"]) if m.get("cos_goal", {}).get("curve") else np.zeros((0, 3))
        if len(cos):
            ax.step(np.r_[0.0, cos[:, 2]], np.r_[cos[0, 1], cos[:, 1]], where="pre", color=color, linestyle="--",
                    linewidth=1, label=f"cos(frame, goal) {m['label']} (AP {m['cos_goal']['average_precision']:.2f})")
        at = m["at_threshold"]
        ax.plot([at["recall"]], [at["precision"]], "o", color=color, markersize=5)
    if result.get("program"):
        pr = result["program"]
        ax.plot([pr["recall"]], [pr["precision"]], "*", color="k", markersize=14, label="verified program")
    ax.axhline(result["positive_rate"], color="grey", linestyle=":", linewidth=1, label="rate of success frames")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(f"{result['env_id']}: reward vs success per frame\n{result['episodes_per_policy']} episodes x 4 "
                 f"policies, {result['frames']} frames, {result['positives']} successes; dot: p(goal) > "
                 f"{result['threshold']:g}", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def pr_table(result: dict) -> str:
    lines = [f"Per-frame agreement with the environment's success ({result['env_id']}, {result['episodes_per_policy']} "
             f"episodes per policy, seeds {result['seeds'][0]}..{result['seeds'][1]}, {result['frames']} frames, "
             f"{result['positives']} success frames):", "",
             "| reward | AP of p(goal) | AP of cos(frame, goal) | precision | recall |",
             "| --- | --- | --- | --- | --- |"]
    for m in result["models"]:
        at = m["at_threshold"]
        cos = m.get("cos_goal", {}).get("average_precision")
        lines.append(f"| CLIP {m['label']} (p(goal) > {at['threshold']:g}) | {m['average_precision']:.3f} | "
                     + (f"{cos:.3f}" if cos is not None else "-") + f" | {at['precision']:.3f} | {at['recall']:.3f} |")
    if result.get("program"):
        pr = result["program"]
        lines.append(f"| verified program ({pr['view']} view) | - | - | {pr['precision']:.3f} | {pr['recall']:.3f} |")
    elif result.get("program_note"):
        lines.append(f"\n{result['program_note']}")
    return "\n".join(lines)
