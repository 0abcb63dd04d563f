"""Tests for cleanrl_vlmcar.backends (no network: a loopback HTTP server and a tiny random VLM)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import numpy as np
import pytest
from helpers_vlm import ChatServer, build_tiny_vlm, scrub_openai_env, set_hf_offline
from helpers_vlm import completion as _completion

from cleanrl_vlmcar.backends import (
    Backend,
    BackendError,
    ManualAnswerNeeded,
    Prompt,
    make_backend,
    prompt_hash,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    scrub_openai_env(monkeypatch)


def _frames():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    b = np.zeros((24, 32, 3), np.uint8)
    b[8:16, 8:16] = (255, 0, 0)
    return a, b


def _prompt(text="Write a dense reward function `compute_reward(obs)` for this task."):
    a, b = _frames()
    return Prompt(text=text, images=[("initial frame", a), ("goal frame", b)], system="You are a helpful RL expert.")


# --------------------------------------------------------------------------- loopback chat server
# (ChatServer and the completion body live in tests/helpers_vlm.py)


def _openai(url, **kw):
    kw.setdefault("model", "test-vlm")
    kw.setdefault("timeout", 5.0)
    kw.setdefault("max_retries", 3)
    kw.setdefault("backoff", 0.01)
    return make_backend("openai", base_url=url, **kw)


def _decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB"))


def test_openai_normal_answer():
    prompt = _prompt()
    with ChatServer([(200, _completion("def compute_reward(obs):\r\n    return 0.0\n"))]) as srv:
        be = _openai(srv.url, temperature=0.0, max_tokens=123)
        assert isinstance(be, Backend)
        assert be.name == "openai" and be.model == "test-vlm"
        answer = be.complete(prompt)
    assert answer == "def compute_reward(obs):\n    return 0.0\n"
    assert srv.paths == ["/v1/chat/completions"]
    req = srv.requests[0]
    assert req["model"] == "test-vlm"
    assert req["temperature"] == 0.0 and req["max_tokens"] == 123
    assert req["messages"][0] == {"role": "system", "content": prompt.system}
    user = req["messages"][1]
    assert user["role"] == "user"
    texts = [p["text"] for p in user["content"] if p["type"] == "text"]
    assert prompt.text in texts
    images = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    assert len(images) == 2
    a, b = _frames()
    np.testing.assert_array_equal(_decode_data_url(images[0]), a)
    np.testing.assert_array_equal(_decode_data_url(images[1]), b)
    # each image is preceded by its caption
    kinds = [p.get("text") if p["type"] == "text" else "IMG" for p in user["content"]]
    assert kinds.index("IMG") - 1 == kinds.index("initial frame:")
    assert kinds[kinds.index("goal frame:") + 1] == "IMG"
    assert be.settings() == {"base_url": srv.url, "temperature": 0.0, "max_tokens": 123}


def test_openai_env_vars_and_placeholder_key(monkeypatch):
    with ChatServer([(200, _completion("ok"))]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("VLMCAR_MODEL", "env-model")
        be = make_backend("openai", backoff=0.01)
        assert be.model == "env-model"
        assert be.complete(Prompt("hi", [])) == "ok"
    assert srv.requests[0]["model"] == "env-model"
    assert srv.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_missing_model_or_key_is_actionable():
    with pytest.raises(BackendError, match="VLMCAR_MODEL"):
        make_backend("openai", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        make_backend("openai", model="gpt-4o")  # default OpenAI endpoint needs a key


def test_openai_retries_429_then_500_then_success():
    script = [(429, {"error": {"message": "slow down"}}), (500, {"error": {"message": "boom"}}), (200, _completion("fine"))]
    with ChatServer(script) as srv:
        t0 = time.perf_counter()
        assert _openai(srv.url, max_retries=4).complete(_prompt()) == "fine"
        assert time.perf_counter() - t0 < 5
    assert len(srv.requests) == 3


def test_openai_always_500_names_url_after_all_attempts():
    with ChatServer([(500, {"error": {"message": "internal"}})]) as srv:
        with pytest.raises(BackendError) as ei:
            _openai(srv.url, max_retries=2).complete(_prompt())
    msg = str(ei.value)
    assert srv.url in msg and "test-vlm" in msg and "500" in msg
    assert len(srv.requests) == 3


def test_openai_client_error_is_not_retried():
    with ChatServer([(401, {"error": {"message": "bad key"}})]) as srv:
        with pytest.raises(BackendError, match="OPENAI_API_KEY") as ei:
            _openai(srv.url, api_key="sk-wrong").complete(_prompt())
    assert srv.url in str(ei.value)
    assert len(srv.requests) == 1


def test_openai_switches_to_max_completion_tokens():
    msg = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    with ChatServer([(400, {"error": {"message": msg, "param": "max_tokens"}}), (200, _completion("ok"))]) as srv:
        assert _openai(srv.url, max_tokens=77).complete(_prompt()) == "ok"
    assert srv.requests[0]["max_tokens"] == 77
    assert srv.requests[1]["max_completion_tokens"] == 77 and "max_tokens" not in srv.requests[1]


def test_openai_timeout():
    with ChatServer([("sleep", 10.0)]) as srv:
        t0 = time.perf_counter()
        with pytest.raises(BackendError, match="timed out") as ei:
            _openai(srv.url, timeout=0.3, max_retries=1).complete(_prompt())
        assert time.perf_counter() - t0 < 5
    assert srv.url in str(ei.value)
    assert len(srv.requests) == 2


@pytest.mark.parametrize(
    "body",
    ["{this is not json", json.dumps({"id": "x", "object": "chat.completion"}), json.dumps({"choices": []})],
    ids=["malformed", "no-choices", "empty-choices"],
)
def test_openai_malformed_answer(body):
    with ChatServer([(200, body)]) as srv:
        with pytest.raises(BackendError) as ei:
            _openai(srv.url).complete(_prompt())
    assert srv.url in str(ei.value)
    assert len(srv.requests) == 1


def test_openai_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match="connect") as ei:
        _openai(url, max_retries=2).complete(_prompt())
    assert time.perf_counter() - t0 < 10
    assert url in str(ei.value) and "test-vlm" in str(ei.value)


# --------------------------------------------------------------------------- manual / cache / factory


def test_manual_roundtrip(tmp_path):
    be = make_backend("manual", manual_dir=tmp_path / "manual")
    assert be.name == "manual" and be.model == "" and be.settings() == {}
    prompt = _prompt()
    with pytest.raises(ManualAnswerNeeded) as ei:
        be.complete(prompt)
    folder = ei.value.folder
    assert folder.parent == tmp_path / "manual" and folder.name == prompt_hash(prompt)
    msg = str(ei.value)
    assert str(folder) in msg and "answer.md" in msg and "re-run" in msg.lower()
    md = (folder / "prompt.md").read_text(encoding="utf-8")
    assert prompt.system in md and prompt.text in md
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        assert f"]({png.name})" in md
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(pngs[0]).convert("RGB")), _frames()[0])

    (folder / "answer.md").write_bytes(b"def compute_reward(obs):\r\n    return 1.0\r\n")
    assert be.complete(prompt) == "def compute_reward(obs):\n    return 1.0\n"
    assert be.complete(_prompt()) == "def compute_reward(obs):\n    return 1.0\n"  # equal prompt, same folder

    other = _prompt(text="A different task.")
    with pytest.raises(ManualAnswerNeeded) as ei2:
        be.complete(other)
    assert ei2.value.folder != folder and ei2.value.folder.is_dir()
    changed = Prompt(prompt.text, [(c, im.copy()) for c, im in prompt.images], prompt.system)
    changed.images[1][1][0, 0, 0] ^= 1  # one pixel differs
    assert prompt_hash(changed) != prompt_hash(prompt)


def test_manual_empty_answer_still_asks(tmp_path):
    be = make_backend("manual", manual_dir=tmp_path)
    with pytest.raises(ManualAnswerNeeded) as ei:
        be.complete(_prompt())
    ei.value.answer_path.write_text("  \n", encoding="utf-8")
    with pytest.raises(ManualAnswerNeeded, match="empty"):
        be.complete(_prompt())


def test_cache_backend_never_calls_a_model():
    be = make_backend("cache")
    assert be.name == "cache" and be.model == "" and be.settings() == {}
    with pytest.raises(BackendError, match="never calls a model"):
        be.complete(_prompt())


def test_unknown_backend():
    with pytest.raises(ValueError) as ei:
        make_backend("claude-desktop")
    for name in ("openai", "hf", "manual", "cache"):
        assert name in str(ei.value)


# --------------------------------------------------------------------------- hf (tiny random LLaVA)


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    """A tiny random LLaVA (CLIP vision tower + Llama text model) with a freshly trained tokenizer."""
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture
def hf_offline(monkeypatch):
    set_hf_offline(monkeypatch)


@pytest.mark.slow
def test_hf_tiny_model_generates(tiny_vlm_dir, hf_offline):
    be = make_backend("hf", model=str(tiny_vlm_dir), temperature=0.0, max_tokens=8, device="cpu")
    assert be.name == "hf" and be.model == str(tiny_vlm_dir)
    assert be.settings() == {"temperature": 0.0, "max_tokens": 8}
    t0 = time.perf_counter()
    out1 = be.complete(_prompt())
    out2 = be.complete(_prompt())  # greedy, model kept loaded
    assert isinstance(out1, str) and out1 == out2
    assert "\r" not in out1
    assert time.perf_counter() - t0 < 30
    # sampling path and a prompt without system text / images also work
    be_s = make_backend("hf", model=str(tiny_vlm_dir), temperature=0.7, max_tokens=4, device="auto")
    assert isinstance(be_s.complete(Prompt("just text", [])), str)


@pytest.mark.slow
def test_hf_missing_path(tmp_path, hf_offline):
    missing = tmp_path / "no-such-model"
    be = make_backend("hf", model=str(missing))  # lazy: nothing loaded yet
    with pytest.raises(BackendError) as ei:
        be.complete(_prompt())
    assert str(missing) in str(ei.value)


@pytest.mark.slow
def test_hf_unknown_hub_id_offline(hf_offline):
    be = make_backend("hf", model="vlmcar-tests/definitely-not-a-model")
    with pytest.raises(BackendError) as ei:
        be.complete(_prompt())
    assert "vlmcar-tests/definitely-not-a-model" in str(ei.value)
