"""`sasrec`: a sequential, history-only recommender (SASRec, Kang & McAuley 2018), no text at all.

Causal self-attention over each user's item sequence predicts the next item; trained on the train
split (full softmax over the catalog), early-stopped on validation Recall@10, and scoring the full
catalog from the last position's output. Every method sees the same user evidence: the train items.

Details that decide whether it works (each has a test): sequences are padded on the LEFT, so the
last position is always the newest item; positions are embedded as the distance from the newest
item, so a short and a long sequence agree on what "newest" is; the mask lets position i see only
real positions j <= i (a padding position sees itself only, so no row is all masked); item index k
of the split is embedding row k + 1 (row 0 is padding).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from whisperlite.core.devices import torch_device
from whisperlite.core.progress import bar_disabled
from whisperlite.trainer.experiment import Experiment
from whisperlite.trainer.methods import validation_metrics

log = logging.getLogger(__name__)


@dataclass
class SASRecConfig:
    dimension: int = 64
    blocks: int = 2
    heads: int = 1
    max_length: int = 50
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 40
    patience: int = 3
    validation_cases: int = 10000
    seed: int = 0
    device: str = "auto"


class SASRecNetwork(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        d = config.dimension
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(config.max_length, d)  # index = distance from the newest item
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(d, config.heads, dim_feedforward=d, dropout=config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = config.heads
        nn.init.normal_(self.items.weight, std=d ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, L) item rows, 0 = padding on the left -> (B, L, d) hidden states (row i: after item i)."""
        length = sequences.shape[1]
        distance = torch.arange(length - 1, -1, -1, device=sequences.device)
        x = self.items(sequences) * math.sqrt(self.items.embedding_dim) + self.positions(distance)[None]
        x = self.dropout(x)
        padding = sequences == 0
        eye = torch.eye(length, dtype=torch.bool, device=sequences.device)
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=sequences.device), diagonal=1)
        blocked = future[None] | (padding[:, None, :] & ~eye[None])  # True = may not attend
        blocked = blocked.repeat_interleave(self.heads, dim=0)
        return self.norm(self.encoder(x, mask=blocked))

    def catalog_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, d) hidden states -> (N, n_items) logits, column k = split item k."""
        return hidden @ self.items.weight[1:].T


def left_padded(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The last `length` items of each sequence as embedding rows (item + 1), left-padded with 0."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, items in enumerate(sequences):
        tail = np.asarray(items[-length:], dtype=np.int64)
        if len(tail):
            out[row, length - len(tail) :] = tail + 1
    return out


def training_chunks(history: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of shape (n, length): every train sequence cut from its end into chunks of
    length + 1 items (overlapping by one), so long histories train on all their items."""
    inputs, targets = [], []
    for items in history:
        end = len(items)
        while end >= 2:
            chunk = items[max(0, end - length - 1) : end]
            inputs.append(chunk[:-1])
            targets.append(chunk[1:])
            end -= length
    if not inputs:
        return np.zeros((0, length), np.int64), np.zeros((0, length), np.int64)
    return left_padded(inputs, length), left_padded(targets, length)


class SASRec:
    """The `sasrec` method of `whisperlite evaluate`."""

    name = "sasrec"

    def __init__(self, experiment: Experiment, config: SASRecConfig | None = None, progress: bool = False):
        self.config = config = config or SASRecConfig()
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        self._device = torch_device(config.device)
        self._history = experiment.split.history
        self.network = SASRecNetwork(experiment.dataset.n_items, config).to(self._device)
        inputs, targets = training_chunks(self._history, config.max_length)
        self.history_rows: list[dict] = []
        optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)
        best = (-1.0, 0, None, {})
        for epoch in range(1, config.max_epochs + 1):
            loss = self._epoch(inputs, targets, optimizer, generator, f"sasrec epoch {epoch}", progress)
            metrics = validation_metrics(self, experiment, config.validation_cases)
            self.history_rows.append({"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}})
            log.info("sasrec epoch %d: loss %.4f, validation recall@10 %.4f", epoch, loss, metrics["recall@10"])
            if metrics["recall@10"] > best[0]:
                best = (metrics["recall@10"], epoch, copy.deepcopy(self.network.state_dict()), metrics)
            if epoch - best[1] >= config.patience:
                break
        if best[2] is not None:
            self.network.load_state_dict(best[2])
        self.network.eval()
        self.best_epoch, self.validation = best[1], best[3]
        self.seconds = time.perf_counter() - started

    def _epoch(self, inputs, targets, optimizer, generator, label: str, progress: bool) -> float:
        self.network.train()
        order = torch.randperm(len(inputs), generator=generator).numpy()
        batches = range(0, len(order), self.config.batch_size)
        total, count = 0.0, 0
        for start in tqdm(batches, desc=label, unit="batch", disable=bar_disabled(progress), leave=False):
            rows = order[start : start + self.config.batch_size]
            x, y = torch.from_numpy(inputs[rows]).to(self._device), torch.from_numpy(targets[rows]).to(self._device)
            valid = y > 0
            width = int(valid.any(0).nonzero().min()) if valid.any() else 0  # left padding common to the batch
            x, y, valid = x[:, width:], y[:, width:], valid[:, width:]
            hidden = self.network(x)[valid]
            loss = F.cross_entropy(self.network.catalog_logits(hidden), y[valid] - 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * int(valid.sum())
            count += int(valid.sum())
        return total / max(count, 1)

    def scores(self, users, queries):
        was_training = self.network.training
        self.network.eval()
        sequences = left_padded([self._history[u] for u in users], self.config.max_length)
        used = sequences > 0
        width = int(used.any(0).nonzero()[0].min()) if used.any() else self.config.max_length - 1
        with torch.inference_mode():
            hidden = self.network(torch.from_numpy(sequences[:, width:]).to(self._device))[:, -1]
            scores = self.network.catalog_logits(hidden).float().cpu().numpy()
        self.network.train(was_training)
        return scores

    def details(self) -> dict:
        return {
            "config": asdict(self.config), "best_epoch": self.best_epoch, "epochs": len(self.history_rows),
            "train_seconds": round(self.seconds, 1), "validation": self.validation, "history": self.history_rows,
        }
