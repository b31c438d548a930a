"""Every ranking method compared by `whisperlite evaluate`, behind one small interface.

A method scores the full catalog for a batch of cases: `scores(users, queries) -> (B, n_items)`,
where `users` are user indices of the split and `queries` the request vectors. Hyper-parameters
of the baselines are chosen on the validation cases only.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from whisperlite.core.progress import bar_disabled
from whisperlite.trainer.experiment import Experiment
from whisperlite.trainer.metrics import MetricAccumulator, summarize
from whisperlite.core.vector_space import require_same_encoder
from whisperlite.core.personalization import PersonalizationModel, fuse_text_and_taste

log = logging.getLogger(__name__)


class Method(Protocol):
    name: str

    def scores(self, users: np.ndarray, queries: np.ndarray) -> np.ndarray: ...


def rank_cases(
    method: Method,
    experiment: Experiment,
    case: str = "test",
    keep_seen: bool = False,
    limit: int | None = None,
    batch_size: int = 512,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per-case metrics of `method` on the validation or test cases, full catalog ranked."""
    score = lambda users, queries: {method.name: method.scores(users, queries)}  # noqa: E731
    return rank_variants(score, [method.name], method.name, experiment, case, keep_seen, limit, batch_size, progress)[method.name]


def rank_variants(
    score_variants: Callable[[np.ndarray, np.ndarray], dict],
    variants: list,
    label: str,
    experiment: Experiment,
    case: str = "test",
    keep_seen: bool = False,
    limit: int | None = None,
    batch_size: int = 512,
    progress: bool = False,
) -> dict:
    """`rank_cases` for several variants of one method scored together (`score_variants(users, queries)`
    -> {variant: (B, n_items) scores} for each of `variants`), so work they share is done once per batch:
    {variant: per-case metrics} (empty where there are no cases)."""
    split = experiment.split
    frame = {"validation": split.validation, "test": split.test}[case]
    queries = {"validation": experiment.validation_queries, "test": experiment.test_queries}[case]
    rows = np.arange(len(frame))
    if limit and limit < len(rows):  # None or 0: every case
        rows = np.sort(np.random.default_rng(0).choice(rows, size=limit, replace=False))
    users = frame["user"].to_numpy()[rows]
    targets = frame["item"].to_numpy()[rows]
    queries = queries[rows]
    seen = None if keep_seen else split.seen_before(case)
    accumulators = {variant: MetricAccumulator() for variant in variants}
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=f"{label} ({case})", unit="batch", disable=bar_disabled(progress), leave=False):
        stop = start + batch_size
        excluded = None if seen is None else [seen[u] for u in users[start:stop]]
        for variant, scores in score_variants(users[start:stop], queries[start:stop]).items():
            accumulators[variant].add(np.array(scores, dtype=np.float32), targets[start:stop], excluded)
    return {variant: accumulator.per_case() for variant, accumulator in accumulators.items()}


def validation_metrics(method: Method, experiment: Experiment, limit: int | None = None) -> dict[str, float]:
    return summarize(rank_cases(method, experiment, "validation", limit=limit))


class Popularity:
    """Train interaction counts; the same ranking for everyone."""

    name = "popularity"

    def __init__(self, experiment: Experiment):
        self._scores = np.log1p(experiment.split.item_counts.astype(np.float32))

    def scores(self, users, queries):
        return np.tile(self._scores, (len(users), 1))


class TextOnly:
    """Zero-shot cosine between request and item vectors (the paper's CLIP baseline)."""

    name = "text_only"

    def __init__(self, experiment: Experiment):
        self._items = experiment.item_vectors

    def scores(self, users, queries):
        return queries @ self._items.T


class TextPlusHistoryMean:
    """Training-free personalization: cosine with normalize(q + weight * mean of history items)."""

    name = "text_plus_history_mean"
    WEIGHTS = (0.25, 0.5, 1.0, 2.0)

    def __init__(self, experiment: Experiment, weight: float | None = None, validation_limit: int | None = None):
        self._items = experiment.item_vectors
        self._tastes = experiment.history_means
        if weight is None:
            weight, self.selection = _select(self, "weight", self.WEIGHTS, experiment, validation_limit)
        self.weight = weight

    def scores(self, users, queries):
        return fuse_text_and_taste(queries, self._tastes[users], self.weight) @ self._items.T


