"""The WhisperLite personalization network and the model artifact that carries it.

One definition serves both sides: `trainer/` trains `PersonalizationNetwork`, and the ranker
(online) and `whisperlite evaluate` (offline) score through `PersonalizationModel`, so the same
code computes the same scores in both places.

Design (arXiv 2207.12033 gives the idea, not the code; choices are measured in docs/model.md):

* Encoders are frozen. Request vectors q and item vectors v come from the same text/CLIP
  encoder and are L2-normalized.
* A user's taste t lives in the ITEM space: t = normalize(normalize(h) + r_u), where h
  summarizes the user's history item vectors and r_u is the user's row in a learned embedding
  table (a residual, zero for users the table does not know or when the table is off). The
  summary h is chosen per model (`taste`): "mean" = the mean of every history item;
  "attention" = a query-aware summary of the last `taste_window` items, softmax weights over
  sharpness * cos(q, v_j) - recency_decay * log(distance_j) (distance 1 = the newest item), both
  scalars learned from zero, so training starts from the window's mean; "none" = no user signal
  at all (the `request_only` model). Recent items sent with a request join the stored history
  (most recent last); a user unknown to the table with recent items gets a taste from them alone.
* Fusion: p = normalize(a * q + b * t + MLP([q, t, q * t])), with learned scalars a, b and the
  MLP's last layer zero-initialized, so training starts from "request + taste" and learns the
  correction. p is in the item space, so the catalog's item vectors never need re-indexing.
* Scoring head: score(p, v) = exp(logit_scale) * cos(p, v) + logit_bias. It is monotone in
  cos(p, v), so an ANN search of the catalog with p returns exactly the top items of the final
  score: the ranker's candidate search loses nothing to re-scoring.
* A request with no user and no recent items goes through the same network with a zero taste
  (the "text_only" path: the request alone decides, through the learned query transform).
* Sequence (optional, chosen on validation): a model may carry a SASRec sequence model
  (core/sequence.py). For requests with a user signal the final score is then a late fusion of the
  cosine with p and SASRec's logit, each standardized over the catalog; it is no longer monotone in
  the cosine, so the ranker needs every candidate's item, and the candidate search stays by p.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from whisperlite.core.item_fields import MAX_ID_CHARS
from whisperlite.core.model_versions import MANIFEST, read_manifest, resolve_version_dir
from whisperlite.core.sequence import SequenceModel, check_csr, check_finite, csr, load_finite_weights

log = logging.getLogger("whisperlite.model")

WEIGHTS = "network.pt"
USER_TASTES = "user_tastes.npy"
USER_IDS = "user_ids.json"
USER_RESIDUALS = "user_residuals.npy"  # only when the user table was learned
# Each user's train items in time order, CSR: offsets (n_users + 1), rows into the history vectors.
HISTORY_OFFSETS = "history_offsets.npy"
HISTORY_ITEMS = "history_items.npy"
HISTORY_VECTORS = "history_vectors.npy"
# The item id of each history vector row: what the ranker leaves out of a known user's results. Older
# versions lack it and serve without leaving anything out.
HISTORY_ITEM_IDS = "history_item_ids.json"

TASTE_MEAN = "mean"
TASTE_ATTENTION = "attention"
TASTE_NONE = "none"
TASTES = (TASTE_MEAN, TASTE_ATTENTION, TASTE_NONE)
DEFAULT_TASTE_WINDOW = 32

PATH_USER = "user_embedding"
PATH_RECENT = "recent_items"
PATH_TEXT = "text_only"


def _as_tensor(values: np.ndarray) -> torch.Tensor:
    """float32 values as a tensor, shared where they may be: copied only when not C-contiguous float32 or not
    writable (a vector read from a protobuf or a read-only buffer, which torch warns about sharing)."""
    return torch.from_numpy(np.require(values, dtype=np.float32, requirements=["C", "W"]))


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1, eps=1e-12)


def taste_vector(summary: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Unit taste from (B, d) history summaries plus optional (B, d) table residuals (zero rows: none)."""
    base = l2_normalize(summary)
    return base if residual is None else l2_normalize(base + residual)


