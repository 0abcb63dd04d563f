"""What the transformers-based parts (the `hf` VLM backend, the CLIP reward) share: telling a local checkpoint
from a hub id, and choosing a torch device."""

from __future__ import annotations

import os
import re

#: a Hugging Face hub id: `name` or `org/name`
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def looks_like_path(ref: str) -> bool:
    """True when `ref` names a local checkpoint rather than a hub id: absolute, relative (`.`, `~`), a Windows path,
    more than one `/`, an existing file or folder, or anything that is not a valid hub id."""
    return (
        os.path.isabs(ref)
        or ref.startswith((".", "~", "\\"))
        or bool(re.match(r"^[A-Za-z]:[\\/]", ref))
        or "\\" in ref
        or ref.count("/") > 1
        or os.path.exists(os.path.expanduser(ref))
        or not HUB_ID.match(ref)
    )


def resolve_device(device: str, error: type[Exception]) -> str:
    """`device` ("auto", "cpu", "cuda", "cuda:1", ...) checked against this machine; `error` (the caller's error
    class) when it is malformed or asks for CUDA where there is none."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise error(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"device {device!r} requested but CUDA is not available: use device 'cpu' or 'auto', or "
                    "install a CUDA build of torch")
    return str(dev)
