"""The sequence side of a model: SASRec (Kang & McAuley 2018) over a user's item sequence, fused late
with the personalized query's cosine.

`trainer/sequential.py` trains `SASRecNetwork`; a model whose validation preferred the fusion ships a
`SequenceModel`, and the ranker and `whisperlite evaluate` score through it, so both compute the same
scores. The fused score of item v for a request is

    w * z(cos(p, v)) + (1 - w) * z(h . e_v)

with p the personalized query, h SASRec's state after the user's newest item, e_v the item's row of
SASRec's table and z a standardization over the training catalog, per request. Those means and spreads
are exact without scanning the catalog: for the cosine, mean p.m and variance p'Cp from the catalog's
mean item vector m and covariance C (stored with the model); for SASRec, the same from its own item
table. So the ranker can score 50 candidates as if it had standardized over every item.

The text weight w is chosen on validation from 0.5 up (1.0 = no sequence model shipped): the ranker's
candidates come from the catalog's search by p, so the text side must dominate for the fused top items
to be among them (candidate recall is measured in docs/model.md). An item that SASRec never saw (added
to the catalog after training) gets SASRec's catalog-mean logit: z = 0, neither pushed nor held back.

Sequence details that decide whether it works: sequences are padded on the LEFT, so the last position
is always the newest item; positions are embedded as the distance from the newest item; the mask lets
position i see only real positions j <= i (a padding position sees itself only, so no row is all
masked); item index k of the split is embedding row k + 1 (row 0 is padding).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEQUENCE_WEIGHTS = "sequence.pt"
SEQUENCE_ITEM_IDS = "sequence_item_ids.json"
# Each user's last max_length train items as SASRec rows, CSR over the model's user rows.
SEQUENCE_OFFSETS = "sequence_offsets.npy"
SEQUENCE_ROWS = "sequence_rows.npy"
# Each user's SASRec state after their stored sequence (n_users, d_s), NaN rows for none: a known user's
# request without recent items reads it instead of running the network.
SEQUENCE_STATES = "sequence_states.npy"
CATALOG_MOMENTS = "catalog_moments.npz"

# Candidate text weights: the text side must dominate (see the module docstring).
TEXT_WEIGHTS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Candidate counts a model may ask the ranker to search for fused requests: training keeps the smallest
# whose cosine top holds CANDIDATE_RECALL of the fused top 10 on validation.
CANDIDATE_COUNTS = (50, 100, 200, 400, 800)
CANDIDATE_RECALL = 0.995


@dataclass
class SequenceArchitecture:
    dimension: int = 64
    blocks: int = 2
    heads: int = 1
    max_length: int = 50
    dropout: float = 0.2

    def architecture(self) -> SequenceArchitecture:
        """The architecture alone (a training config extends it): what a saved model rebuilds from."""
        return SequenceArchitecture(**{f.name: getattr(self, f.name) for f in fields(SequenceArchitecture)})


class SASRecNetwork(nn.Module):
    def __init__(self, n_items: int, architecture: SequenceArchitecture):
        super().__init__()
        d = architecture.dimension
        self.n_items = n_items
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(architecture.max_length, d)  # index = distance from the newest item
        self.dropout = nn.Dropout(architecture.dropout)
        layer = nn.TransformerEncoderLayer(d, architecture.heads, dim_feedforward=d, dropout=architecture.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, architecture.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = architecture.heads
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

    def last_states(self, sequences: np.ndarray) -> torch.Tensor:
        """(B, L) left-padded item rows -> (B, d) states after each newest item, read over the shortest
        width that holds every sequence (the caller chooses train or eval mode)."""
        used = sequences > 0
        width = int(used.any(0).nonzero()[0].min()) if used.any() else sequences.shape[1] - 1
        device = self.items.weight.device
        return self(torch.from_numpy(np.ascontiguousarray(sequences[:, width:])).to(device))[:, -1]


def left_padded(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The last `length` items of each sequence as embedding rows (item + 1), left-padded with 0."""
    return padded_rows([np.asarray(items[-length:], dtype=np.int64) + 1 for items in sequences], length)