class PersonalizationNetwork(nn.Module):
    """Fuses a request vector and a user taste vector into a personalized query in item space."""

    def __init__(
        self,
        dimension: int,
        n_users: int,
        hidden: int = 512,
        dropout: float = 0.1,
        taste_weight: float = 0.5,
        logit_scale: float = 20.0,
        temperature: float = 0.05,
        learn_temperature: bool = True,
        sparse_users: bool = False,
        taste: str = TASTE_MEAN,
        taste_window: int = DEFAULT_TASTE_WINDOW,
    ):
        super().__init__()
        if taste not in TASTES:
            raise ValueError(f"taste: must be one of {', '.join(TASTES)}, got {taste!r}")
        if taste_window < 1:
            raise ValueError(f"taste_window: must be at least 1, got {taste_window}")
        self.dimension = dimension
        self.taste_mode = taste
        self.taste_window = int(taste_window)
        if taste == TASTE_ATTENTION:
            # Zero at the start: uniform weights over the window, i.e. its mean.
            self.attention_sharpness = nn.Parameter(torch.tensor(0.0))
            self.recency_decay = nn.Parameter(torch.tensor(0.0))
        # sparse_users: gradients touch only the batch's rows (SparseAdam), not the whole table.
        self.user_residuals = nn.Embedding(n_users, dimension, sparse=sparse_users)
        nn.init.zeros_(self.user_residuals.weight)
        self.fuse = nn.Sequential(
            nn.Linear(3 * dimension, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dimension),
        )
        # Zero output layer: the untrained network is exactly normalize(q + taste_weight * t).
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)
        self.query_weight = nn.Parameter(torch.tensor(1.0))
        self.taste_weight = nn.Parameter(torch.tensor(float(taste_weight)))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(0.0))
        log_temperature = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)

    def taste(self, summary: torch.Tensor, user_index: torch.Tensor | None = None) -> torch.Tensor:
        """Unit taste vectors from (B, d) history summaries plus, where user_index >= 0, the table row."""
        if user_index is None:
            return taste_vector(summary)
        known = user_index >= 0
        residual = self.user_residuals(user_index.clamp(min=0)) * known.unsqueeze(-1).to(summary.dtype)
        return taste_vector(summary, residual)

    def attend(self, query: torch.Tensor, history: torch.Tensor, distance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Query-aware summary of history windows: (B, d) unit requests, (B, L, d) item vectors, (B, L)
        distances (1 = newest) and validity -> (B, d) weighted means (zero rows where no item is valid)."""
        logits = self.attention_sharpness * torch.einsum("bd,bld->bl", query, history)
        logits = logits - self.recency_decay * torch.log(distance.clamp(min=1.0))
        # A large finite fill, not -inf: a row without any valid item gets zero weights, not NaN gradients.
        weights = torch.softmax(logits.masked_fill(~mask, -1e4), dim=1) * mask.to(logits.dtype)
        return torch.einsum("bl,bld->bd", weights, history)

    def forward(self, query: torch.Tensor, taste: torch.Tensor) -> torch.Tensor:
        """(B, d) unit requests and (B, d) unit tastes -> (B, d) unit personalized queries."""
        fused = self.fuse(torch.cat([query, taste, query * taste], dim=-1))
        return l2_normalize(self.query_weight * query + self.taste_weight * taste + fused)

    def logits(self, queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, d) personalized queries x (N, d) unit items -> (B, N) calibrated logits (BCE head)."""
        return self.calibrate(queries @ items.T)

    def calibrate(self, cosines: torch.Tensor) -> torch.Tensor:
        """Cosines of personalized queries and items -> calibrated logits: increasing, so the order stays the cosines'."""
        return self.log_logit_scale.exp() * cosines + self.logit_bias

    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()


@dataclass(frozen=True)
class PersonalizedQuery:
    vector: np.ndarray  # (d,) float32, unit length, in item space: what the catalog ANN search uses
    taste: np.ndarray | None  # (d,) float32 unit vector in item space, or None without a user signal
    path: str  # "user_embedding" | "recent_items" | "text_only"
    # (d_s,) SASRec state after the user's newest item, when the model has a sequence part and the user a sequence
    sequence_state: np.ndarray | None = None


class UserIndex:
    """A model's user ids and their rows in the taste table.

    Versions retrained on the same data have byte-identical user_ids.json files; `load` gives them
    one shared index (tens of MB for 10^5 users) instead of a copy each.
    """

    __slots__ = ("ids", "rows", "__weakref__")

    def __init__(self, user_ids: list[str]):
        self.ids = list(user_ids)
        self.rows = {uid: i for i, uid in enumerate(self.ids)}


# digest of a user_ids.json -> its index, while some loaded model still holds it
_LOADED_USER_INDEXES: "weakref.WeakValueDictionary[bytes, UserIndex]" = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class UserHistories:
    """Each user's train items in time order (CSR), with the vectors they point at."""

    offsets: np.ndarray  # (n_users + 1,) int64: user row r owns items[offsets[r]:offsets[r + 1]]
    items: np.ndarray  # (nnz,) int32 rows of `vectors`
    vectors: np.ndarray  # (n_history_items, d) float32 unit rows
    item_ids: list[str] | None = None  # the item id of each row of `vectors` (None: a version exported without them)

    @classmethod
    def from_sequences(cls, sequences: list[np.ndarray], item_vectors: np.ndarray, item_ids: list[str] | None = None) -> UserHistories:
        """From per-user arrays of item indices (time order) into `item_vectors` (and `item_ids`, row-aligned with
        them); only the used rows are kept."""
        offsets, flat = csr(sequences)
        used, items = np.unique(flat, return_inverse=True)
        vectors = np.ascontiguousarray(item_vectors[used], dtype=np.float32).reshape(-1, item_vectors.shape[1])
        return cls(offsets, items.astype(np.int32), vectors, None if item_ids is None else [str(item_ids[i]) for i in used])

    def of(self, row: int) -> np.ndarray:
        """(k, d) vectors of user row `row`'s history, oldest first."""
        return np.asarray(self.vectors[self.items[self.offsets[row] : self.offsets[row + 1]]], dtype=np.float32)

    def windows(self, rows: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """The last `window` history vectors of each row (-1 = none): (B, L, d) vectors, left-aligned and
        oldest first, and (B, L) validity; L is the longest window among the rows."""
        rows = np.asarray(rows, dtype=np.int64)
        known = rows >= 0
        safe = np.where(known, rows, 0)
        ends = np.where(known, self.offsets[safe + 1], 0)
        lengths = np.where(known, np.minimum(self.offsets[safe + 1] - self.offsets[safe], window), 0)
        width = max(int(lengths.max()) if len(lengths) else 0, 1)
        columns = np.arange(width)
        mask = columns[None, :] < lengths[:, None]
        positions = np.where(mask, ends[:, None] - lengths[:, None] + columns[None, :], 0)
        vectors = np.asarray(self.vectors[self.items[positions]], dtype=np.float32) if len(self.items) else (
            np.zeros((len(rows), width, self.vectors.shape[1]), np.float32))
        return vectors * mask[..., None], mask


def window_distances(mask: np.ndarray) -> np.ndarray:
    """(B, L) distance of each left-aligned window position from the request: 1 for the newest valid item."""
    lengths = mask.sum(axis=1, keepdims=True)
    return np.maximum(lengths - np.arange(mask.shape[1])[None, :], 1).astype(np.float32)


class PersonalizationModel:
    """A trained model artifact: network weights, exported user tastes, user histories and the manifest."""

    def __init__(
        self,
        network: PersonalizationNetwork,
        user_ids: list[str] | UserIndex,
        user_tastes: np.ndarray,
        manifest: dict,
        histories: UserHistories | None = None,
        user_residuals: np.ndarray | None = None,
        sequence: SequenceModel | None = None,
    ):
        users = user_ids if isinstance(user_ids, UserIndex) else UserIndex(user_ids)
        if user_tastes.shape != (len(users.ids), network.dimension):
            raise ValueError(f"user_tastes: expected shape {(len(users.ids), network.dimension)}, got {user_tastes.shape}")
        check_finite("user_tastes", user_tastes)
        if histories is not None:
            check_csr("histories", histories.offsets, histories.items, len(users.ids), len(histories.vectors))
            check_finite("history vectors", histories.vectors)
            check_history_item_ids(histories.item_ids, len(histories.vectors))
        if network.taste_mode == TASTE_ATTENTION and histories is None:
            raise ValueError("histories: an attention taste needs the users' histories")
        if user_residuals is not None and user_residuals.shape != user_tastes.shape:
            raise ValueError(f"user_residuals: expected shape {user_tastes.shape}, got {user_residuals.shape}")
        if sequence is not None and sequence.n_users != len(users.ids):
            raise ValueError(f"sequence: expected sequences of {len(users.ids)} users, got {sequence.n_users}")
        self.network = network.eval()
        self.manifest = manifest
        self._users = users
        self._user_tastes = user_tastes
        self._histories = histories
        self._user_residuals = user_residuals
        self.sequence = sequence

    # ---- identity -------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def encoder_name(self) -> str:
        return str(self.manifest["encoder"])

    @property
    def dimension(self) -> int:
        return int(self.network.dimension)

    @property
    def n_users(self) -> int:
        return len(self._users.ids)

    @property
    def user_ids(self) -> list[str]:
        return self._users.ids

    @property
    def taste_mode(self) -> str:
        return self.network.taste_mode

    def knows_user(self, user_id: str | None) -> bool:
        return user_id is not None and user_id in self._users.rows

    def user_row(self, user_id: str | None) -> int:
        """The user's row in the taste table, -1 when the model does not know them."""
        return -1 if user_id is None else self._users.rows.get(user_id, -1)

    def user_taste(self, user_id: str) -> np.ndarray | None:
        """The mean-taste table's row for a known user (None: unknown); attention tastes depend on the request."""
        i = self._users.rows.get(user_id)
        return None if i is None else np.array(self._user_tastes[i], dtype=np.float32)  # a copy: callers may change it

    @property
    def knows_histories(self) -> bool:
        """Whether the model can name its users' history items (`history_item_ids`)."""
        return self._histories is not None and self._histories.item_ids is not None

    def history_item_ids(self, user_id: str | None) -> frozenset[str]:
        """The item ids of a known user's stored history (their train items); empty for an unknown user or a
        version exported without history item ids."""
        row = self.user_row(user_id)
        if row < 0 or not self.knows_histories:
            return frozenset()
        histories = self._histories
        ids = histories.item_ids
        return frozenset(ids[i] for i in histories.items[histories.offsets[row] : histories.offsets[row + 1]])

    # ---- inference ------------------------------------------------------------------------
    def personalize(
        self,
        query_vector: np.ndarray,
        user_id: str | None = None,
        recent_item_vectors: np.ndarray | None = None,
        recent_item_ids: list[str] = (),
    ) -> PersonalizedQuery:
        """Personalized query for one request. A known user's recent items (most recent last) join their
        stored history; an unknown user's recent items make the taste alone; no signal: the text path.
        The sequence part reads the recent items by id (`recent_item_ids`), the taste by vector."""
        query = self._check_vectors(query_vector, "query_vector").reshape(1, -1)
        recent = None
        if recent_item_vectors is not None and len(recent_item_vectors) > 0:
            recent = self._check_vectors(recent_item_vectors, "recent_item_vectors").reshape(-1, self.dimension)
        row = self.user_row(user_id)
        state = None
        if self.sequence is not None:
            if recent_item_ids:
                state = self.sequence.states([self.sequence.sequence(row, recent_item_ids)])[0]
            else:
                state = self.sequence.user_states(np.array([row]))[0]
            state = SequenceModel.present(state)
        path = PATH_USER if row >= 0 else PATH_RECENT
        if self.taste_mode == TASTE_NONE or (row < 0 and recent is None):
            path = PATH_TEXT if state is None else path
            return PersonalizedQuery(vector=self.personalize_batch(query, None)[0], taste=None, path=path, sequence_state=state)
        if row >= 0 and (recent is None or self._histories is None):
            # A model built without histories (by hand, not by training) keeps a known user's stored taste.
            taste = self.user_tastes(query, np.array([row]))[0]
        else:
            history = self._histories.of(row) if row >= 0 else np.zeros((0, self.dimension), np.float32)
            taste = self.taste_from_items(query[0], np.concatenate([history, recent]), row)
        vector = self.personalize_batch(query, taste.reshape(1, -1))[0]
        return PersonalizedQuery(vector=vector, taste=taste, path=path, sequence_state=state)

    def personalize_many(self, queries: np.ndarray, user_ids: list[str | None]) -> list[PersonalizedQuery]:
        """`personalize` for many requests without recent items, in one network call (the ranker's micro-batches)."""
        queries = self._check_vectors(queries, "query_vector").reshape(-1, self.dimension)
        users = np.array([self.user_row(u) for u in user_ids], dtype=np.int64)
        vectors, tastes, rows = self._personalize_rows(queries, users)
        states = self.sequence_states(users)
        out = []
        for i, row in enumerate(rows):
            state = None if states is None else SequenceModel.present(states[i])
            taste = tastes[i] if row >= 0 else None
            path = PATH_USER if row >= 0 or state is not None else PATH_TEXT
            out.append(PersonalizedQuery(vector=vectors[i], taste=taste, path=path, sequence_state=state))
        return out

    def sequence_states(self, rows: np.ndarray) -> np.ndarray | None:
        """(B, d_s) SASRec states of the stored sequences of users at `rows` (NaN rows: none); None without a sequence part."""
        return None if self.sequence is None else self.sequence.user_states(np.asarray(rows, dtype=np.int64))

    def rank_scores(self, vectors: np.ndarray, cosines: np.ndarray, states: np.ndarray | None, item_rows: np.ndarray | None) -> np.ndarray:
        """(B, n) final scores from (B, d) personalized queries and their (B, n) cosines with items: the
        calibrated cosine, or, in rows with a (non-NaN) sequence state, the fused score (item_rows: the
        items' SASRec rows, `sequence.item_rows`)."""
        cosines = np.asarray(cosines, dtype=np.float32)
        if self.sequence is None or states is None:
            return self.score_cosines(cosines)
        fused = ~np.isnan(states).any(axis=1)
        scores = np.empty_like(cosines)
        if not fused.all():
            scores[~fused] = self.score_cosines(cosines[~fused])
        if fused.any():
            rows = np.asarray(item_rows)
            scores[fused] = self.sequence.fused(vectors[fused], cosines[fused], states[fused], rows if rows.ndim == 1 else rows[fused])
        return scores

    def personalize_users(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(B, d) requests of users at table rows `rows` (-1 = unknown: the text path) -> (B, d) personalized
        queries from the stored histories alone: the batch form of `personalize` without recent items."""
        return self._personalize_rows(np.asarray(queries, dtype=np.float32), np.asarray(rows, dtype=np.int64))[0]

    def _personalize_rows(self, queries: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Personalized queries, tastes (None when no row has one) and the rows that read a taste (-1: none)."""
        rows = np.full_like(rows, -1) if self.taste_mode == TASTE_NONE else rows
        tastes = self.user_tastes(queries, rows) if (rows >= 0).any() else None
        return self.personalize_batch(queries, tastes), tastes, rows

    def user_tastes(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(B, d) unit tastes of the stored histories of users at `rows` for these requests; NaN rows for -1."""
        rows = np.asarray(rows, dtype=np.int64)
        known = rows >= 0
        if self.taste_mode == TASTE_MEAN:
            tastes = np.asarray(self._user_tastes[np.where(known, rows, 0)], dtype=np.float32)
        else:
            window, mask = self._histories.windows(rows, self.network.taste_window)
            tastes = self._attention_tastes(queries, window, mask, rows)
        tastes[~known] = np.nan
        return tastes

    def taste_from_items(self, query_vector: np.ndarray, item_vectors: np.ndarray, row: int = -1) -> np.ndarray:
        """Unit taste from item vectors in time order (most recent last), plus user row `row`'s residual."""
        items = np.asarray(item_vectors, dtype=np.float32).reshape(-1, self.dimension)
        if self.taste_mode == TASTE_ATTENTION:
            window = items[-self.network.taste_window :][None]
            mask = np.ones(window.shape[:2], dtype=bool)
            return self._attention_tastes(np.asarray(query_vector, np.float32).reshape(1, -1), window, mask, np.array([row]))[0]
        mean = torch.from_numpy(items.mean(axis=0, keepdims=True))
        with torch.inference_mode():
            return taste_vector(mean, self._residuals(np.array([row])))[0].numpy()

    def _attention_tastes(self, queries: np.ndarray, window: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
        q = l2_normalize(_as_tensor(queries))
        with torch.inference_mode():
            summary = self.network.attend(
                q, torch.from_numpy(window), torch.from_numpy(window_distances(mask)), torch.from_numpy(mask)
            )
            return taste_vector(summary, self._residuals(rows)).numpy()

    def _residuals(self, rows: np.ndarray) -> torch.Tensor | None:
        if self._user_residuals is None:
            return None
        rows = np.asarray(rows, dtype=np.int64)
        residuals = np.asarray(self._user_residuals[np.where(rows >= 0, rows, 0)], dtype=np.float32)
        return torch.from_numpy(residuals * (rows >= 0)[:, None])

    def personalize_batch(self, queries: np.ndarray, tastes: np.ndarray | None) -> np.ndarray:
        """(B, d) requests and (B, d) unit tastes -> (B, d) personalized queries.

        A row of NaN in `tastes` (or `tastes=None`) means no user signal: the network then sees a
        zero taste, the text-only path, which training covers by dropping the taste of some examples.
        """
        q = l2_normalize(_as_tensor(queries))
        if tastes is None:
            t = torch.zeros_like(q)
        else:
            t = torch.from_numpy(np.array(tastes, dtype=np.float32)).reshape(q.shape)
            t = torch.nan_to_num(t, nan=0.0)
        with torch.inference_mode():
            return self.network(q, t).numpy()

    def score(self, pq: PersonalizedQuery | np.ndarray, item_vectors: np.ndarray, item_ids: list[str] | None = None) -> np.ndarray:
        """Final scores of items for one personalized query (or (B, d) queries -> (B, n): the calibrated
        cosine). A query with a sequence state scores the fusion, which needs the items' ids."""
        vector = pq.vector if isinstance(pq, PersonalizedQuery) else pq
        single = np.ndim(vector) == 1
        queries = _as_tensor(np.atleast_2d(vector))
        items = _as_tensor(item_vectors).reshape(-1, self.dimension)
        state = pq.sequence_state if isinstance(pq, PersonalizedQuery) else None
        if state is not None:
            if item_ids is None:
                raise ValueError("item_ids: a model with a sequence part scores items by id too")
            cosines = (queries @ items.T).numpy()
            return self.rank_scores(queries.numpy(), cosines, state[None], self.sequence.item_rows(item_ids))[0]
        with torch.inference_mode():
            scores = self.network.logits(queries, items).numpy()
        return scores[0] if single else scores

    def score_cosines(self, cosines: np.ndarray) -> np.ndarray:
        """Final scores from cos(p, v) already computed (the catalog's search returns them): `score`'s head alone."""
        with torch.inference_mode():
            return self.network.calibrate(torch.from_numpy(np.asarray(cosines, dtype=np.float32))).numpy()

    def _check_vectors(self, vectors: np.ndarray, field: str) -> np.ndarray:
        array = np.asarray(vectors, dtype=np.float32)
        if array.shape[-1] != self.dimension:
            raise ValueError(f"{field}: expected dimension {self.dimension}, got {array.shape[-1]}")
        if not np.isfinite(array).all():
            raise ValueError(f"{field}: contains NaN or inf")
        return array

    # ---- artifact -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # The residual table is folded into user_tastes (and kept apart only when learned), so the weights file stays small.
        state = {k: v for k, v in self.network.state_dict().items() if k != "user_residuals.weight"}
        torch.save(state, directory / WEIGHTS)
        np.save(directory / USER_TASTES, np.asarray(self._user_tastes, dtype=np.float32))
        if self._user_residuals is not None:
            np.save(directory / USER_RESIDUALS, np.asarray(self._user_residuals, dtype=np.float32))
        if self._histories is not None:
            np.save(directory / HISTORY_OFFSETS, np.asarray(self._histories.offsets, dtype=np.int64))
            np.save(directory / HISTORY_ITEMS, np.asarray(self._histories.items, dtype=np.int32))
            np.save(directory / HISTORY_VECTORS, np.asarray(self._histories.vectors, dtype=np.float32))
            if self._histories.item_ids is not None:
                (directory / HISTORY_ITEM_IDS).write_text(json.dumps(self._histories.item_ids))
        (directory / USER_IDS).write_text(json.dumps(self._users.ids))
        self.manifest.pop("sequence", None)
        if self.sequence is not None:
            self.sequence.save(directory)
            self.manifest["sequence"] = self.sequence.manifest()
        (directory / MANIFEST).write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> PersonalizationModel:
        """Load a version directory, or the newest version inside a parent directory."""
        directory = resolve_version_dir(path)
        manifest = read_manifest(directory)
        arch = manifest["config"]["network"]
        # Read into memory, not memory-mapped: a file of a loaded version that is rewritten in place (a `cp`
        # over it) would kill the process with SIGBUS at its next read, every replica sharing the volume at once.
        user_tastes = np.load(directory / USER_TASTES)
        users = _user_index(directory / USER_IDS, n_users=len(user_tastes))
        residuals = np.load(directory / USER_RESIDUALS) if (directory / USER_RESIDUALS).is_file() else None
        histories = None
        if (directory / HISTORY_OFFSETS).is_file():
            offsets, items, vectors = (np.load(directory / name) for name in (HISTORY_OFFSETS, HISTORY_ITEMS, HISTORY_VECTORS))
            histories = UserHistories(offsets, items, vectors, item_ids=_history_item_ids(directory, len(vectors)))
        if histories is None or histories.item_ids is None:
            log.warning(
                "the model names no history items: users' own history items are not left out of their results",
                extra={"model_version": manifest.get("version"), "missing": HISTORY_ITEM_IDS},
            )
        # The residual table is folded into user_tastes at export; the network keeps an empty one.
        network = PersonalizationNetwork(dimension=int(manifest["dimension"]), n_users=0, **arch)
        state = load_finite_weights(directory / WEIGHTS)
        state["user_residuals.weight"] = network.user_residuals.weight.detach()
        network.load_state_dict(state, strict=True)
        sequence = SequenceModel.load(directory, manifest["sequence"]) if "sequence" in manifest else None
        return cls(network, users, user_tastes, manifest, histories=histories, user_residuals=residuals, sequence=sequence)


# json.dumps writes a character as at most 12 bytes (a surrogate pair of \\uXXXX escapes); 4 more for quotes and ", "
MAX_USER_ID_JSON_BYTES = MAX_ID_CHARS * 12 + 4


def check_history_item_ids(item_ids: list[str] | None, n_rows: int) -> None:
    """None (a version exported without them) or a list of `n_rows` item ids, one per history vector row."""
    if item_ids is None:
        return
    if not isinstance(item_ids, list) or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_CHARS for i in item_ids):
        raise ValueError(f"{HISTORY_ITEM_IDS}: must be a JSON list of item ids, non-empty strings of at most {MAX_ID_CHARS} characters")
    if len(item_ids) != n_rows:
        raise ValueError(f"{HISTORY_ITEM_IDS}: expected {n_rows} item ids (one per row of {HISTORY_VECTORS}), got {len(item_ids)}")


def _history_item_ids(directory: Path, n_rows: int) -> list[str] | None:
    """The history rows' item ids, None for a version exported before they were (checked by the model). A file
    larger than `n_rows` ids can be is refused unread, as user_ids.json is."""
    path = directory / HISTORY_ITEM_IDS
    if not path.is_file():
        return None
    if (size := path.stat().st_size) > 2 + n_rows * MAX_USER_ID_JSON_BYTES:
        raise ValueError(f"{HISTORY_ITEM_IDS}: {size} bytes is more than {n_rows} item ids of at most {MAX_ID_CHARS} characters can take")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{HISTORY_ITEM_IDS}: not valid JSON ({error})") from None


def _user_index(path: Path, n_users: int) -> UserIndex:
    """The user-id index of `n_users` ids, shared between versions with byte-identical files. A file larger than
    `n_users` ids can be is refused before it is read: a bad one could otherwise take the process's memory."""
    size = path.stat().st_size
    if size > 2 + n_users * MAX_USER_ID_JSON_BYTES:
        raise ValueError(f"{USER_IDS}: {size} bytes is more than {n_users} user ids of at most {MAX_ID_CHARS} characters can take")
    raw = path.read_bytes()
    digest = hashlib.blake2b(raw, digest_size=16).digest()
    users = _LOADED_USER_INDEXES.get(digest)
    if users is None:
        ids = json.loads(raw)
        if not isinstance(ids, list) or not all(isinstance(uid, str) and len(uid) <= MAX_ID_CHARS for uid in ids):
            raise ValueError(f"{USER_IDS}: must be a JSON list of user ids, strings of at most {MAX_ID_CHARS} characters")
        users = _LOADED_USER_INDEXES[digest] = UserIndex(ids)
    return users


def fuse_text_and_taste(queries: np.ndarray, tastes: np.ndarray, weight: float) -> np.ndarray:
    """Rows of normalize(q + weight * taste): the `text_plus_history_mean` fusion, offline and online alike.

    `tastes` are unit vectors (or zero rows for users without history, which leaves q unchanged).
    """
    fused = np.asarray(queries, dtype=np.float32) + weight * np.asarray(tastes, dtype=np.float32)
    return fused / np.maximum(np.linalg.norm(fused, axis=-1, keepdims=True), 1e-12)


def text_plus_history_query(
    query_vector: np.ndarray, recent_item_vectors: np.ndarray | None, weight: float = 1.0
) -> PersonalizedQuery:
    """Training-free personalization (the `text_plus_history_mean` baseline), served before any model is trained.

    p = normalize(q + weight * normalize(mean of recent items)); cosine with p is the score.
    """
    query = np.asarray(query_vector, dtype=np.float32)
    if recent_item_vectors is None or len(recent_item_vectors) == 0:
        return PersonalizedQuery(vector=query, taste=None, path=PATH_TEXT)
    mean = np.asarray(recent_item_vectors, dtype=np.float32).mean(axis=0)
    taste = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return PersonalizedQuery(vector=fuse_text_and_taste(query, taste, weight), taste=taste, path=PATH_RECENT)
