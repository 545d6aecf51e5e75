"""Tests of the ranking metrics, diversity measures and paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gflowgr_dist.eval.metrics import (
    diversity_metrics,
    gini,
    head_items,
    item_coverage,
    load_per_user,
    long_tail_share,
    paired_bootstrap,
    rank_metrics,
    ranked_from_scores,
    recommendation_entropy,
    save_per_user,
    summarize,
)


def _reference(ranked: np.ndarray, targets: np.ndarray, ks: tuple[int, ...]) -> dict:
    """Per-user loop: the definition the vectorised code must match."""
    out = {f"{m}@{k}": np.zeros(len(targets)) for m in ("recall", "ndcg") for k in ks}
    for u, (row, target) in enumerate(zip(ranked.tolist(), targets.tolist(), strict=True)):
        rank = row.index(target) if target in row else None
        for k in ks:
            if rank is not None and rank < k:
                out[f"recall@{k}"][u] = 1.0
                out[f"ndcg@{k}"][u] = 1.0 / math.log2(rank + 2)
    return out


def test_hand_worked_ranks() -> None:
    ranked = np.array(
        [
            [7, 8, 4, 9, 5, 6],  # target 4 at (1-based) rank 3: ndcg 1/log2(4)
            [4, 1, 2, 3, 5, 6],  # target 4 at rank 1: ndcg 1
            [7, 8, 9, 5, 4, 6],  # target 4 at rank 5: ndcg 1/log2(6)
            [1, 2, 3, 5, 6, 7],  # miss
            [1, -1, -1, -1, -1, -1],  # padding only after the first slot
        ]
    )
    targets = np.array([4, 4, 4, 4, 2])
    m = rank_metrics(ranked, targets, ks=(1, 5))
    np.testing.assert_allclose(m["ndcg@5"], [0.5, 1.0, 1 / math.log2(6), 0.0, 0.0])
    np.testing.assert_allclose(m["recall@5"], [1.0, 1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(m["recall@1"], [0.0, 1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(m["ndcg@1"], [0.0, 1.0, 0.0, 0.0, 0.0])


def test_padding_never_matches() -> None:
    ranked = np.full((3, 5), -1)
    m = rank_metrics(ranked, np.array([0, 1, 2]), ks=(5,))
    assert m["recall@5"].sum() == 0.0
    assert m["ndcg@5"].sum() == 0.0


def test_hit_beyond_k_is_a_miss() -> None:
    ranked = np.array([[0, 1, 2, 3, 4, 5]])
    m = rank_metrics(ranked, np.array([5]), ks=(1, 5))
    assert m["recall@5"][0] == 0.0
    assert m["ndcg@5"][0] == 0.0


def test_too_short_lists_rejected() -> None:
    with pytest.raises(ValueError, match="fewer than k=20"):
        rank_metrics(np.zeros((2, 10), np.int64), np.zeros(2, np.int64))


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_users, num_items, width = 200, 40, 20
    ranked = np.stack([rng.permutation(num_items)[:width] for _ in range(num_users)])
    ranked[rng.random(ranked.shape) < 0.1] = -1  # sprinkle padding
    targets = rng.integers(0, num_items, num_users)
    ks = (1, 5, 10, 20)
    got, want = rank_metrics(ranked, targets, ks), _reference(ranked, targets, ks)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], err_msg=name)


def test_ranked_from_scores_ties_and_exclusion() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(ranked_from_scores(scores, 4), [[1, 2, 4, 0], [0, 1, 2, 3]])
    exclude = [np.array([2]), np.array([0, 1, 2])]
    got = ranked_from_scores(torch.tensor(scores), 3, exclude)
    np.testing.assert_array_equal(got, [[1, 4, 0], [3, 4, -1]])


def test_ranked_from_scores_matches_full_sort() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, (30, 50)).astype(np.float32)  # many ties
    got = ranked_from_scores(torch.from_numpy(scores), 10)
    for row, ranked in zip(scores, got, strict=True):
        want = sorted(range(50), key=lambda i, r=row: (-r[i], i))[:10]
        assert ranked.tolist() == want


def test_coverage_entropy_gini_uniform() -> None:
    ranked = np.array([[0, 1], [2, 3]])  # every item once
    assert item_coverage(ranked, 4, k=2) == 1.0
    entropy, normalised = recommendation_entropy(ranked, 4, k=2)
    assert entropy == pytest.approx(math.log(4))
    assert normalised == pytest.approx(1.0)
    assert gini(ranked, 4, k=2) == pytest.approx(0.0)


def test_coverage_entropy_gini_concentrated() -> None:
    num_items = 5
    ranked = np.array([[2, -1], [2, -1], [2, -1]])  # one item gets every filled slot
    assert item_coverage(ranked, num_items, k=2) == pytest.approx(1 / 5)
    assert recommendation_entropy(ranked, num_items, k=2) == (0.0, 0.0)
    assert gini(ranked, num_items, k=2) == pytest.approx(1 - 1 / num_items)


def test_gini_hand_case() -> None:
    # Exposure counts over 4 items: [3, 1, 0, 0] -> sorted [0, 0, 1, 3], total 4.
    ranked = np.array([[0, 1], [0, -1], [0, -1]])
    expected = 2 * (3 * 1 + 4 * 3) / (4 * 4) - 5 / 4  # = 0.625
    assert gini(ranked, 4, k=2) == pytest.approx(expected)
    entropy, _ = recommendation_entropy(ranked, 4, k=2)
    assert entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_only_first_k_slots_count() -> None:
    ranked = np.array([[0, 1, 2, 3]])
    assert item_coverage(ranked, 4, k=2) == 0.5


def test_long_tail_share() -> None:
    popularity = np.array([50, 40, 1, 2, 3, 0, 0, 0, 0, 9])  # head (20% of 10) = items 0, 1
    np.testing.assert_array_equal(np.flatnonzero(head_items(popularity)), [0, 1])
    ranked = np.array([[0, 1, 2, -1], [0, 9, 5, 6]])
    assert long_tail_share(ranked, popularity, k=4) == pytest.approx(4 / 7)
    metrics = diversity_metrics(ranked, 10, popularity, k=4)
    assert metrics["long_tail@4"] == pytest.approx(4 / 7)
    assert metrics["coverage@4"] == pytest.approx(6 / 10)


def test_summarize_means() -> None:
    assert summarize({"recall@5": np.array([1.0, 0.0, 0.0, 1.0])}) == {"recall@5": 0.5}


def test_per_user_parquet_round_trip(tmp_path) -> None:
    ranked = np.array([[3, 1, -1], [0, 2, 1]])
    per_user = rank_metrics(ranked, np.array([1, 5]), ks=(1, 3))
    path = save_per_user(tmp_path / "eval" / "test.parquet", [7, 9], [1, 5], ranked, per_user)
    users, targets, ranked_back, per_user_back = load_per_user(path)
    np.testing.assert_array_equal(users, [7, 9])
    np.testing.assert_array_equal(targets, [1, 5])
    np.testing.assert_array_equal(ranked_back, ranked)
    for name, values in per_user.items():
        np.testing.assert_allclose(per_user_back[name], values)


def test_bootstrap_identical_systems() -> None:
    a = np.random.default_rng(0).random(300)
    result = paired_bootstrap(a, a.copy(), n=2000)
    assert result["mean_diff"] == 0.0
    assert result["p_value"] == 1.0
    assert result["ci_low"] == result["ci_high"] == 0.0


def test_bootstrap_clearly_different_systems() -> None:
    rng = np.random.default_rng(1)
    b = (rng.random(500) < 0.2).astype(float)
    a = np.maximum(b, (rng.random(500) < 0.3).astype(float))  # a hits wherever b does, and more
    result = paired_bootstrap(a, b, n=5000, seed=3)
    assert result["mean_diff"] == pytest.approx(a.mean() - b.mean())
    assert result["p_value"] < 0.01
    assert 0.0 < result["ci_low"] < result["mean_diff"] < result["ci_high"]


def test_bootstrap_no_difference_in_mean_is_not_significant() -> None:
    rng = np.random.default_rng(2)
    a = (rng.random(400) < 0.3).astype(float)
    b = rng.permutation(a)  # same mean, unrelated per user
    result = paired_bootstrap(a, b, n=2000)
    assert result["p_value"] > 0.5
    assert result["ci_low"] < 0.0 < result["ci_high"]