def padded_rows(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The last `length` embedding rows of each sequence, left-padded with 0."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, rows in enumerate(sequences):
        tail = np.asarray(rows[-length:], dtype=np.int64)
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out


def csr(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user arrays as CSR: (n + 1,) int64 offsets and the concatenated int64 values."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate(sequences).astype(np.int64) if offsets[-1] else np.zeros(0, np.int64)
    return offsets, values


def check_csr(name: str, offsets: np.ndarray, values: np.ndarray, n_rows: int, n_targets: int, first_target: int = 0) -> None:
    """ValueError unless `offsets` split `values` into `n_rows` rows and every value is a row of a table of
    `n_targets` (from `first_target`): a stored file that breaks this would fail or mislead requests later."""
    if offsets.ndim != 1 or len(offsets) != n_rows + 1:
        raise ValueError(f"{name}: expected {n_rows + 1} offsets, got shape {offsets.shape}")
    if len(offsets) and (offsets[0] != 0 or offsets[-1] != len(values)):
        raise ValueError(f"{name}: offsets must run from 0 to {len(values)} (the values), got {offsets[0]} to {offsets[-1]}")
    if np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name}: offsets must not decrease")
    if len(values) and (values.min() < first_target or values.max() >= n_targets):
        raise ValueError(f"{name}: values must lie in [{first_target}, {n_targets}), got {values.min()} to {values.max()}")


def check_finite(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or inf (row {int(np.argwhere(~np.isfinite(array))[0][0])})")


def load_finite_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict whose every tensor is finite. A smoke scoring reads only some weights on some paths (a NaN in
    the sequence part's weights changed only requests with recent items, and went live): every weight is checked."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path.name}: {name} contains NaN or inf")
    return state


def moments(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) covariance of the rows, in float64: z-scores of dot products with them are exact."""
    x = np.asarray(vectors, dtype=np.float64)
    mean = x.mean(axis=0)
    centered = x - mean
    return mean, centered.T @ centered / max(len(x), 1)


def _standardize(values: np.ndarray, direction: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """(B, n) dot products of (B, d) directions with items -> float32 z-scores over the items the moments
    describe (each request's mean and spread computed in float64, as the moments are stored)."""
    direction = np.asarray(direction, dtype=np.float64)
    centre = direction @ mean
    # p'Cp per row as a matrix product: einsum's three-operand form does not use BLAS (0.14 ms a request, 9x this).
    spread = np.sqrt(np.maximum(((direction @ covariance) * direction).sum(axis=1), 1e-24))
    return ((np.asarray(values, dtype=np.float32) - centre[:, None].astype(np.float32)) / spread[:, None].astype(np.float32))


class SequenceModel:
    """SASRec's network, item table and users' sequences, the fusion weight and the catalog's moments."""

    def __init__(self, network: SASRecNetwork, architecture: SequenceArchitecture, item_ids: list[str],
                 offsets: np.ndarray, rows: np.ndarray, text_weight: float,
                 catalog_mean: np.ndarray, catalog_covariance: np.ndarray,
                 user_states: np.ndarray | None = None, candidates: int = CANDIDATE_COUNTS[-1]):
        if not 0.0 <= text_weight <= 1.0:
            raise ValueError(f"text_weight: must be in [0, 1], got {text_weight}")
        if network.items.num_embeddings != len(item_ids) + 1:
            raise ValueError(f"item_ids: the network has {network.items.num_embeddings - 1} items, got {len(item_ids)} ids")
        self.network = network.eval()
        self.architecture = architecture
        self.item_ids = list(item_ids)
        self._row_of = {item_id: k + 1 for k, item_id in enumerate(self.item_ids)}
        self._offsets, self._rows = offsets, rows
        self.text_weight = float(text_weight)
        self.candidates = int(candidates)  # how many the ranker searches for a fused request
        self._catalog = (np.asarray(catalog_mean, np.float64), np.asarray(catalog_covariance, np.float64))
        # The table's moments, with a mean row appended: an item SASRec never saw scores the mean logit.
        table = self.network.items.weight[1:].detach().cpu().numpy().astype(np.float64)
        self._table_moments = moments(table)
        self._table = np.vstack([self._table_moments[0], table]).astype(np.float32)  # row 0 = the mean
        if user_states is None:  # built from training: computed once here, stored with the model
            user_states = self._stored_sequence_states()
        if user_states.shape != (self.n_users, architecture.dimension):
            raise ValueError(f"user_states: expected shape {(self.n_users, architecture.dimension)}, got {user_states.shape}")
        check_csr("sequences", offsets, rows, self.n_users, len(self.item_ids) + 1, first_target=1)
        check_finite("user_states", user_states)
        self._user_states = user_states

    @classmethod
    def from_training(cls, network: SASRecNetwork, architecture: SequenceArchitecture, item_ids: list[str],
                      sequences: list[np.ndarray], text_weight: float, item_vectors: np.ndarray) -> SequenceModel:
        """From per-user arrays of split item indices (time order) and the training catalog's item vectors."""
        offsets, rows = csr([np.asarray(s[-architecture.max_length:], dtype=np.int64) + 1 for s in sequences])
        network = network.cpu().eval()
        return cls(network, architecture, item_ids, offsets, rows.astype(np.int32), text_weight, *moments(item_vectors))

    def _stored_sequence_states(self, chunk: int = 2048) -> np.ndarray:
        states = [self.states([self.sequence(r) for r in range(start, min(start + chunk, self.n_users))])
                  for start in range(0, self.n_users, chunk)]
        return np.concatenate(states) if states else np.zeros((0, self.architecture.dimension), np.float32)

    @property
    def n_users(self) -> int:
        return len(self._offsets) - 1

    def item_rows(self, item_ids) -> np.ndarray:
        """SASRec rows of item ids (0: an item it never saw)."""
        return np.fromiter((self._row_of.get(i, 0) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def sequence(self, user_row: int, recent_item_ids: list[str] = ()) -> np.ndarray:
        """A user's stored sequence (user_row -1: none) followed by the recent items SASRec knows, as rows."""
        stored = self._rows[self._offsets[user_row] : self._offsets[user_row + 1]] if user_row >= 0 else np.zeros(0, np.int32)
        recent = self.item_rows(list(recent_item_ids))
        return np.concatenate([stored.astype(np.int64), recent[recent > 0]])

    def states(self, sequences: list[np.ndarray]) -> np.ndarray:
        """(B, d) states after each sequence's newest item; a NaN row for an empty sequence (no sequence signal)."""
        out = np.full((len(sequences), self.architecture.dimension), np.nan, dtype=np.float32)
        filled = [i for i, s in enumerate(sequences) if len(s)]
        if filled:
            padded = padded_rows([sequences[i] for i in filled], self.architecture.max_length)
            with torch.inference_mode():
                out[filled] = self.network.last_states(padded).float().cpu().numpy()
        return out

    @staticmethod
    def present(state: np.ndarray) -> np.ndarray | None:
        """A state row as the request carries it: None where the user had no sequence (a NaN row)."""
        return None if np.isnan(state).any() else state

    def user_states(self, user_rows: np.ndarray) -> np.ndarray:
        """(B, d) states after the stored sequences of users at `user_rows` (-1 or no sequence: a NaN row)."""
        rows = np.asarray(user_rows, dtype=np.int64)
        out = np.array(self._user_states[np.where(rows >= 0, rows, 0)], dtype=np.float32).reshape(len(rows), -1)
        out[rows < 0] = np.nan
        return out

    def fused(self, personalized: np.ndarray, cosines: np.ndarray, states: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """(B, d) personalized queries, (B, n) their cosines with items, (B, d_s) states (no NaN) and the
        items' SASRec rows ((n,) or (B, n)) -> (B, n) fused scores."""
        text = _standardize(cosines, np.asarray(personalized, dtype=np.float32), *self._catalog)
        h = np.asarray(states, dtype=np.float32)
        rows = np.asarray(item_rows)
        if rows.ndim == 1:  # the same items for every request (a full catalog in evaluation): one matrix product
            logits = h @ self._table[rows].T
        else:
            logits = np.einsum("bd,bnd->bn", h, self._table[rows])
        sequence = _standardize(logits, h, *self._table_moments)
        return (self.text_weight * text + (1.0 - self.text_weight) * sequence).astype(np.float32)

    # ---- artifact -------------------------------------------------------------------------
    def manifest(self) -> dict:
        return {"architecture": asdict(self.architecture), "text_weight": self.text_weight, "candidates": self.candidates,
                "n_items": len(self.item_ids)}

    def save(self, directory: Path) -> None:
        torch.save(self.network.state_dict(), directory / SEQUENCE_WEIGHTS)
        (directory / SEQUENCE_ITEM_IDS).write_text(json.dumps(self.item_ids))
        np.save(directory / SEQUENCE_OFFSETS, self._offsets)
        np.save(directory / SEQUENCE_ROWS, self._rows)
        np.save(directory / SEQUENCE_STATES, np.asarray(self._user_states, dtype=np.float32))
        np.savez(directory / CATALOG_MOMENTS, mean=self._catalog[0], covariance=self._catalog[1])

    @classmethod
    def load(cls, directory: Path, manifest: dict) -> SequenceModel:
        architecture = SequenceArchitecture(**manifest["architecture"])
        item_ids = json.loads((directory / SEQUENCE_ITEM_IDS).read_text())
        network = SASRecNetwork(len(item_ids), architecture)
        network.load_state_dict(load_finite_weights(directory / SEQUENCE_WEIGHTS), strict=True)
        with np.load(directory / CATALOG_MOMENTS) as catalog:
            mean, covariance = catalog["mean"], catalog["covariance"]
        offsets, rows, states = (np.load(directory / name) for name in (SEQUENCE_OFFSETS, SEQUENCE_ROWS, SEQUENCE_STATES))
        return cls(network, architecture, item_ids, offsets, rows, float(manifest["text_weight"]), mean, covariance,
                   user_states=states, candidates=int(manifest["candidates"]))
