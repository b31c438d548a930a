"""What every encoder backend shares: device choice, batching with progress, normalization."""

from __future__ import annotations

import abc
import copy
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

from whisperlite.core.progress import Progress

T = TypeVar("T")


def dtype_for(device: torch.device) -> torch.dtype:
    # fp16 halves GPU memory and roughly doubles throughput; on CPU fp16 kernels are slow or missing.
    return torch.float16 if device.type == "cuda" else torch.float32


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def from_pretrained(loader: Callable[..., T], model: str, **kwargs) -> T:
    """Load from a local directory without touching a hub; a hub name from the local cache first.

    Only a hub name that is missing from the cache goes to the network, and not even then when
    HF_HUB_OFFLINE=1 (transformers then raises an error naming the model).
    """
    if not sys.stderr.isatty():  # transformers draws its "Loading weights" bar into logs too
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return loader(path, local_files_only=True, **kwargs)
    if _looks_like_path(model):
        raise FileNotFoundError(f"model: directory {model!r} does not exist")
    try:
        return loader(model, local_files_only=True, **kwargs)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise
        return loader(model, **kwargs)


def to_unit_numpy(vectors: torch.Tensor) -> np.ndarray:
    """Normalize in fp32 (fp16 norms lose precision) and return a float32 numpy array."""
    vectors = torch.nn.functional.normalize(vectors.float(), p=2, dim=1)
    return vectors.cpu().numpy().astype(np.float32, copy=False)


class Encoder(abc.ABC):
    """Embeds texts (and, for some backends, images) into L2-normalized float32 vectors."""

    backend: str
    name: str
    dimension: int
    supports_images: bool = False
    max_text_tokens: int  # longer texts are truncated to this many tokens

    def __init__(self, device: torch.device):
        self._device = device

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def dtype(self) -> torch.dtype:
        return dtype_for(self._device)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed texts; returns float32 (len(texts), dimension), each row of unit length."""
        # Batched shortest first, as sentence-transformers does: a batch is padded to its longest text, so texts of
        # like length waste less. 768 yelp reviews in batches of 128: 28-32 s against 35-40 s in their own order;
        # the vectors differ by float rounding (9e-8 at most).
        texts = list(texts)
        order = np.argsort([len(text) for text in texts], kind="stable")
        vectors = self._batched([texts[i] for i in order], batch_size, progress, "texts", self._encode_text_batch)
        in_order = np.empty_like(vectors)
        in_order[order] = vectors
        return in_order

    def encode_images(self, images: Sequence[bytes], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embed encoded images (PNG, JPEG...); only backends with supports_images accept them."""
        if not self.supports_images:
            raise NotImplementedError(f"the {self.backend} backend embeds text only")
        return self._batched(list(images), batch_size, progress, "images", self._encode_image_batch)

    def _batched(
        self,
        inputs: list[T],
        batch_size: int,
        progress: bool,
        unit: str,
        encode_batch: Callable[[list[T], int], np.ndarray],
    ) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if not inputs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parts = []
        with Progress(len(inputs), f"embedding {unit}", unit.rstrip("s"), enabled=progress) as bar:
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size]
                with torch.inference_mode():
                    parts.append(encode_batch(chunk, start))
                bar.update(len(chunk))
        return np.concatenate(parts, axis=0)

    def count_text_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes in the model (after truncation to the model's limit): its cost in a batch."""
        encoded = self._token_counter(list(texts), truncation=True, max_length=self.max_text_tokens)["input_ids"]
        return [len(ids) for ids in encoded]

    @functools.cached_property
    def _token_counter(self):
        # A fast tokenizer switches its padding settings in place on each call, so the model thread
        # (padding) and a thread counting tokens (none) must not share one.
        return copy.deepcopy(self._tokenizer)

    @abc.abstractmethod
    def _encode_text_batch(self, texts: list[str], start: int) -> np.ndarray:
        """Embed one batch; `start` is the batch's offset in the caller's list (for error messages)."""

    def _encode_image_batch(self, images: list[bytes], start: int) -> np.ndarray:
        raise NotImplementedError(f"the {self.backend} backend embeds text only")
