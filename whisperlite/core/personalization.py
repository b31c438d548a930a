"""The WhisperLite personalization network and the model artifact that carries it.

One definition serves both sides: `trainer/` trains `PersonalizationNetwork`, and the ranker
(online) and `whisperlite evaluate` (offline) score through `PersonalizationModel`, so the same
code computes the same scores in both places.

Design (arXiv 2207.12033 gives the idea, not the code; choices are measured in docs/model.md):

* Encoders are frozen. Request vectors q and item vectors v come from the same text/CLIP
  encoder and are L2-normalized.
* A user's taste t lives in the ITEM space: t = normalize(normalize(mean of the user's history
  item vectors) + r_u), where r_u is the user's row in a learned embedding table (a residual,
  zero for users the table does not know). A user unknown to the table but with recent items
  gets r_u = 0; training drops r_u with probability `user_dropout` so that path is trained too.
* Fusion: p = normalize(a * q + b * t + MLP([q, t, q * t])), with learned scalars a, b and the
  MLP's last layer zero-initialized, so training starts from "request + taste" and learns the
  correction. p is in the item space, so the catalog's item vectors never need re-indexing.
* Scoring head: score(p, v) = exp(logit_scale) * cos(p, v) + logit_bias. It is monotone in
  cos(p, v), so an ANN search of the catalog with p returns exactly the top items of the final
  score: the ranker's candidate search loses nothing to re-scoring.
* A request with no user and no recent items goes through the same network with a zero taste
  (the "text_only" path: the request alone decides, through the learned query transform).
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

MANIFEST = "manifest.json"
WEIGHTS = "network.pt"
USER_TASTES = "user_tastes.npy"
USER_IDS = "user_ids.json"

PATH_USER = "user_embedding"
PATH_RECENT = "recent_items"
PATH_TEXT = "text_only"


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1, eps=1e-12)


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
    ):
        super().__init__()
        self.dimension = dimension
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

    def taste(self, history_mean: torch.Tensor, user_index: torch.Tensor | None = None) -> torch.Tensor:
        """Unit taste vectors from (B, d) history means plus, where user_index >= 0, the table row."""
        base = l2_normalize(history_mean)
        if user_index is None:
            return base
        known = user_index >= 0
        residual = self.user_residuals(user_index.clamp(min=0)) * known.unsqueeze(-1).to(base.dtype)
        return l2_normalize(base + residual)

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


class PersonalizationModel:
    """A trained model artifact: network weights, exported user tastes and the manifest."""

    def __init__(self, network: PersonalizationNetwork, user_ids: list[str] | UserIndex, user_tastes: np.ndarray, manifest: dict):
        users = user_ids if isinstance(user_ids, UserIndex) else UserIndex(user_ids)
        if user_tastes.shape != (len(users.ids), network.dimension):
            raise ValueError(f"user_tastes: expected shape {(len(users.ids), network.dimension)}, got {user_tastes.shape}")
        self.network = network.eval()
        self.manifest = manifest
        self._users = users
        self._user_tastes = user_tastes

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

    def knows_user(self, user_id: str | None) -> bool:
        return user_id is not None and user_id in self._users.rows

    def user_taste(self, user_id: str) -> np.ndarray | None:
        i = self._users.rows.get(user_id)
        return None if i is None else np.array(self._user_tastes[i], dtype=np.float32)  # a copy, not the mmap

    # ---- inference ------------------------------------------------------------------------
    def personalize(
        self,
        query_vector: np.ndarray,
        user_id: str | None = None,
        recent_item_vectors: np.ndarray | None = None,
    ) -> PersonalizedQuery:
        """Personalized query for one request; unknown users fall back to recent items, then text."""
        query = self._check_vectors(query_vector, "query_vector").reshape(1, -1)
        taste = self.user_taste(user_id) if user_id is not None else None
        path = PATH_USER
        if taste is None and recent_item_vectors is not None and len(recent_item_vectors) > 0:
            recent = self._check_vectors(recent_item_vectors, "recent_item_vectors").reshape(-1, self.dimension)
            taste = self.taste_from_items(recent)
            path = PATH_RECENT
        if taste is None:
            path = PATH_TEXT
        vectors = self.personalize_batch(query, None if taste is None else taste.reshape(1, -1))
        return PersonalizedQuery(vector=vectors[0], taste=taste, path=path)

    def personalize_batch(self, queries: np.ndarray, tastes: np.ndarray | None) -> np.ndarray:
        """(B, d) requests and (B, d) unit tastes -> (B, d) personalized queries.

        The batch form of `personalize` (offline evaluation uses it). A row of NaN in `tastes`
        (or `tastes=None`) means no user signal: the network then sees a zero taste, the
        text-only path, which training covers by dropping the taste of some examples.
        """
        q = l2_normalize(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)))
        if tastes is None:
            t = torch.zeros_like(q)
        else:
            t = torch.from_numpy(np.array(tastes, dtype=np.float32)).reshape(q.shape)
            t = torch.nan_to_num(t, nan=0.0)
        with torch.inference_mode():
            return self.network(q, t).numpy()

    def taste_from_items(self, item_vectors: np.ndarray) -> np.ndarray:
        """Taste of a user the table does not know: the normalized mean of their recent items."""
        mean = torch.from_numpy(np.asarray(item_vectors, dtype=np.float32).mean(axis=0, keepdims=True))
        with torch.inference_mode():
            return self.network.taste(mean)[0].numpy()

    def score(self, pq: PersonalizedQuery | np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
        """Final scores of items for one personalized query (or (B, d) queries -> (B, n))."""
        vector = pq.vector if isinstance(pq, PersonalizedQuery) else pq
        single = np.ndim(vector) == 1
        queries = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(vector), dtype=np.float32))
        items = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32)).reshape(-1, self.dimension)
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
        # The residual table is folded into user_tastes, so the weights file stays small.
        state = {k: v for k, v in self.network.state_dict().items() if k != "user_residuals.weight"}
        torch.save(state, directory / WEIGHTS)
        np.save(directory / USER_TASTES, np.asarray(self._user_tastes, dtype=np.float32))
        (directory / USER_IDS).write_text(json.dumps(self._users.ids))
        (directory / MANIFEST).write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> PersonalizationModel:
        """Load a version directory, or the newest version inside a parent directory."""
        directory = resolve_version_dir(path)
        manifest = json.loads((directory / MANIFEST).read_text())
        arch = manifest["config"]["network"]
        user_ids = (directory / USER_IDS).read_bytes()
        digest = hashlib.blake2b(user_ids, digest_size=16).digest()
        users = _LOADED_USER_INDEXES.get(digest)
        if users is None:
            users = _LOADED_USER_INDEXES[digest] = UserIndex(json.loads(user_ids))
        # The user table is memory-mapped: start-up cost does not grow with the number of users.
        user_tastes = np.load(directory / USER_TASTES, mmap_mode="r")
        # The residual table is folded into user_tastes at export; the network keeps an empty one.
        network = PersonalizationNetwork(dimension=int(manifest["dimension"]), n_users=0, **arch)
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
        state["user_residuals.weight"] = network.user_residuals.weight.detach()
        network.load_state_dict(state, strict=True)
        return cls(network, users, user_tastes, manifest)


def resolve_version_dir(path: str | Path) -> Path:
    """A directory holding manifest.json, or the newest (by manifest `created`) child that does."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no model at {path}")
    versions = version_dirs(path)
    if not versions:
        raise FileNotFoundError(f"no model version (a directory with {MANIFEST}) under {path}")
    return max(versions, key=lambda d: newest_first_key(read_manifest(d), d))


def version_dirs(parent: str | Path) -> list[Path]:
    """The version directories (children holding manifest.json) of a model folder."""
    return [child for child in Path(parent).iterdir() if (child / MANIFEST).is_file()]


def read_manifest(directory: str | Path) -> dict:
    """A version's manifest; ValueError when it is not JSON."""
    return json.loads((Path(directory) / MANIFEST).read_text())


def newest_first_key(manifest: dict, directory: Path) -> tuple[str, str]:
    """Orders versions by manifest `created`, the directory name breaking ties: the max is the newest."""
    return str(manifest.get("created", "")), directory.name


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
