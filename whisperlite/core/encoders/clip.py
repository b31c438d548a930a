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


# Decoded, an image takes about 14 bytes a pixel through preprocessing. A JPEG (camera photos: 12 to 200 MP) is
# decoded at a reduced scale of at least JPEG_DECODE_SIDE pixels a side, which its format does cheaply, so its
# limit is Pillow's own (about 179 MP). Other formats decode in full: at most MAX_IMAGE_PIXELS (48 MP, about
# 670 MB transient, one image at a time). The aspect-ratio limit stops a 1 x 60000 strip, a few hundred bytes,
# from becoming a 224 x 13-million-pixel image in the shortest-edge resize.
MAX_IMAGE_PIXELS = 8000 * 6000
JPEG_DECODE_SIDE = 1024
MAX_ASPECT_RATIO = 20


class ImageDecodeError(ValueError):
    """An image's bytes are not a usable image; `index` is its position in the batch."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"images[{index}]: {reason}")
        self.index = index


def decode_image(data: bytes, index: int = 0) -> Image.Image:
    """The image as RGB; its size is checked from the header, before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(index, "not a decodable image (PNG, JPEG, WebP, ...)") from exc
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS if image.format == "JPEG" else MAX_IMAGE_PIXELS
    if width < 1 or height < 1 or width * height > limit or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageDecodeError(index, f"{width} x {height} pixels; at most {limit:,} pixels and an aspect ratio of {MAX_ASPECT_RATIO}:1")
    if image.format == "JPEG":
        image.draft("RGB", (JPEG_DECODE_SIDE, JPEG_DECODE_SIDE))  # a scale whose sides stay >= 1024: still far above 224
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(index, f"not a decodable image ({type(exc).__name__}: truncated or corrupt data)") from exc
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
        # One image decoded at a time: a batch holds only the preprocessed tensors (3 x 224 x 224 each), not 64 photos.
        pixels = torch.cat([
            self._image_processor(images=[decode_image(data, start + offset)], return_tensors="pt")["pixel_values"]
            for offset, data in enumerate(images)
        ])  # fmt: skip
        pixels = pixels.to(self._device, dtype=self.dtype)
        return to_unit_numpy(self._model.get_image_features(pixel_values=pixels).pooler_output)
