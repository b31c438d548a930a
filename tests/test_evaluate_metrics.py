"""Retrieval metrics on hand-computed cases (the math behind every number in docs/results.md)."""

import math

import numpy as np
import pytest

from whisperlite.trainer.metrics import MetricAccumulator, case_metrics, harmonic, target_ranks


def test_rank_one_scores_perfectly():
    scores = np.array([[0.1, 0.9, 0.3]], dtype=np.float32)
    acc = MetricAccumulator()
    acc.add(scores, np.array([1]))
    assert acc.result() == {"recall@10": 1.0, "recall@50": 1.0, "ndcg@10": 1.0, "mrr": 1.0}


def test_rank_three_by_hand():
    # Target (item 0) has two items above it: rank 3.
    scores = np.array([[0.5, 0.9, 0.7, 0.1]], dtype=np.float32)
    per_case = case_metrics(*target_ranks(scores.copy(), np.array([0])))
    assert per_case["recall@10"][0] == 1.0
    assert per_case["ndcg@10"][0] == pytest.approx(1 / math.log2(4))
    assert per_case["mrr"][0] == pytest.approx(1 / 3)


def test_rank_beyond_cutoffs():
    n = 100
    scores = np.arange(n, dtype=np.float32)[None, :]  # item 99 best ... item 0 worst
    target = np.array([40])  # 59 items above: rank 60
    per_case = case_metrics(*target_ranks(scores.copy(), target))
    assert per_case["recall@10"][0] == 0.0
    assert per_case["recall@50"][0] == 0.0
    assert per_case["ndcg@10"][0] == 0.0
    assert per_case["mrr"][0] == pytest.approx(1 / 60)


def test_excluded_items_do_not_outrank_the_target():
    scores = np.array([[0.9, 0.8, 0.1]], dtype=np.float32)
    greater, tied = target_ranks(scores.copy(), np.array([2]), excluded=[np.array([0, 1])])
    assert greater[0] == 0 and tied[0] == 0


def test_excluding_the_target_is_an_error():
    with pytest.raises(ValueError, match="excluded"):
        target_ranks(np.zeros((1, 3), dtype=np.float32), np.array([1]), excluded=[np.array([1])])


def test_ties_are_broken_at_random_in_expectation():
    # All 20 items tie: rank uniform on 1..20.
    per_case = case_metrics(*target_ranks(np.zeros((1, 20), dtype=np.float32), np.array([7])))
    assert per_case["recall@10"][0] == pytest.approx(10 / 20)
    assert per_case["recall@50"][0] == pytest.approx(1.0)
    assert per_case["mrr"][0] == pytest.approx(sum(1 / r for r in range(1, 21)) / 20)
    assert per_case["ndcg@10"][0] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / 20)


def test_partial_tie_straddling_the_cutoff():
    # 8 items above, target tied with 3 others: ranks 9..12 equally likely.
    scores = np.array([[5.0] * 8 + [1.0] * 4 + [0.0] * 10], dtype=np.float32)
    per_case = case_metrics(*target_ranks(scores.copy(), np.array([9])))
    assert per_case["recall@10"][0] == pytest.approx(2 / 4)
    assert per_case["ndcg@10"][0] == pytest.approx((1 / math.log2(10) + 1 / math.log2(11)) / 4)
    assert per_case["mrr"][0] == pytest.approx((1 / 9 + 1 / 10 + 1 / 11 + 1 / 12) / 4)


def test_harmonic_numbers():
    assert harmonic(np.array([0, 1, 4])).tolist() == pytest.approx([0.0, 1.0, 1 + 1 / 2 + 1 / 3 + 1 / 4])


def test_accumulator_averages_over_cases():
    scores = np.array([[0.9, 0.1], [0.9, 0.1]], dtype=np.float32)
    acc = MetricAccumulator()
    acc.add(scores, np.array([0, 1]))
    assert acc.result()["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert acc.result()["recall@10"] == 1.0
