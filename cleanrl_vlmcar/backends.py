"""VLM backends for the "generate" stage of VLM-CaR (Code as Reward).

A backend turns a :class:`Prompt` (Markdown text plus captioned RGB frames) into the
model's raw text answer.  Four backends exist:

``openai``
    Any OpenAI-compatible chat-completions endpoint that accepts image inputs
    (OpenAI, Gemini's OpenAI-compatible endpoint, vLLM, Ollama, LM Studio, ...),
    through the official ``openai`` client.  Retries with exponential backoff are
    done here (the client's own retries are switched off).
``hf``
    A local ``transformers`` image-text-to-text model (hub id or local folder),
    loaded lazily on the first :meth:`complete` call and kept.
``manual``
    For people who have a chat window but no API: writes the prompt and the images
    to ``<manual_dir>/<hash>/`` and returns ``answer.md`` from that folder once the
    user has saved the chat's reply there.
``cache``
    Replay only; never calls a model (the cache lookup lives in the caller).

Every failure that a user can act on is raised as :class:`BackendError` whose
message says what to check.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from .errors import BackendError  # noqa: F401 - the VLM backend failed; the message says what to do
from .hf import looks_like_path, resolve_device

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendError",
    "CacheOnlyBackend",
    "HFBackend",
    "ManualAnswerNeeded",
    "ManualBackend",
    "OpenAIBackend",
    "Prompt",
    "image_to_png",
    "make_backend",
    "prompt_hash",
]

log = logging.getLogger(__name__)

BACKEND_NAMES = ("openai", "hf", "manual", "cache")
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
# Sent when the endpoint is local / self-hosted and no key was given; the openai
# client refuses to start without some key.
PLACEHOLDER_API_KEY = "sk-no-key-required"


# --------------------------------------------------------------------------- data


@dataclass
class Prompt:
    """What is sent to the VLM.

    ``images`` is a list of ``(caption, HxWx3 uint8 RGB array)``, e.g.
    ``[("initial frame", a), ("goal frame", b)]``.  Every backend presents the
    system text first, then ``text``, then each image preceded by its caption.
    """

    text: str
    images: list[tuple[str, np.ndarray]] = field(default_factory=list)
    system: str = ""


class ManualAnswerNeeded(BackendError):
    """The manual backend has written a prompt folder and waits for ``answer.md``."""

    def __init__(self, message: str, folder: Path):
        super().__init__(message)
        self.folder = Path(folder)
        self.prompt_path = self.folder / "prompt.md"
        self.answer_path = self.folder / "answer.md"


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str

    def settings(self) -> dict: ...

    def complete(self, prompt: Prompt) -> str: ...


# --------------------------------------------------------------------------- helpers


def _as_rgb_uint8(image: Any, caption: str = "") -> np.ndarray:
    """Validate an image as HxWx3 uint8 (HxW gray and HxWx4 RGBA are converted)."""
    arr = np.asarray(image)
    what = f"image {caption!r}" if caption else "image"
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 array (HxWx3 RGB), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} must have shape HxWx3 (RGB), got {arr.shape}")
    return np.ascontiguousarray(arr)


def image_to_png(image: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 RGB array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_as_rgb_uint8(image), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _png_data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(image_to_png(image)).decode("ascii")


def prompt_hash(prompt: Prompt, length: int = 16) -> str:
    """Stable hash of everything the model sees: system, text, captions, pixels."""
    h = hashlib.sha256()

    def put(b: bytes) -> None:  # length-prefixed, so fields cannot run into each other
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    put(b"vlmcar-prompt-v1")
    put(prompt.system.encode("utf-8"))
    put(prompt.text.encode("utf-8"))
    for caption, image in prompt.images:
        arr = _as_rgb_uint8(image, caption)
        put(caption.encode("utf-8"))
        put(repr(arr.shape).encode("ascii"))
        put(arr.tobytes())
    return h.hexdigest()[:length]


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _slug(text: str, fallback: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40]
    return s or fallback


# --------------------------------------------------------------------------- openai


_RETRY_STATUS = frozenset({408, 429})  # plus every 5xx


class OpenAIBackend:
    """OpenAI-compatible chat-completions endpoint with image inputs."""

    name = "openai"

    def __init__(
        self,
        model: str = "",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        temperature: float = 0.2,
        max_tokens: int = 4096,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
    ):
        try:
            import openai
        except ImportError as e:  # pragma: no cover - openai is a dependency
            raise BackendError("the 'openai' package is not installed: pip install openai") from e
        self._openai = openai

        self.model = model or os.environ.get("VLMCAR_MODEL", "")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")
        if not self.model:
            raise BackendError(
                f"--vlm openai needs a model name for the endpoint {self.base_url}: pass the model "
                "(e.g. gpt-4o, gemini-2.5-flash, qwen2.5vl:7b) or set the VLMCAR_MODEL environment variable."
            )
        key = api_key or os.environ.get("OPENAI_API_KEY") or ""
        if not key:
            if urlparse(self.base_url).hostname == urlparse(DEFAULT_OPENAI_BASE_URL).hostname:
                raise BackendError(
                    f"no API key for {self.base_url} (model {self.model}): set OPENAI_API_KEY, or set "
                    "OPENAI_BASE_URL to a local OpenAI-compatible server (vLLM, Ollama, LM Studio), "
                    "or use --vlm manual to paste the prompt into a chat window yourself."
                )
            # Local / self-hosted servers usually need no key, but the client wants one.
            key = PLACEHOLDER_API_KEY
        self._key_is_placeholder = key == PLACEHOLDER_API_KEY
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        # Some OpenAI models reject `max_tokens` and want `max_completion_tokens`;
        # switched on the first 400 that says so.
        self._token_param = "max_tokens"
        self._client = openai.OpenAI(
            api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0
        )

    def settings(self) -> dict:
        return {
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    # -- request building

    @staticmethod
    def build_messages(prompt: Prompt) -> list[dict]:
        messages: list[dict] = []
        if prompt.system:
            messages.append({"role": "system", "content": prompt.system})
        if not prompt.images:
            messages.append({"role": "user", "content": prompt.text})
            return messages
        parts: list[dict] = [{"type": "text", "text": prompt.text}]
        for caption, image in prompt.images:
            parts.append({"type": "text", "text": f"{caption}:" if caption else "image:"})
            parts.append({"type": "image_url", "image_url": {"url": _png_data_url(_as_rgb_uint8(image, caption))}})
        messages.append({"role": "user", "content": parts})
        return messages

    def _where(self) -> str:
        return f"endpoint {self.base_url} (model {self.model})"

    def _sleep_for(self, attempt: int, exc: Exception | None) -> float:
        delay = self.backoff * (2**attempt)
        response = getattr(exc, "response", None)
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after", ""))
            except (TypeError, ValueError):
                retry_after = 0.0
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff)

    # -- the call

    def complete(self, prompt: Prompt) -> str:
        messages = self.build_messages(prompt)
        openai = self._openai
        attempts = self.max_retries + 1
        last: Exception | None = None
        last_kind = ""
        for attempt in range(attempts):
            if attempt:
                delay = self._sleep_for(attempt - 1, last)
                log.warning(
                    "VLM request to %s failed (%s); retry %d/%d in %.2fs",
                    self._where(), last_kind, attempt, self.max_retries, delay,
                )
                time.sleep(delay)
            try:
                raw = self._create(messages)
            except openai.APITimeoutError as e:
                last, last_kind = e, f"timed out after {self.timeout:g}s"
                continue
            except openai.APIConnectionError as e:
                last, last_kind = e, f"connection error: {e.__cause__ or e}"
                continue
            except openai.APIStatusError as e:
                if e.status_code in _RETRY_STATUS or e.status_code >= 500:
                    last, last_kind = e, f"HTTP {e.status_code}: {_short(e.message)}"
                    continue
                raise self._status_error(e) from e
            except openai.OpenAIError as e:
                raise BackendError(f"{self._where()}: request failed: {e}") from e
            return self._parse(raw)

        assert last is not None
        n = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if isinstance(last, openai.APITimeoutError):
            msg = (
                f"{self._where()}: request timed out after {self.timeout:g}s, {n} made. "
                "Check that the server is up and not overloaded, or raise the timeout "
                "(large local models can need several minutes for the first answer)."
            )
        elif isinstance(last, openai.APIConnectionError):
            msg = (
                f"{self._where()}: could not connect ({last_kind}), {n} made. "
                "Check that the server is running and that the base URL (OPENAI_BASE_URL) is right, "
                "including the /v1 suffix (e.g. http://localhost:11434/v1 for Ollama, "
                "http://localhost:8000/v1 for vLLM)."
            )
        elif isinstance(last, openai.APIStatusError) and last.status_code == 429:
            msg = (
                f"{self._where()}: rate limited (HTTP 429), {n} made: {_short(last.message)}. "
                "Wait and re-run, check your quota/billing, or allow more retries."
            )
        else:
            msg = (
                f"{self._where()}: server error ({last_kind}), {n} made. "
                "The server may be down or overloaded; check its logs and re-run later."
            )
        raise BackendError(msg) from last

    def _create(self, messages: list[dict]):
        kwargs = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            self._token_param: self.max_tokens,
        }
        try:
            return self._client.chat.completions.with_raw_response.create(**kwargs)
        except self._openai.BadRequestError as e:
            text = f"{e.message} {e.body}"
            if self._token_param == "max_tokens" and "max_completion_tokens" in text:
                self._token_param = "max_completion_tokens"
                kwargs.pop("max_tokens")
                kwargs["max_completion_tokens"] = self.max_tokens
                return self._client.chat.completions.with_raw_response.create(**kwargs)
            raise

    def _status_error(self, e) -> BackendError:
        code = e.status_code
        detail = _short(e.message)
        if code in (401, 403):
            hint = (
                "The API key was rejected: check OPENAI_API_KEY (a placeholder key was sent because none was set)"
                if self._key_is_placeholder
                else "The API key was rejected: check OPENAI_API_KEY and that it is valid for this endpoint"
            )
        elif code == 404:
            hint = (
                "Check that the model name (VLMCAR_MODEL) is served by this endpoint and the base URL "
                "(OPENAI_BASE_URL) points at the OpenAI-compatible API root, usually ending in /v1"
            )
        elif code == 400:
            hint = (
                "The endpoint rejected the request: check that the model accepts image inputs "
                "(a vision-language model) and that max_tokens / temperature are allowed for it"
            )
        else:
            hint = "Check the endpoint's documentation for this error"
        return BackendError(f"{self._where()}: HTTP {code}: {detail.rstrip('.')}. {hint}.")

    def _parse(self, raw) -> str:
        body = raw.text
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise BackendError(
                f"{self._where()}: the answer is not valid JSON ({e}); body starts with {_short(body, 200)!r}. "
                "Check that the base URL points at an OpenAI-compatible chat-completions API (usually ending in /v1), "
                "not a web page or a proxy error page."
            ) from e
        if not isinstance(data, dict):
            raise BackendError(f"{self._where()}: unexpected answer (not a JSON object): {_short(body, 200)!r}")
        if data.get("error"):
            raise BackendError(f"{self._where()}: the endpoint returned an error: {_short(str(data['error']))}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(
                f"{self._where()}: the answer has no 'choices': {_short(body, 200)!r}. "
                "Check that the endpoint speaks the OpenAI chat-completions format."
            )
        choice = choices[0]
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            refusal = message.get("refusal") if isinstance(message, dict) else None
            if refusal:
                raise BackendError(f"{self._where()}: the model refused: {_short(str(refusal))}")
            reason = choice.get("finish_reason")
            raise BackendError(
                f"{self._where()}: empty answer (finish_reason={reason!r}). "
                + (
                    "The token budget ran out; raise max_tokens (reasoning models spend tokens on thinking)."
                    if reason == "length"
                    else "Check that the model supports image inputs and re-run."
                )
            )
        if choice.get("finish_reason") == "length":
            log.warning("VLM answer from %s was cut off at max_tokens=%d", self._where(), self.max_tokens)
        return _normalise_newlines(content)


def _short(text: Any, n: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 3] + "..."


# --------------------------------------------------------------------------- hf



class HFBackend:
    """A local transformers image-text-to-text model (hub id or local folder)."""

    name = "hf"

    def __init__(
        self,
        model: str = "",
        *,
        device: str = "auto",
        temperature: float = 0.2,
        max_tokens: int = 4096,
    ):
        model = model or os.environ.get("VLMCAR_MODEL", "")
        if not model:
            raise BackendError(
                "--vlm hf needs a model: a hub id of an image-text-to-text model "
                "(e.g. HuggingFaceTB/SmolVLM-Instruct, Qwen/Qwen2.5-VL-3B-Instruct) or a local folder, "
                "or set VLMCAR_MODEL."
            )
        self.model = str(model)
        self.device_request = device or "auto"
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self._processor = None
        self._model = None
        self._device = None
        self._lock = threading.Lock()

    def settings(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def __repr__(self) -> str:
        return f"HFBackend(model={self.model!r}, device={self.device_request!r})"

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        src = self.model
        expanded = os.path.expanduser(src)
        if looks_like_path(src) or os.path.isdir(expanded):
            if not os.path.isdir(expanded):
                raise BackendError(
                    f"--vlm hf: the model folder {src!r} does not exist. Pass an existing local folder "
                    "(with config.json and the processor files) or a Hugging Face hub id."
                )
            src = expanded
        device = resolve_device(self.device_request, BackendError)
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        t0 = time.perf_counter()
        try:
            processor = AutoProcessor.from_pretrained(src)
        except Exception as e:
            raise BackendError(self._load_hint(f"could not load the processor of {self.model!r}", e)) from e
        try:
            model = AutoModelForImageTextToText.from_pretrained(src, dtype=dtype)
        except Exception as e:
            raise BackendError(self._load_hint(f"could not load {self.model!r} as an image-text-to-text model", e)) from e
        if getattr(processor, "chat_template", None) is None:
            raise BackendError(
                f"--vlm hf: {self.model!r} has no chat template in its processor; use an instruction-tuned VLM "
                "(its processor must define chat_template)."
            )
        model.to(device)
        model.eval()
        self._processor, self._model, self._device = processor, model, device
        log.info("loaded %s on %s (%s) in %.1fs", self.model, device, dtype, time.perf_counter() - t0)

    def _load_hint(self, what: str, e: Exception) -> str:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
            "TRANSFORMERS_OFFLINE", ""
        ) not in ("", "0")
        return (
            f"--vlm hf: {what}: {type(e).__name__}: {_short(e).rstrip('.')}. "
            "Check the hub id or local folder; without network access download it first "
            f"(`hf download {self.model}`) or pass a local folder"
            + (" (HF_HUB_OFFLINE is set, so nothing is downloaded)" if offline else "")
            + ". Models that need trust_remote_code are not supported."
        )

    @staticmethod
    def build_messages(prompt: Prompt, *, merge_system: bool = False) -> list[dict]:
        from PIL import Image

        user: list[dict] = []
        if prompt.system and merge_system:
            user.append({"type": "text", "text": prompt.system + "\n\n"})
        user.append({"type": "text", "text": prompt.text})
        for caption, image in prompt.images:
            user.append({"type": "text", "text": f"\n{caption}:" if caption else "\nimage:"})
            user.append({"type": "image", "image": Image.fromarray(_as_rgb_uint8(image, caption), mode="RGB")})
        messages: list[dict] = []
        if prompt.system and not merge_system:
            messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
        messages.append({"role": "user", "content": user})
        return messages

    def _inputs(self, prompt: Prompt):
        kw = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        try:
            return self._processor.apply_chat_template(self.build_messages(prompt), **kw)
        except Exception as first:
            if not prompt.system:
                raise BackendError(f"--vlm hf: {self.model!r}: applying the chat template failed: {first}") from first
            # Some chat templates reject a system turn: fold it into the user turn.
            try:
                return self._processor.apply_chat_template(self.build_messages(prompt, merge_system=True), **kw)
            except Exception as e:
                raise BackendError(f"--vlm hf: {self.model!r}: applying the chat template failed: {e}") from e

    def complete(self, prompt: Prompt) -> str:
        import torch

        with self._lock:
            self._load()
            inputs = self._inputs(prompt)
            inputs = inputs.to(device=self._device, dtype=self._model.dtype)
            gen: dict[str, Any] = {"max_new_tokens": self.max_tokens}
            if self.temperature > 0:
                gen.update(do_sample=True, temperature=self.temperature)
            else:
                gen.update(do_sample=False)
            try:
                with torch.inference_mode():
                    out = self._model.generate(**inputs, **gen)
            except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
                raise BackendError(
                    f"--vlm hf: out of GPU memory running {self.model!r}: use a smaller model, "
                    "smaller frames, or device 'cpu'."
                ) from e
            new_tokens = out[0, inputs["input_ids"].shape[1]:]
            decoder = getattr(self._processor, "tokenizer", None) or self._processor
            text = decoder.decode(new_tokens, skip_special_tokens=True)
        return _normalise_newlines(text)


# --------------------------------------------------------------------------- manual


class ManualBackend:
    """Copy-paste workflow: write the prompt to disk, read the answer the user saved."""

    name = "manual"
    model = ""

    def __init__(self, manual_dir: str | os.PathLike = ".vlmcar/manual"):
        self.manual_dir = Path(manual_dir)
        #: replies an earlier cache entry already used (set by `synthesize --force`): such an answer.md is moved
        #: aside and a new reply is asked for, instead of replaying the old one as a "new" synthesis
        self.used_answers: set[str] = set()

    def settings(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"ManualBackend(manual_dir={str(self.manual_dir)!r})"

    def folder_for(self, prompt: Prompt) -> Path:
        return self.manual_dir / prompt_hash(prompt)

    def write_prompt(self, prompt: Prompt) -> Path:
        """Write prompt.md and the PNGs into the prompt's folder; return the folder."""
        folder = self.folder_for(prompt)
        folder.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        if prompt.system:
            lines += ["## System", "", prompt.system.rstrip("\n"), "", "## Prompt", ""]
        lines += [prompt.text.rstrip("\n"), ""]
        if prompt.images:
            lines += ["## Images", "", "Attach these images to the chat, in this order:", ""]
        for i, (caption, image) in enumerate(prompt.images, 1):
            fname = f"{i:02d}-{_slug(caption, 'image')}.png"
            _write_if_changed(folder / fname, image_to_png(image))
            label = caption or f"image {i}"
            lines += [f"**{label}** (`{fname}`)", "", f"![{label}]({fname})", ""]
        _write_if_changed(folder / "prompt.md", "\n".join(lines).encode("utf-8"))
        return folder

    def complete(self, prompt: Prompt) -> str:
        folder = self.write_prompt(prompt)
        answer = folder / "answer.md"
        if answer.is_file():
            text = _normalise_newlines(answer.read_text(encoding="utf-8-sig", errors="replace"))
            if text.strip() and text not in self.used_answers:
                return text
            if text.strip():
                kept, n = folder / "answer.used.md", 1
                while kept.exists():
                    n += 1
                    kept = folder / f"answer.used-{n}.md"
                os.replace(answer, kept)
                problem = (f"This prompt repeats one already answered: {answer} held a reply that an earlier round "
                           f"(or, with --force, the earlier cache entry) already used; it was moved to {kept.name}. "
                           "Ask the VLM again for a different answer.")
            else:
                problem = f"{answer} is empty."
        else:
            problem = "No answer yet for this prompt."
        raise ManualAnswerNeeded(
            f"{problem} The prompt is in {folder}{os.sep}\n"
            f"  1. Open {folder / 'prompt.md'} and paste its text, with the PNG images from that folder, "
            "into a VLM chat (ChatGPT, Gemini, Claude, ...).\n"
            f"  2. Save the chat's whole reply as {answer}\n"
            "  3. Re-run the same command.",
            folder,
        )


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- cache