class CollaborativeFiltering:
    """`history_only`: a collaborative recommender from `implicit`, no text at all.

    Candidates (ALS at several sizes and regularizations, item-kNN with cosine and BM25
    weighting) are fitted on the train interactions and the best on validation Recall@10 kept.
    """

    name = "history_only"

    def __init__(self, experiment: Experiment, candidates: list[dict] | None = None, validation_limit: int | None = None, seed: int = 0):
        split = experiment.split
        n_users, n_items = len(split.user_ids), experiment.dataset.n_items
        data = np.ones(len(split.train), dtype=np.float32)
        self._user_items = sp.coo_matrix(
            (data, (split.train["user"].to_numpy(), split.train["item"].to_numpy())), shape=(n_users, n_items)
        ).tocsr()
        self._seed = seed
        candidates = candidates or self.default_candidates()
        best, self.selection = None, []
        for params in candidates:
            self._fit(**params)
            metrics = validation_metrics(self, experiment, validation_limit)
            self.selection.append({"params": params, "validation": metrics})
            log.info("history_only %s: validation recall@10 %.4f", params, metrics["recall@10"])
            if best is None or metrics["recall@10"] > best[1]:
                best = (params, metrics["recall@10"])
        self.params = best[0]
        if self.params != candidates[-1]:
            self._fit(**self.params)

    @staticmethod
    def default_candidates() -> list[dict]:
        return [
            {"model": "als", "factors": 64, "regularization": 0.01},
            {"model": "als", "factors": 64, "regularization": 1.0},
            {"model": "als", "factors": 128, "regularization": 0.1},
            {"model": "itemknn_cosine", "K": 100},
            {"model": "itemknn_bm25", "K": 100},
        ]

    def _fit(self, model: str, **params) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        if model == "als":
            # implicit runs its own threads; nested BLAS threads slow it down (it checks this when built).
            with threadpool_limits(1, "blas"):
                als = AlternatingLeastSquares(iterations=20, random_state=self._seed, **params)
                als.fit(self._user_items, show_progress=False)
            self._factors = (np.asarray(als.user_factors), np.asarray(als.item_factors))
            self._similarity = None
        else:
            knn = {"itemknn_cosine": CosineRecommender, "itemknn_bm25": BM25Recommender}[model](**params)
            knn.fit(self._user_items, show_progress=False)
            self._similarity = knn.similarity.tocsr()
            self._factors = None

    def scores(self, users, queries):
        if self._factors is not None:
            user_factors, item_factors = self._factors
            return user_factors[users] @ item_factors.T
        return (self._user_items[users] @ self._similarity).toarray()


def standardized(scores: np.ndarray) -> np.ndarray:
    """Each row's scores minus its mean over the catalog, over its standard deviation (a constant row: zeros)."""
    scores = np.asarray(scores, dtype=np.float32)
    spread = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


class LateFusion:
    """`hybrid`: weight * z(request model) + (1 - weight) * z(history model), scores standardized per
    case over the catalog; the weight chosen on validation. (whisperlite's own sequence part fuses the
    same way, inside the served model: core/sequence.py.)"""

    WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)

    name = "hybrid"

    def __init__(self, request: Method, history: Method, experiment: Experiment, weight: float | None = None,
                 validation_limit: int | None = None):
        self._request, self._history = request, history
        if weight is None:
            weight, self.selection = _select(self, "weight", self.WEIGHTS, experiment, validation_limit)
        self.weight = weight

    def scores(self, users, queries):
        request = standardized(self._request.scores(users, queries))
        history = standardized(self._history.scores(users, queries))
        return self.weight * request + (1.0 - self.weight) * history


class WhisperLite:
    """A trained PersonalizationModel, scored through its public personalize/score code path."""

    def __init__(self, model: PersonalizationModel, experiment: Experiment, name: str = "whisperlite"):
        self.name = name
        self.model = model
        self._items = experiment.item_vectors
        require_same_encoder("model: its training vectors", model.encoder_name, "this evaluation embeds with", experiment.encoder_name)
        # The model's row of each split user, looked up by user id exactly as the ranker does; -1 = unknown.
        self._rows = np.array([model.user_row(user_id) for user_id in experiment.split.user_ids], dtype=np.int64)
        # Likewise each catalog item's row in the sequence part, by item id.
        self._item_rows = None if model.sequence is None else model.sequence.item_rows(experiment.dataset.items["item_id"].tolist())

    def scores(self, users, queries):
        return self.scores_at_text_weights(users, queries, [None])[None]

    def scores_at_text_weights(self, users, queries, weights) -> dict:
        """{weight: scores} with the sequence part's text weight set to each (None: the part's own): the
        personalized queries, cosines and sequence states are computed once for all. The part keeps
        its own weight."""
        vectors, cosines, states = self._parts(users, queries)
        sequence = self.model.sequence
        if sequence is None:
            return {weight: self.model.rank_scores(vectors, cosines, states, self._item_rows) for weight in weights}
        own = sequence.text_weight
        out = {}
        try:
            for weight in weights:
                sequence.text_weight = own if weight is None else weight
                out[weight] = self.model.rank_scores(vectors, cosines, states, self._item_rows)
        finally:
            sequence.text_weight = own
        return out

    def cosines_and_scores(self, users, queries) -> tuple[np.ndarray, np.ndarray]:
        """(B, n) cosines of the personalized queries with every item (the catalog's search order) and final scores."""
        vectors, cosines, states = self._parts(users, queries)
        return cosines, self.model.rank_scores(vectors, cosines, states, self._item_rows)

    def _parts(self, users, queries):
        rows = self._rows[users]
        vectors = self.model.personalize_users(queries, rows)
        return vectors, vectors @ self._items.T, self.model.sequence_states(rows)

    def without_user(self) -> WhisperLite:
        """The same model with every taste dropped: the text-only path (a diagnostic)."""
        copy = object.__new__(WhisperLite)
        copy.__dict__.update(self.__dict__, name=f"{self.name}_without_user")
        copy._rows = np.full_like(self._rows, -1)
        return copy


def _select(method, attribute: str, values, experiment: Experiment, validation_limit: int | None):
    """Pick `attribute` from `values` by validation Recall@10 (ties: the first value)."""
    selection = []
    for value in values:
        setattr(method, attribute, value)
        metrics = validation_metrics(method, experiment, validation_limit)
        selection.append({attribute: value, "validation": metrics})
    best = max(selection, key=lambda s: s["validation"]["recall@10"])
    log.info("%s: %s=%s chosen on validation", method.name, attribute, best[attribute])
    return best[attribute], selection
