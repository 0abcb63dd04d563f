"""A tiny, randomly initialised CLIP (character-level tokenizer made on the spot), saved like a hub checkpoint.

Built with the same helpers as `python -m cleanrl_vlmcar clip-train` (cleanrl_vlmcar/clip_train.py), at a size far
below its `tiny`: two layers of width 32 in each tower, 8 px patches, 16-d projection, 256 text positions (the
character-level prompts are long)."""

from pathlib import Path


def build_tiny_clip(out: str | Path, image_size: int = 32) -> str:
    from cleanrl_vlmcar.clip_train import (ClipSize, char_tokenizer, make_clip_model, make_image_processor,
                                           save_checkpoint)

    size = ClipSize(image_size=image_size, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                    text_width=32, text_layers=2, text_heads=2, projection_dim=16, mlp_ratio=2, max_text_len=256)
    tokenizer = char_tokenizer()
    model = make_clip_model(size, tokenizer, seed=0).eval()
    return save_checkpoint(out, model, tokenizer, make_image_processor(image_size))
