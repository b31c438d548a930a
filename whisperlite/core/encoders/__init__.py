"""Encoder backends, one module per backend (clip-as-service style).

    enc = load_encoder("minilm")            # offline default, 384-d text
    enc = load_encoder("clip", "/models/clip-vit-base-patch32")
    vectors = enc.encode_texts(["a light dress for a summer wedding"])
"""

from __future__ import annotations

from whisperlite.core.devices import torch_device
from whisperlite.core.encoders.base import Encoder

BACKENDS = ("minilm", "clip")
DEFAULT_BACKEND = "minilm"

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Encoder", "load_encoder"]


def load_encoder(backend: str = DEFAULT_BACKEND, model: str | None = None, device: str = "auto") -> Encoder:
    """Load an encoder backend.

    backend: "minilm" (bundled all-MiniLM-L6-v2 unless `model` names another BERT-style
    sentence model) or "clip" (`model` required). `model` is a local directory (never reaches a
    hub) or a hub name (the local Hugging Face cache first; the hub only if missing there and
    HF_HUB_OFFLINE is not set). device: "auto" (cuda:0 with fp16 when present, else cpu fp32),
    "cpu", "cuda" or "cuda:N".
    """
    resolved = torch_device(device)
    if backend == "minilm":
        from whisperlite.core.encoders.minilm import MiniLMEncoder

        return MiniLMEncoder(model, resolved)
    if backend == "clip":
        from whisperlite.core.encoders.clip import ClipEncoder

        if not model:
            raise ValueError("model: the clip backend needs a local path or hub name, e.g. openai/clip-vit-base-patch32")
        return ClipEncoder(model, resolved)
    raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
