"""CLIP rewards from pixels: the baseline that VLM-CaR's code rewards are compared against.

Two reward functions over rendered frames, both built on a CLIP model from ``transformers``:

``mode="binary"`` -- Baumli et al. 2023, "Vision-Language Models as a Source of Rewards".
    The goal text and a fixed set of negative texts (descriptions of *other* tasks of the
    same family) are embedded once.  For a frame with L2-normalised image embedding ``x``::

        p(goal | x) = softmax_i( cos(x, t_i) / temperature )[goal],  t_i in [goal] + negatives
        reward      = 1.0 if p(goal | x) > threshold else 0.0          (strictly greater)

``mode="vlmrm"`` -- Rocamonde et al. 2023, "Vision-Language Models are Zero-Shot Reward
    Models for Reinforcement Learning" (goal-baseline regularisation).  With ``g`` and ``b``
    the normalised goal and baseline text embeddings::

        d      = (g - b) / ||g - b||
        P      = alpha * d d^T + (1 - alpha) * I
        reward = 1 - 0.5 * ||(x - g) P||^2

    ``alpha = 0`` gives ``1 - 0.5 ||x - g||^2 = cos(x, g)``; ``alpha = 1`` only keeps the
    component of ``x - g`` along the goal-baseline direction.  ``p(goal | x)`` from the binary
    formula is still reported in the stats for logging.

Texts.  The goal text is ``goal_template`` with ``{mission}`` replaced by the environment's
mission string.  Every negative is a *mission-like* phrase and goes through the same
template, so goal and negatives differ only in the task part and the shared prefix cancels
out of the softmax.  A negative that itself contains ``{mission}`` is a whole sentence of
its own: it is filled with the mission and not put through the template (for instance "a
top-down view of a grid world where the agent has not completed the task: {mission}", the
goal's own negation).  A negative whose text equals the goal text (case and whitespace
ignored; for a plain negative: equal to the mission) is dropped, since it would compete with
the goal for the same probability mass; so are repeated texts.

Defaults.
  * ``temperature = 0.01``: CLIP was trained with a learned logit scale that saturates at 100
    (``exp(logit_scale)`` of the released OpenAI checkpoints is 100.0), i.e. a softmax
    temperature of 0.01 over cosine similarities.  Using the same value makes ``p(goal|x)``
    the probability CLIP itself assigns in its contrastive objective.  Higher temperatures
    flatten ``p`` towards ``1 / (1 + len(negatives))``, lower ones push it towards 0/1.
  * ``threshold = 0.5``: the goal must be more likely than all negatives together.
  * ``DEFAULT_NEGATIVES``: sub-goals and sibling tasks of the MiniGrid navigation/key-door
    family (key, door, goal square, lava).  They purposely avoid colour-less versions of the
    usual "pick up the <colour> ball/box" missions, which would nearly paraphrase the goal.
    Override them for other task families.
  * ``pad_to_square = True``: MiniGrid frames are often wide (KeyCorridorS3R1: 48x112 at
    tile 16).  The CLIP processor resizes the *short* side to 224 and centre-crops, which
    would cut off the outer rooms; padding with black (MiniGrid's floor colour) to a square
    first keeps the whole frame visible.  Set False to feed frames to the processor as-is.

Loading.  ``model`` is a local directory holding ``save_pretrained`` output of a
``CLIPModel`` plus its tokenizer and image processor, or a hub id.  Nothing is downloaded
when the hub is unreachable: the error names the id and says to pass a local checkpoint with
``--clip-model``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

from .errors import BackendError
from .hf import looks_like_path, resolve_device
from .integrate import RewardHook, RewardTerm

__all__ = [
    "DEFAULT_NEGATIVES",
    "ClipReward",
    "ClipRewardConfig",
    "ClipRewardError",
]

DEFAULT_NEGATIVES: tuple[str, ...] = (
    "pick up the key",
    "open the door",
    "get to the green goal square",
    "go to the key",
    "avoid the lava",
)

_MODES = ("binary", "vlmrm")


class ClipRewardError(BackendError):
    """Bad configuration, unloadable checkpoint or malformed frames for :class:`ClipReward`."""


@dataclass
class ClipRewardConfig:
    model: str = "openai/clip-vit-base-patch32"
    """hub id or local directory with a saved CLIPModel + tokenizer + image processor"""
    goal_template: str = "a top-down view of a grid world where the agent has completed the task: {mission}"
    """goal text; ``{mission}`` is replaced by the task text (negatives use the same template)"""
    negatives: tuple[str, ...] = DEFAULT_NEGATIVES
    """mission-like descriptions of other tasks of the family, formatted with ``goal_template``"""
    temperature: float = 0.01
    """softmax temperature over cosine similarities (0.01 = CLIP's own logit scale of 100)"""
    threshold: float = 0.5
    """binary mode: reward 1 when p(goal | frame) > threshold (strict)"""
    mode: str = "binary"
    """"binary" (Baumli et al. 2023) or "vlmrm" (goal-baseline regularisation, Rocamonde et al. 2023)"""
    baseline: str = "a top-down view of a grid world"
    """vlmrm: baseline text b (used verbatim, not formatted)"""
    alpha: float = 0.5
    """vlmrm: P = alpha * d d^T + (1 - alpha) * I with d the unit goal-baseline direction"""
    device: str = "auto"
    """"auto" (cuda if available else cpu), "cpu", "cuda", "cuda:1", ..."""
    fp16: bool = False
    """half-precision model on GPU; ignored (with a warning) on CPU"""
    pad_to_square: bool = True
    """pad frames with black to a square before the processor's resize + centre crop"""


def _norm_text(s: str) -> str:
    return " ".join(s.lower().split())


def _fill(template: str, mission: str) -> str:
    return template.replace("{mission}", mission)


def negative_texts(template: str, mission: str, negatives) -> list[str]:
    """The negative texts for `mission`: a negative containing ``{mission}`` filled with the mission, any other
    put through the goal template; texts equal to the goal text, and repeats, dropped (case and whitespace
    ignored)."""
    seen = {_norm_text(_fill(template, mission))}
    out = []
    for n in negatives:
        t = _fill(n, mission) if "{mission}" in n else _fill(template, n)
        if _norm_text(t) not in seen:
            seen.add(_norm_text(t))
            out.append(t)
    return out


def _validate(cfg: ClipRewardConfig, mission: str) -> None:
    if cfg.mode not in _MODES:
        raise ClipRewardError(f"unknown CLIP reward mode {cfg.mode!r}; expected one of {_MODES}")
    if not isinstance(cfg.temperature, (int, float)) or not np.isfinite(cfg.temperature) or cfg.temperature <= 0:
        raise ClipRewardError(f"temperature must be a finite number > 0, got {cfg.temperature!r}")
    if not isinstance(cfg.threshold, (int, float)) or not 0.0 <= cfg.threshold <= 1.0:
        raise ClipRewardError(f"threshold must be in [0, 1], got {cfg.threshold!r}")
    if not isinstance(cfg.alpha, (int, float)) or not 0.0 <= cfg.alpha <= 1.0:
        raise ClipRewardError(f"alpha must be in [0, 1], got {cfg.alpha!r}")
    if not isinstance(mission, str) or not mission.strip():
        raise ClipRewardError(f"mission must be a non-empty string, got {mission!r}")
    if "{mission}" not in cfg.goal_template:
        raise ClipRewardError(
            f"goal_template must contain the placeholder '{{mission}}', got {cfg.goal_template!r}"
        )
    if isinstance(cfg.negatives, str):
        raise ClipRewardError("negatives must be a sequence of strings, not a single string")
    if not cfg.negatives:
        raise ClipRewardError(
            "negatives is empty: with the goal text alone the softmax is always 1 and the reward "
            "is constant; give at least one negative text (other tasks of the family)"
        )
    if any(not isinstance(n, str) or not n.strip() for n in cfg.negatives):
        raise ClipRewardError(f"every negative must be a non-empty string, got {cfg.negatives!r}")
    if cfg.mode == "vlmrm" and (not isinstance(cfg.baseline, str) or not cfg.baseline.strip()):
        raise ClipRewardError("vlmrm mode needs a non-empty baseline text")


def _load_components(ref: str):
    """Return (CLIPModel, tokenizer, image_processor) for a local directory or a hub id."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    def load(src: str):
        model = CLIPModel.from_pretrained(src)
        tokenizer = AutoTokenizer.from_pretrained(src)
        image_processor = AutoImageProcessor.from_pretrained(src)
        return model, tokenizer, image_processor

    if not isinstance(ref, str) or not ref.strip():
        raise ClipRewardError(f"CLIP model must be a hub id or a local directory, got {ref!r}")
    path = os.path.expanduser(ref)
    if os.path.isdir(path):
        try:
            return load(path)
        except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear error
            raise ClipRewardError(
                f"could not load a CLIP checkpoint from local directory {path!r} (it needs the "
                f"save_pretrained output of a CLIPModel plus its tokenizer and image processor): "
                f"{type(e).__name__}: {e}"
            ) from e
    if looks_like_path(ref):
        what = "is a file, not a checkpoint directory" if os.path.exists(path) else "does not exist"
        raise ClipRewardError(
            f"CLIP checkpoint path {ref!r} {what}; pass a directory containing a saved CLIPModel, "
            f"tokenizer and image processor with --clip-model /path/to/checkpoint"
        )
    try:
        return load(ref)
    except Exception as e:  # noqa: BLE001
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        raise ClipRewardError(
            f"could not load CLIP model {ref!r}: it is not a local directory and loading it as a "
            f"Hugging Face hub id failed (not in the local cache and the hub is not reachable"
            f"{', HF_HUB_OFFLINE is set' if offline else ''}). Copy the checkpoint to this machine "
            f"(CLIPModel/CLIPProcessor save_pretrained output) and pass its directory with "
            f"--clip-model /path/to/clip-vit-base-patch32. Cause: {type(e).__name__}: {e}"
        ) from e


def _features(out):
    """get_*_features returns a tensor in transformers 4.x and a ModelOutput in 5.x."""
    if hasattr(out, "pooler_output"):
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[1]
    return out


def _pad_square(frames: np.ndarray) -> np.ndarray:
    n, h, w, c = frames.shape
    if h == w:
        return frames
    s = max(h, w)
    out = np.zeros((n, s, s, c), dtype=frames.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[:, top : top + h, left : left + w] = frames
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class ClipReward:
    """Reward frames with CLIP.  Text embeddings are computed once, in ``__init__``.

    ``p_goal(frames)`` and ``__call__(frames)`` take ``(N, H, W, 3)`` uint8 frames (a single
    ``(H, W, 3)`` frame is treated as ``N = 1``) and run one batched image forward pass.
    All math after the embeddings is done in float64 numpy on the CPU.
    """

    def __init__(self, config: ClipRewardConfig, mission: str):
        import torch

        _validate(config, mission)
        self.config = config
        self.mission = mission
        self.device = torch.device(resolve_device(config.device, ClipRewardError))
        if config.fp16 and self.device.type != "cuda":
            warnings.warn("ClipRewardConfig.fp16 is only used on GPU; running in float32 on CPU", stacklevel=2)
        self.dtype = torch.float16 if (config.fp16 and self.device.type == "cuda") else torch.float32

        model, self.tokenizer, self.image_processor = _load_components(config.model)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

        self._set_mission(mission)

    def _set_mission(self, mission: str) -> None:
        """Goal and negative texts for `mission`, and their embeddings (computed once per mission)."""
        config = self.config
        self.mission = mission
        negs = negative_texts(config.goal_template, mission, config.negatives)
        if not negs:
            raise ClipRewardError(
                f"no negative text is left after removing the mission {mission!r} from negatives "
                f"{tuple(config.negatives)!r}; give at least one negative different from the goal"
            )
        self.goal_text = _fill(config.goal_template, mission)
        self.negative_texts = negs
        self.texts = [self.goal_text, *self.negative_texts]

        want_baseline = config.mode == "vlmrm"
        emb = self.embed_texts(self.texts + ([config.baseline] if want_baseline else []))
        self.text_embeds = emb[: len(self.texts)]  # (K, D) float64, unit rows; row 0 = goal
        self.goal_embed = self.text_embeds[0]
        self.baseline_embed = emb[-1] if want_baseline else None
        self.projection = None
        if want_baseline:
            diff = self.goal_embed - self.baseline_embed
            norm = float(np.linalg.norm(diff))
            if norm < 1e-6:
                raise ClipRewardError(
                    f"goal text {self.goal_text!r} and baseline {config.baseline!r} have the same "
                    "CLIP embedding; the goal-baseline direction is undefined"
                )
            d = diff / norm
            dim = d.shape[0]
            self.projection = config.alpha * np.outer(d, d) + (1.0 - config.alpha) * np.eye(dim)

    def for_mission(self, mission: str) -> "ClipReward":
        """The same model with the goal text of another mission (MiniGrid missions vary per episode)."""
        other = copy.copy(self)
        other._set_mission(mission)
        return other

    def with_negatives(self, negatives) -> "ClipReward":
        """The same model and mission with other negative texts (validated as the config's)."""
        import dataclasses

        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, negatives=tuple(negatives) if not isinstance(negatives, str)
                                           else negatives)
        _validate(other.config, self.mission)
        other._set_mission(self.mission)
        return other

    def rewards_from_embeddings(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Rewards and stats from image embeddings `x` (N, D) computed by `embed_frames`."""
        cos, p = self._probs(x)
        p_goal = p[:, 0]
        stats = {
            "p_goal": p_goal,
            "cos_goal": cos[:, 0],
            "cos_best_negative": cos[:, 1:].max(axis=1),
        }
        if self.config.mode == "binary":
            rewards = (p_goal > self.config.threshold).astype(np.float32)
        else:
            proj = (x - self.goal_embed) @ self.projection
            rewards = (1.0 - 0.5 * np.sum(proj * proj, axis=1)).astype(np.float32)
            stats["cos_baseline"] = x @ self.baseline_embed
        return rewards, stats

    # -- embeddings ---------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float64 L2-normalised text embeddings."""
        import torch

        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        lengths = [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]
        too_long = [t for t, n in zip(texts, lengths) if n > max_len]
        if too_long:
            warnings.warn(
                f"{len(too_long)} CLIP text(s) exceed the {max_len}-token context and are truncated, "
                f"e.g. {too_long[0]!r}; truncated texts may collapse onto each other",
                stacklevel=2,
            )
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            feats = _features(self.model.get_text_features(**tok)).float()
            feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu().numpy().astype(np.float64)

    def _check_frames(self, frames) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ClipRewardError(f"frames must have shape (N, H, W, 3) with N >= 1, got {frames.shape}")
        if frames.dtype != np.uint8:
            raise ClipRewardError(f"frames must be uint8 RGB in [0, 255], got dtype {frames.dtype}")
        return frames

    def preprocess(self, frames: np.ndarray):
        """Frames -> pixel_values tensor on the model's device (pad to square, then the CLIP processor)."""
        frames = self._check_frames(frames)
        if self.config.pad_to_square:
            frames = _pad_square(frames)
        pixels = self.image_processor(
            images=list(frames), return_tensors="pt", input_data_format="channels_last"
        )["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """(N, D) float64 L2-normalised image embeddings, one batched forward pass."""
        import torch

        pixels = self.preprocess(frames)
        with torch.inference_mode():
            feats = _features(self.model.get_image_features(pixel_values=pixels)).float()
            feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu().numpy().astype(np.float64)

    # -- rewards --------------------------------------------------------------------------
    def _probs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cos = x @ self.text_embeds.T  # (N, K)
        return cos, _softmax(cos / self.config.temperature)

    def p_goal(self, frames: np.ndarray) -> np.ndarray:
        """(N,) float64 softmax probability of the goal text among [goal] + negatives."""
        _, p = self._probs(self.embed_frames(frames))
        return p[:, 0]

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, dict]:
        """Rewards (N,) float32 and stats (numpy arrays of shape (N,)).

        stats: ``p_goal``, ``cos_goal`` (cosine with the goal text), ``cos_best_negative``,
        and in vlmrm mode ``cos_baseline``.
        """
        return self.rewards_from_embeddings(self.embed_frames(frames))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ClipReward(model={c.model!r}, mode={c.mode!r}, goal={self.goal_text!r}, "
            f"n_negatives={len(self.negative_texts)}, temperature={c.temperature}, "
            f"threshold={c.threshold}, alpha={c.alpha}, device={self.device})"
        )


# ----------------------------------------------------------------------------------------------------------
# The CLIP reward as a hook for the training scripts (the `clip` variant of --reward)
# ----------------------------------------------------------------------------------------------------------
def make_clip_hook(envs, args, writer=None) -> RewardHook:
    """A reward hook whose reward is the CLIP reward of each env's rendered frame (one batched forward pass per
    vector step); the environment's own return and success are still logged. Reads args.clip_* fields."""
    from .families import ClipDefaults, family_of

    # the family's goal template, negatives and baseline text (ClipTerm refuses anything but a SyncVectorEnv)
    defaults = family_of(envs.envs[0]).clip if hasattr(envs, "envs") else ClipDefaults()
    base = ClipRewardConfig()
    config = ClipRewardConfig(
        model=getattr(args, "clip_model", base.model),
        goal_template=getattr(args, "clip_template", None) or defaults.goal_template or base.goal_template,
        negatives=tuple(getattr(args, "clip_negatives", None) or defaults.negatives or base.negatives),
        temperature=getattr(args, "clip_temperature", base.temperature),
        threshold=getattr(args, "clip_threshold", base.threshold),
        mode=getattr(args, "clip_mode", base.mode),
        baseline=defaults.baseline or base.baseline,
        alpha=getattr(args, "clip_alpha", base.alpha),
        fp16=getattr(args, "clip_fp16", False),
    )
    term = ClipTerm(config, envs, end_episode=getattr(args, "clip_end_episode", False))
    return RewardHook(None, envs, writer=writer, terms=[term])


def _mission_of(view: dict, env) -> str:
    """The goal text of the current episode, in the env's family's words."""
    from .families import family_of

    return family_of(env).mission(env, view)


class ClipTerm(RewardTerm):
    """The CLIP reward of Baumli et al. as a reward term: the CLIP reward of each env's frame after the step. It
    replaces the environment's reward (`replaces_env_reward`); the environment's own return and success are still
    booked and logged by the hook.

    Frames come from the `pixels` view of each sub-environment and are embedded in one batched forward pass in `send`
    (the envs are at that step then); text embeddings are computed once per distinct mission. Logs
    `clip/p_goal_mean`, `clip/p_goal_max` and `clip/rewarded_fraction` (binary) or `clip/reward_mean` every
    LOG_EVERY vector steps, and in binary mode `clip/paid_before_env_end`, how many frames so far CLIP paid on a step
    that did not end the environment's episode (in MiniGrid, which ends episodes at success: its false positives,
    and the episodes `--clip-end-episode` would end).

    With `end_episode` (binary mode), an episode ends when the CLIP reward fires, as in Baumli et al.: the step is
    reported to the learner as a termination (the caller's `terminations` array is set for that env, which the
    training scripts then see) and the vector env resets that sub-env on the next step, as gymnasium 1.x does for
    any episode end (SyncVectorEnv's `_autoreset_envs` is set: gymnasium has no public way to ask for it mid-step).
    The environment's own RecordEpisodeStatistics does not see such an end, so the term logs
    `charts/episodic_return` and `charts/episodic_length` for them itself; `clip/episodes_ended` counts them.
    """

    LOG_EVERY = 64
    replaces_env_reward = True

    def __init__(self, config: ClipRewardConfig, envs, end_episode: bool = False):
        import gymnasium as gym

        from .errors import UsageError
        from .views import make_view

        if end_episode and config.mode != "binary":
            raise ClipRewardError("--clip-end-episode needs the binary CLIP reward (--clip-mode binary)")
        if not isinstance(envs, gym.vector.SyncVectorEnv):
            raise UsageError("--reward clip renders each sub-environment: use SyncVectorEnv")
        if end_episode and not hasattr(envs, "_autoreset_envs"):
            raise UsageError("--clip-end-episode needs gymnasium 1.x's SyncVectorEnv (it marks the env for reset)")
        self.end_episode, self.episodes_ended = end_episode, 0
        self.paid_before_env_end = 0  # frames the CLIP reward paid on a step that did not end the env's episode
        self.config, self.envs, self.num_envs = config, envs, envs.num_envs
        self.adapters_pixels = [make_view(env, "pixels") for env in envs.envs]
        self.clip = ClipReward(config, _mission_of(self.adapters_pixels[0].reset(), envs.envs[0]))
        self._by_mission = {self.clip.mission: self.clip}
        self._p_goal: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []
        self._calls = 0
        self._queue: deque[tuple[np.ndarray, list[int]]] = deque()  # per step sent: (rewards, envs ended here)
        self._forced: list[int] = []  # envs whose episode this term ended on the step collected last

    def _for(self, mission: str) -> ClipReward:
        if mission not in self._by_mission:
            self._by_mission[mission] = self.clip.for_mission(mission)
        return self._by_mission[mission]

    def clip_rewards(self, reset=None) -> tuple[np.ndarray, np.ndarray]:
        """CLIP rewards and p(goal) of every env's current frame; `reset[i]`: env i was reset by this step (next-step
        autoreset), so its pixels view starts over from the new episode's full frame (the view draws incrementally:
        stepping it across a reset would keep the old episode's layout on the cells it does not redraw)."""
        reset = [False] * self.num_envs if reset is None else reset
        views = [a.reset() if r else a.step() for a, r in zip(self.adapters_pixels, reset)]
        x = self.clip.embed_frames(np.stack([v["rgb"] for v in views]))  # one batched forward pass
        missions = [_mission_of(v, env) for v, env in zip(views, self.envs.envs)]
        rewards, p_goal = np.zeros(self.num_envs), np.zeros(self.num_envs)
        for mission in set(missions):
            idx = [i for i, m in enumerate(missions) if m == mission]
            r, stats = self._for(mission).rewards_from_embeddings(x[idx])
            rewards[idx], p_goal[idx] = r, stats["p_goal"]
        return rewards, p_goal

    def send(self, step) -> None:
        rewards, p_goal = self.clip_rewards(step.autoreset)
        self._p_goal.append(p_goal)
        self._rewards.append(rewards)
        self._calls += 1
        forced = []
        done = np.logical_or(step.terminations, step.truncations)
        self.paid_before_env_end += int(np.sum((rewards > 0) & ~done & ~np.asarray(step.autoreset, dtype=bool)))
        if self.end_episode:
            forced = [i for i in range(self.num_envs) if rewards[i] > 0 and not done[i] and not step.autoreset[i]]
            for i in forced:
                step.terminations[i] = True  # the learner sees the episode end here
                self.envs._autoreset_envs[i] = True  # and the vector env resets this sub-env on the next step
        self._queue.append((rewards, forced))

    def reset(self, obs, infos) -> None:
        self._queue.clear()
        for a in self.adapters_pixels:  # every env starts a new episode: its view starts from the full frame
            a.reset()

    def collect(self, step) -> list[float]:
        values, self._forced = self._queue.popleft()
        return [0.0 if r else float(v) for v, r in zip(values, step.autoreset)]

    def after_step(self, hook) -> None:
        writer = hook.writer
        if writer is not None and self._calls % self.LOG_EVERY == 0 and self._p_goal:
            p = np.concatenate(self._p_goal)
            writer.add_scalar("clip/p_goal_mean", float(p.mean()), hook.global_step)
            writer.add_scalar("clip/p_goal_max", float(p.max()), hook.global_step)
            name = "clip/rewarded_fraction" if self.config.mode == "binary" else "clip/reward_mean"
            writer.add_scalar(name, float(np.concatenate(self._rewards).mean()), hook.global_step)
            if self.config.mode == "binary":  # cumulative: CLIP paid a frame where the env did not end the episode
                writer.add_scalar("clip/paid_before_env_end", self.paid_before_env_end, hook.global_step)
            self._p_goal, self._rewards = [], []
        if self._forced:
            self.episodes_ended += len(self._forced)
            if writer is not None:
                for e in hook.episodes:
                    if e.env_index in self._forced:
                        writer.add_scalar("charts/episodic_return", e.env_return, hook.global_step)
                        writer.add_scalar("charts/episodic_length", e.length, hook.global_step)
                writer.add_scalar("clip/episodes_ended", self.episodes_ended, hook.global_step)
            self._forced = []
