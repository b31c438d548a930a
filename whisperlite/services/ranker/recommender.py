"""The Recommend use case: encode the request, personalize it, fetch candidates, re-score them."""

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from whisperlite.core.clients.catalog import CatalogClient
from whisperlite.core.clients.query_encoder import QueryEncoderClient
from whisperlite.core.errors import InvalidArgument, Unavailable
from whisperlite.core.personalization import PersonalizationModel, PersonalizedQuery, text_plus_history_query
from whisperlite.services.ranker.metrics import RECOMMENDATIONS, STAGE_SECONDS
from whisperlite.v1 import common_pb2

MAX_USER_ID_CHARS = 256


@dataclass(frozen=True)
class RankerLimits:
    max_top_k: int = 100
    max_query_chars: int = 1000
    max_recent_items: int = 50
    # Candidates fetched from the catalog for re-scoring. The network's score is monotone in the cosine
    # the catalog searches by, so a small margin over top_k only absorbs ANN misses; each candidate
    # costs ~0.1 ms of transfer (benchmarks/recommend_latency.py: 200 candidates 38 ms, 50 16 ms).
    candidates: int = 50

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"{name}: must be at least 1, got {value}")


@dataclass(frozen=True)
class ScoredItem:
    item: common_pb2.Item
    score: float
    query_match: float
    personal_affinity: float


@dataclass(frozen=True)
class Recommendations:
    items: list[ScoredItem]
    path: str
    model_version: str


@contextmanager
def _stage(name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - start)


class Recommender:
    def __init__(
        self,
        encoder: QueryEncoderClient,
        catalog: CatalogClient,
        limits: RankerLimits = RankerLimits(),
    ):
        self._encoder = encoder
        self._catalog = catalog
        self._limits = limits
        self._model: PersonalizationModel | None = None
        self._ready = False

    def use_model(self, model: PersonalizationModel | None) -> None:
        """Starts serving with `model` (None: text-only until a model is trained)."""
        self._model = model
        self._ready = True

    @property
    def model_version(self) -> str:
        return self._model.version if self._model is not None else ""

    def validate(self, user_id: str, query: str, top_k: int, recent_item_ids: list[str]) -> str:
        """Checks the ranker's own fields before any downstream call; returns the query as it will be embedded.

        The filter is the catalog's to judge (it owns the item fields); its INVALID_ARGUMENT reaches the caller as is.
        """
        limits = self._limits
        text = query.strip()
        if not text:
            raise InvalidArgument("query: must contain non-whitespace text")
        if len(text) > limits.max_query_chars:
            raise InvalidArgument(f"query: at most {limits.max_query_chars} characters, got {len(text)}")
        if not 1 <= top_k <= limits.max_top_k:
            raise InvalidArgument(f"top_k: must be between 1 and {limits.max_top_k}, got {top_k}")
        if len(user_id) > MAX_USER_ID_CHARS:
            raise InvalidArgument(f"user_id: at most {MAX_USER_ID_CHARS} characters, got {len(user_id)}")
        if len(recent_item_ids) > limits.max_recent_items:
            raise InvalidArgument(f"recent_item_ids: at most {limits.max_recent_items} ids, got {len(recent_item_ids)}")
        for index, item_id in enumerate(recent_item_ids):
            if not item_id.strip():
                raise InvalidArgument(f"recent_item_ids[{index}]: must be a non-empty item id")
        return text

    async def recommend(
        self,
        *,
        user_id: str,
        query: str,
        top_k: int,
        item_filter: common_pb2.ItemFilter,
        recent_item_ids: list[str],
    ) -> Recommendations:
        if not self._ready:
            raise Unavailable("ranker is starting: the personalization model is not loaded yet")
        text = self.validate(user_id, query, top_k, recent_item_ids)
        with _stage("encode"):
            query_vector = (await self._encoder.embed_texts([text])).vectors[0]

        with _stage("personalize"):
            recent_vectors = None
            needs_recent = recent_item_ids and (self._model is None or not self._model.knows_user(user_id))
            if needs_recent:
                fetched = await self._catalog.vectors(list(recent_item_ids))
                recent_vectors = fetched if len(fetched) else None
            personalized = self._personalize(query_vector, user_id, recent_vectors)

        with _stage("search"):
            candidates = await self._catalog.search(personalized.vector, max(self._limits.candidates, top_k), item_filter)

        with _stage("score"):
            items = self._rank(query_vector, personalized, candidates, top_k)
        RECOMMENDATIONS.labels(personalized.path).inc()
        return Recommendations(items=items, path=personalized.path, model_version=self.model_version)

    def _personalize(self, query_vector: np.ndarray, user_id: str, recent_vectors: np.ndarray | None) -> PersonalizedQuery:
        if self._model is None:
            return text_plus_history_query(query_vector, recent_vectors)
        return self._model.personalize(query_vector, user_id or None, recent_vectors)

    def _rank(self, query_vector, personalized: PersonalizedQuery, candidates, top_k: int) -> list[ScoredItem]:
        if not candidates:
            return []
        vectors = np.stack([candidate.vector for candidate in candidates])
        if self._model is None:
            scores = vectors @ personalized.vector
        else:
            scores = self._model.score(personalized, vectors)
        query_match = vectors @ query_vector
        affinity = vectors @ personalized.taste if personalized.taste is not None else np.zeros(len(candidates))
        # Stable sort keeps the catalog's order among equal scores, so responses are deterministic.
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [
            ScoredItem(
                item=candidates[i].item,
                score=float(scores[i]),
                query_match=float(query_match[i]),
                personal_affinity=float(affinity[i]),
            )
            for i in order
        ]
