"""A tiny random CLIP checkpoint saved locally, so tests exercise the real CLIP code path offline.

Only the weights are fake: the config, tokenizer (byte-level BPE with a small vocabulary built
here) and image processor are the real transformers classes, saved with save_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CLIP_DIM = 32


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """Import into a test module to use: one tiny CLIP checkpoint per test session."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    words = ["dress", "summer", "wedding", "boots", "black", "leather", "red", "shoes"]
    merges: list[tuple[str, str]] = []
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    for word in words:
        # Merge each word left to right into one token so common words are single ids.
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + "</w>" if i == len(word) - 1 else ch
            merges.append((current, right))
            current = current + right
            vocab_tokens.append(current)
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))
    tokenizer.save_pretrained(directory)

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    image_processor.save_pretrained(directory)

    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=TINY_CLIP_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    return directory


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()
