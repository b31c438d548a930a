"""Retrieval metrics over the full catalog, one target item per test case.

Ties are broken uniformly at random, in expectation: a case whose target shares its score with
e other items (and has g items strictly above it) takes each rank g+1 .. g+e+1 with
probability 1/(e+1). A constant scorer therefore gets chance-level metrics, not a lucky or an
unlucky tie-break, which matters for count-based baselines (popularity, item-kNN) whose
scores tie a lot.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma

METRICS = ("recall@10", "recall@50", "ndcg@10", "mrr")
_EULER = 0.5772156649015329


def harmonic(n: np.ndarray) -> np.ndarray:
    """H(n) = 1 + 1/2 + ... + 1/n, H(0) = 0."""
    n = np.asarray(n, dtype=np.float64)
    return np.where(n > 0, digamma(n + 1) + _EULER, 0.0)


def _cumulative_discount(k: int) -> np.ndarray:
    """c[n] = sum_{r=1..n} 1/log2(r+1) for n = 0..k."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])


def target_ranks(scores: np.ndarray, targets: np.ndarray, excluded: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n_greater, n_tied) per case for a (B, N) score matrix; excluded items never outrank.

    `excluded[b]` lists items removed from case b's ranking (e.g. already seen); the target itself
    must not be among them. `scores` is modified in place.
    """
    scores = np.asarray(scores)
    batch = np.arange(len(targets))
    if excluded is not None:
        rows = np.repeat(batch, [len(e) for e in excluded])
        cols = np.concatenate(excluded) if len(rows) else np.zeros(0, dtype=np.int64)
        if np.any(cols == np.asarray(targets)[rows]):
            raise ValueError("excluded: a test target is among the items excluded from its ranking")
        scores[rows, cols] = -np.inf
    target_scores = scores[batch, targets][:, None]
    if not np.isfinite(target_scores).all():
        raise ValueError("scores: a target has a non-finite score")
    greater = (scores > target_scores).sum(axis=1)
    tied = (scores == target_scores).sum(axis=1) - 1
    return greater.astype(np.int64), tied.astype(np.int64)


def case_metrics(greater: np.ndarray, tied: np.ndarray) -> dict[str, np.ndarray]:
    """Expected per-case metrics under random tie-breaking, from `target_ranks`."""
    g = np.asarray(greater, dtype=np.float64)
    span = np.asarray(tied, dtype=np.float64) + 1.0  # number of equally likely ranks
    out = {}
    for k in (10, 50):
        out[f"recall@{k}"] = np.clip(k - g, 0.0, span) / span
    discount = _cumulative_discount(10)
    lo = np.minimum(g, 10).astype(np.int64)
    hi = np.minimum(g + span, 10).astype(np.int64)
    out["ndcg@10"] = (discount[hi] - discount[lo]) / span  # one relevant item: IDCG = 1
    out["mrr"] = (harmonic(g + span) - harmonic(g)) / span
    return out


def summarize(per_case: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(per_case[name])) if len(per_case[name]) else 0.0 for name in METRICS}


class MetricAccumulator:
    """Collects per-case metrics batch by batch."""

    def __init__(self):
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}

    def add(self, scores: np.ndarray, targets: np.ndarray, excluded: list[np.ndarray] | None = None) -> None:
        for name, values in case_metrics(*target_ranks(scores, targets, excluded)).items():
            self._parts[name].append(values)

    def per_case(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in self._parts.items()}

    def result(self) -> dict[str, float]:
        return summarize(self.per_case())
