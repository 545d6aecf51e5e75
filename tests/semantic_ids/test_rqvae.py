"""Tests of the RQ-VAE tokeniser on tiny, seeded data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.config import RqVaeConfig
from gflowgr_dist.semantic_ids.rqvae import RqVae, fit_rqvae

SMALL = RqVaeConfig(hidden_dims=[32], latent_dim=8, epochs=15, batch_size=32, lr=1e-2)


def _random(n: int = 60, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _clusters(
    n_clusters: int = 6, per_cluster: int = 20, d: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)) * 10.0
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    points = centres[labels] + rng.standard_normal((labels.size, d))
    return points.astype(np.float32), labels


def test_shapes_dtype_and_ranges() -> None:
    sizes = [5, 4, 3]
    codes, stats = fit_rqvae(_random(), sizes, SMALL, seed=0)
    assert codes.shape == (60, 3)
    assert codes.dtype == np.int64
    for level, size in enumerate(sizes):
        assert codes[:, level].min() >= 0
        assert codes[:, level].max() < size
    assert set(stats) == {
        "reconstruction_loss",
        "commitment_loss",
        "utilisation_l0",
        "utilisation_l1",
        "utilisation_l2",
        "epochs",
    }
    assert stats["epochs"] == SMALL.epochs


def test_fewer_items_than_codes() -> None:
    codes, _ = fit_rqvae(_random(n=3), [8, 8], SMALL, seed=0)
    assert codes.shape == (3, 2)
    assert codes.max() < 8


def test_same_seed_same_codes_different_seed_different_codes() -> None:
    x = _random()
    first, _ = fit_rqvae(x, [8, 8], SMALL, seed=1)
    again, _ = fit_rqvae(x, [8, 8], SMALL, seed=1)
    other, _ = fit_rqvae(x, [8, 8], SMALL, seed=2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_clusters_share_their_first_code() -> None:
    x, labels = _clusters()
    codes, _ = fit_rqvae(x, [6, 4], SMALL.model_copy(update={"epochs": 30}), seed=0)
    first = codes[:, 0]

    # Purity: each item's cluster is the majority cluster of its level-1 code.
    majority = {c: np.bincount(labels[first == c]).argmax() for c in np.unique(first)}
    purity = np.mean([majority[c] == label for c, label in zip(first, labels, strict=True)])
    assert purity >= 0.9

    # Pairs: same-cluster items share the code far more often than different-cluster items.
    same_code = first[:, None] == first[None, :]
    same_cluster = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(labels.size, dtype=bool)
    within = same_code[same_cluster & off_diagonal].mean()
    across = same_code[~same_cluster].mean()
    assert within >= 0.9
    assert across <= 0.1


def test_stats_in_range_and_training_reduces_reconstruction() -> None:
    x, _ = _clusters(seed=3)
    _, short = fit_rqvae(x, [6, 4], SMALL.model_copy(update={"epochs": 1}), seed=0)
    _, long = fit_rqvae(x, [6, 4], SMALL.model_copy(update={"epochs": 40}), seed=0)
    for stats in (short, long):
        for level in range(2):
            assert 0.0 <= stats[f"utilisation_l{level}"] <= 1.0
        assert stats["reconstruction_loss"] >= 0.0
        assert stats["commitment_loss"] >= 0.0
    assert long["reconstruction_loss"] < 0.5 * short["reconstruction_loss"]


def test_global_rng_state_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fit_rqvae(_random(), [4, 4], SMALL, seed=7)
    assert torch.equal(torch.get_rng_state(), before)


def test_module_encode_matches_forward_codes() -> None:
    model = RqVae(input_dim=16, hidden_dims=[32], latent_dim=8, codebook_sizes=[5, 3])
    x = torch.from_numpy(_random())
    codes = model.encode(x)
    assert codes.shape == (60, 2)
    assert codes.dtype == torch.int64
    assert torch.equal(codes, model(x).codes)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_flag_does_not_change_codes(progress: bool) -> None:
    x = _random(n=20)
    codes, _ = fit_rqvae(x, [4], SMALL.model_copy(update={"epochs": 2}), progress=progress)
    reference, _ = fit_rqvae(x, [4], SMALL.model_copy(update={"epochs": 2}))
    np.testing.assert_array_equal(codes, reference)
