"""Choosing the torch device, for the encoders and the trainer alike."""

from __future__ import annotations

import torch


def torch_device(device: str, rank: int = 0) -> torch.device:
    """Turn "auto" into a GPU when one is visible (process `rank` of a distributed run takes GPU
    rank mod count), else cpu; validate explicit choices ("cpu", "cuda", "cuda:N")."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank % torch.cuda.device_count())
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda:0")
    return resolved
