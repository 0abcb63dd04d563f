"""The helpers the transformers-based parts share: local checkpoint or hub id, and the torch device."""

import pytest

from cleanrl_vlmcar.errors import BackendError
from cleanrl_vlmcar.hf import looks_like_path, resolve_device


@pytest.mark.parametrize("ref", ["/abs/model", "./model", "~/model", "C:\\models\\clip", "a/b/c", "not a hub id"])
def test_local_checkpoints_look_like_paths(ref):
    assert looks_like_path(ref)


@pytest.mark.parametrize("ref", ["openai/clip-vit-base-patch32", "gpt2", "org/model.v1"])
def test_hub_ids_do_not(ref, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name on disk here
    assert not looks_like_path(ref)


def test_an_existing_folder_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    assert looks_like_path("gpt2")


def test_devices():
    assert resolve_device("cpu", BackendError) == "cpu"
    assert resolve_device("auto", BackendError) in ("cpu", "cuda")
    with pytest.raises(BackendError, match="invalid device 'banana'"):
        resolve_device("banana", BackendError)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0", ValueError)
