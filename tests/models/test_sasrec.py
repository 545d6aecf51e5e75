"""Tests of the SASRec model: shapes, causality, padding and both losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.models.sasrec import SasRec, SasRecConfig, left_pad

NUM_ITEMS = 30


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run far faster on one thread, above all when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(loss: str = "bce", pre_norm: bool = True, seed: int = 0) -> SasRec:
    torch.manual_seed(seed)
    cfg = SasRecConfig(
        hidden=16, layers=2, heads=2, dropout=0.1, max_len=8, loss=loss, pre_norm=pre_norm
    )
    return SasRec(NUM_ITEMS, cfg)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-width windows: inputs and next-item targets (shifted ids), left-padded rows."""
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, NUM_ITEMS + 1, (6, 9), generator=gen)
    inputs, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    inputs[0, :3] = 0  # a short row
    targets[0, :3] = 0
    return inputs, targets


def test_left_pad_keeps_most_recent() -> None:
    got = left_pad([np.array([4, 5, 6]), np.array([1, 2, 3, 4, 5, 6, 7])], max_len=5)
    assert got.tolist() == [[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="divisible"):
        SasRecConfig(hidden=10, heads=3)
    with pytest.raises(ValueError, match="loss"):
        SasRecConfig(loss="mse")


@pytest.mark.parametrize("pre_norm", [True, False])
def test_shapes(pre_norm: bool) -> None:
    model = _model(pre_norm=pre_norm)
    inputs, _ = _batch()
    assert model(inputs).shape == (6, 8, 16)
    scores = model.scores([np.array([1, 2, 3]), np.arange(20) % NUM_ITEMS])
    assert scores.shape == (2, NUM_ITEMS)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("pre_norm", [True, False])
def test_causal_later_items_do_not_change_earlier_outputs(pre_norm: bool) -> None:
    model = _model(pre_norm=pre_norm).eval()
    inputs, _ = _batch()
    changed = inputs.clone()
    changed[:, 5] = (changed[:, 5] % NUM_ITEMS) + 1
    with torch.no_grad():
        before, after = model(inputs), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_left_padding_equals_shorter_window() -> None:
    model = _model().eval()
    inputs, _ = _batch()
    with torch.no_grad():
        padded = model(inputs[:1])[0, 3:]  # [5, H]: the real positions of a padded row
        short = model(inputs[:1, 3:])[0]  # [5, H]: the same items without padding
    torch.testing.assert_close(padded, short)
    torch.testing.assert_close(model.scores([np.array([2, 5])]), model.scores([np.array([2, 5])]))


def test_scores_restore_training_mode() -> None:
    model = _model().train()
    model.scores([np.array([1])])
    assert model.training


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_losses_finite_and_decreasing(loss: str) -> None:
    model = _model(loss=loss)
    inputs, targets = _batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    values = []
    for _ in range(30):
        value = model.loss(inputs, targets, gen)
        assert torch.isfinite(value)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(float(value.detach()))
    assert np.mean(values[-5:]) < 0.8 * np.mean(values[:5])


def test_negatives_avoid_window_items() -> None:
    torch.manual_seed(0)
    model = SasRec(200, SasRecConfig(hidden=16, max_len=8))
    inputs, targets = _batch()
    negatives = model.sample_negatives(inputs, targets, torch.Generator().manual_seed(0))
    assert negatives.shape == targets.shape
    assert negatives.min() >= 1
    assert negatives.max() <= 200
    seen = torch.cat([inputs, targets], dim=1)
    clash = (negatives[..., None] == seen[:, None, :]).any(-1)
    assert not clash.any()
