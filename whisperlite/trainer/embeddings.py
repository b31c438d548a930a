"""Frozen encoder embeddings, computed once and cached on disk.

Cache key = encoder name + SHA-256 of the exact strings embedded (for items: the
`item_text(title, text)` strings the catalog also embeds), so a changed dataset or a different
encoder never reads stale vectors, and training epochs never run the encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from whisperlite.core.encoders import DEFAULT_BACKEND, Encoder, load_encoder
from whisperlite.core.item_text import item_text

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("WHISPERLITE_CACHE_DIR", Path.home() / ".cache" / "whisperlite")) / "embeddings"


def texts_hash(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


class EmbeddingCache:
    """Embeds texts through one encoder, reading and writing `<cache_dir>/<encoder>/<kind>-<hash>.npy`."""

    def __init__(
        self,
        backend: str = DEFAULT_BACKEND,
        model: str | None = None,
        device: str = "auto",
        cache_dir: str | Path | None = None,
        batch_size: int = 128,
        encoder: Encoder | None = None,
    ):
        self._encoder = encoder or load_encoder(backend, model, device)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.batch_size = batch_size

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    @property
    def encoder_name(self) -> str:
        return self._encoder.name

    @property
    def dimension(self) -> int:
        return self._encoder.dimension

    def path_for(self, kind: str, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.encoder_name)
        # fp16 (GPU) vectors differ slightly from fp32 (CPU) ones: keep them apart so a run's numbers
        # do not depend on which machine filled the cache first.
        if self._encoder.dtype != torch.float32:
            slug += f"-{str(self._encoder.dtype).removeprefix('torch.')}"
        return self.cache_dir / slug / f"{kind}-{key}.npy"

    def embed(self, texts: list[str], kind: str) -> np.ndarray:
        """(len(texts), d) float32 unit vectors; each distinct string is embedded once."""
        positions: dict[str, int] = {}
        inverse = np.fromiter((positions.setdefault(t, len(positions)) for t in texts), dtype=np.int64, count=len(texts))
        unique_list = list(positions)
        path = self.path_for(kind, texts_hash(unique_list))
        vectors = self._read(path, len(unique_list))
        if vectors is None:
            log.info("embedding %d distinct %s texts with %s", len(unique_list), kind, self.encoder_name)
            vectors = self._encoder.encode_texts(unique_list, batch_size=self.batch_size, progress=True)
            self._write(path, vectors, len(unique_list))
        else:
            log.info("embedding cache hit: %s", path)
        return vectors[inverse]

    def items(self, items) -> np.ndarray:
        """Item vectors, row i for items.iloc[i], built from the same string the catalog embeds."""
        texts = [item_text(title, text) for title, text in zip(items["title"], items["text"])]
        return self.embed(texts, "items")

    def requests(self, requests: list[str]) -> np.ndarray:
        return self.embed(list(requests), "requests")

    def _read(self, path: Path, expected_rows: int) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            vectors = np.load(path)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
            return None
        if vectors.shape != (expected_rows, self.dimension):
            log.warning("ignoring cache file %s of shape %s", path, vectors.shape)
            return None
        return vectors

    def _write(self, path: Path, vectors: np.ndarray, rows: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, vectors.astype(np.float32, copy=False))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
        meta = {"encoder": self.encoder_name, "rows": rows, "dimension": self.dimension}
        path.with_suffix(".json").write_text(json.dumps(meta) + "\n")