class CacheOnlyBackend:
    """Replay only: the caller serves cached answers; this backend never calls a model."""

    name = "cache"
    model = ""

    def settings(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return "CacheOnlyBackend()"

    def complete(self, prompt: Prompt) -> str:
        raise BackendError(
            f"--vlm cache never calls a model; no cached answer for this prompt (hash {prompt_hash(prompt)}). "
            "Run the generate stage once with --vlm openai, hf or manual to fill the cache, "
            "or point it at the cache directory that holds the answer."
        )


# --------------------------------------------------------------------------- factory


def make_backend(
    name: str,
    *,
    model: str = "",
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
    max_retries: int = 4,
    temperature: float = 0.2,
    max_tokens: int = 4096,
    device: str = "auto",
    manual_dir: str | os.PathLike = ".vlmcar/manual",
    backoff: float = 0.5,
) -> Backend:
    """Build a backend by name: "openai", "hf", "manual" or "cache"."""
    key = (name or "").strip().lower()
    if key == "openai":
        return OpenAIBackend(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            temperature=temperature,
            max_tokens=max_tokens,
            backoff=backoff,
        )
    if key == "hf":
        return HFBackend(model, device=device, temperature=temperature, max_tokens=max_tokens)
    if key == "manual":
        return ManualBackend(manual_dir)
    if key == "cache":
        return CacheOnlyBackend()
    raise ValueError(f"unknown VLM backend {name!r}; valid names: {', '.join(BACKEND_NAMES)}")
