"""CLIP encoder (text and image towers) through transformers' CLIPModel.

`model` is a local directory (save_pretrained layout: config, weights, tokenizer and
preprocessor config) or a hub name such as openai/clip-vit-base-patch32, looked up in the local
Hugging Face cache first; a local directory never touches a hub.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from whisperlite.core.encoders.base import Encoder, from_pretrained, to_unit_numpy


class ImageDecodeError(ValueError):
    """An image's bytes are not a decodable image; `index` is its position in the batch."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"images[{index}]: not a decodable image ({reason})")
        self.index = index


def decode_image(data: bytes, index: int = 0) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(index, str(exc) or type(exc).__name__) from exc
    return image.convert("RGB")


class ClipEncoder(Encoder):
    backend = "clip"
    supports_images = True

    def __init__(self, model: str, device: torch.device):
        super().__init__(device)
        self.name = model
        self._tokenizer = from_pretrained(AutoTokenizer.from_pretrained, model)
        # The PIL backend needs no torchvision and matches the original CLIP preprocessing.
        self._image_processor = from_pretrained(AutoImageProcessor.from_pretrained, model, backend="pil")
        self._model = from_pretrained(CLIPModel.from_pretrained, model, dtype=self.dtype)
        self._model.to(device).eval()
        self.dimension = int(self._model.config.projection_dim)
        self.max_text_tokens = int(self._model.config.text_config.max_position_embeddings)

    def _encode_text_batch(self, texts: list[str], start: int) -> np.ndarray:
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        ).to(self._device)
        return to_unit_numpy(self._model.get_text_features(**batch).pooler_output)

    def _encode_image_batch(self, images: list[bytes], start: int) -> np.ndarray:
        decoded = [decode_image(data, start + offset) for offset, data in enumerate(images)]
        pixels = self._image_processor(images=decoded, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self._device, dtype=self.dtype)
        return to_unit_numpy(self._model.get_image_features(pixel_values=pixels).pooler_output)
