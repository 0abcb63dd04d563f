"""Shared test helpers for the VLM backends: a scripted loopback chat-completions server and a tiny random VLM.

Imported by tests/test_backends.py and tests/test_generate.py (pytest puts tests/ on sys.path). Nothing here
touches the network: the server binds 127.0.0.1 only, and the VLM is built from scratch with random weights.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

OPENAI_ENV_VARS = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "VLMCAR_MODEL", "OPENAI_CUSTOM_HEADERS")
PROXY_ENV_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def scrub_openai_env(monkeypatch) -> None:
    """No endpoint, key or model from the environment, and no proxy between the client and 127.0.0.1."""
    for var in OPENAI_ENV_VARS + PROXY_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def set_hf_offline(monkeypatch) -> None:
    """Make sure transformers / huggingface_hub never try the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hc

        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass


# --------------------------------------------------------------------------- loopback chat server


def completion(content: str) -> dict:
    """A chat-completions response body whose single choice says `content`."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-vlm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ChatServer:
    """A scripted OpenAI-compatible server on 127.0.0.1.

    ``script`` is a list of steps, one per request; the last step repeats.  A step is
    ``(status, body)`` with body a dict (sent as JSON) or str/bytes (sent as is), or
    ``("sleep", seconds)``.  ``requests`` holds the decoded request bodies; assign new lists to
    ``script`` and ``requests`` to re-script a running server (the step index is ``len(requests)``).
    """

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                server.paths.append(self.path)
                try:
                    server.requests.append(json.loads(raw))
                except ValueError:
                    server.requests.append({"_raw": raw})
                i = min(len(server.requests), len(server.script)) - 1
                kind, arg = server.script[i]
                if self.path != "/v1/chat/completions":
                    kind, arg = 404, {"error": {"message": f"no route {self.path}"}}
                try:
                    if kind == "sleep":
                        server.release.wait(arg)  # bounded; released at teardown
                        kind, arg = 200, completion("too late")
                    body = arg if isinstance(arg, (str, bytes)) else json.dumps(arg)
                    body = body.encode() if isinstance(body, str) else body
                    self.send_response(kind)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def user_text(request: dict) -> str:
    """The text parts of the user message of a recorded chat-completions request."""
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


# --------------------------------------------------------------------------- tiny random VLM


def build_tiny_vlm(out: Path) -> Path:
    """Save a tiny random LLaVA (CLIP vision tower + Llama text model) with a freshly trained tokenizer to `out`."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    out = Path(out)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    corpus = ["the agent reaches the goal", "write a dense reward function in python", "initial frame and goal frame"]
    tok.train_from_iterator(corpus * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}</s>\n"
        "{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",  # drops CLS: 2x2 patches -> 4 image tokens
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=16, projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
            bos_token_id=1, eos_token_id=2, pad_token_id=3,
        ),
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out
