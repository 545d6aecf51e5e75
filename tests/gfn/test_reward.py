"""Tests of the reward model: r_a, r_ŷ, r_sim by hand, the fusions, log R^β and the score maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gflowgr_dist.config import RewardConfig
from gflowgr_dist.gfn.reward import RewardModel, RewardParts, lm_score, normalise_per_row
from gflowgr_dist.gfn.sampler import CLICKED, LIKED, UNOBSERVED

torch.set_num_threads(1)

# Five items with L = 3 codes each.
CODES = np.array(
    [
        [1, 2, 3],  # item 0
        [1, 2, 0],  # item 1
        [0, 2, 3],  # item 2
        [1, 0, 3],  # item 3
        [2, 1, 0],  # item 4
    ]
)
# Column 0 is the positive of each row.
ITEMS = torch.tensor([[0, 1, 2, 3, 4], [4, 0, 4, 1, 2]])
LEVELS = torch.tensor(
    [
        [LIKED, CLICKED, UNOBSERVED, UNOBSERVED, CLICKED],
        [LIKED, LIKED, UNOBSERVED, CLICKED, CLICKED],
    ]
)
SCORE = torch.tensor([[1.0, 0.5, 0.25, 0.0, 0.75], [0.2, 0.4, 0.6, 0.8, 1.0]])


def _model(**kwargs) -> RewardModel:
    return RewardModel(RewardConfig(**kwargs), CODES)


# ---------------------------------------------------------------- r_sim


def test_sim_position_hand_worked() -> None:
    # Row 0 against [1, 2, 3]: item 1 [1, 2, 0] → 2; item 2 [0, 2, 3] → 2;
    #   item 3 [1, 0, 3] → 2; item 4 [2, 1, 0] → 0.
    # Row 1 against item 4 [2, 1, 0]: item 0 → 0; item 4 → 3; item 1 [1, 2, 0] → 1;
    #   item 2 [0, 2, 3] → 0.
    sim = _model(sim="position").similarity(ITEMS)
    torch.testing.assert_close(sim, torch.tensor([[3.0, 2, 2, 2, 0], [3.0, 0, 3, 1, 0]]))


def test_sim_prefix_hand_worked() -> None:
    # Row 0 against [1, 2, 3]: item 1 shares [1, 2] → 2; item 2 differs at once → 0 (although
    #   two codes are equal position-wise); item 3 shares [1] → 1; item 4 → 0.
    # Row 1 against [2, 1, 0]: item 1 [1, 2, 0] → 0 (its last code is equal, but not a prefix).
    sim = _model(sim="prefix").similarity(ITEMS)
    torch.testing.assert_close(sim, torch.tensor([[3.0, 2, 0, 1, 0], [3.0, 0, 3, 0, 0]]))


def test_sim_none_is_zero() -> None:
    sim = _model(sim="none").similarity(ITEMS)
    torch.testing.assert_close(sim, torch.zeros(2, 5))


@pytest.mark.parametrize("sim", ["position", "prefix"])
def test_positive_gets_full_similarity(sim: str) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(30, 4))
    items = torch.as_tensor(rng.integers(0, 30, size=(16, 6)))
    got = RewardModel(RewardConfig(sim=sim), codes).similarity(items)
    torch.testing.assert_close(got[:, 0], torch.full((16,), 4.0))
    assert ((got >= 0) & (got <= 4)).all()
    # Any trajectory of the positive's own item gets L too.
    same = items == items[:, :1]
    assert (got[same] == 4).all()


# ---------------------------------------------------------------- r_a and r_ŷ


def test_action_uses_level_values() -> None:
    parts = _model(liked=10.0, clicked=2.0, unobserved=0.5).parts(ITEMS, LEVELS, SCORE)
    expected = torch.tensor([[10.0, 2.0, 0.5, 0.5, 2.0], [10.0, 10.0, 0.5, 2.0, 2.0]])
    torch.testing.assert_close(parts.action, expected)
    assert parts.action.dtype == torch.float32


def test_use_action_false_zeroes_action() -> None:
    parts = _model(liked=10.0, clicked=2.0, unobserved=0.5, use_action=False).parts(
        ITEMS, LEVELS, SCORE
    )
    torch.testing.assert_close(parts.action, torch.zeros(2, 5))
    torch.testing.assert_close(parts.score, SCORE)  # the others are untouched


def test_score_passes_through_and_none_zeroes_it() -> None:
    torch.testing.assert_close(_model(score="cf").parts(ITEMS, LEVELS, SCORE).score, SCORE)
    torch.testing.assert_close(_model(score="lm").parts(ITEMS, LEVELS, SCORE).score, SCORE)
    torch.testing.assert_close(
        _model(score="none").parts(ITEMS, LEVELS, SCORE).score, torch.zeros(2, 5)
    )
    torch.testing.assert_close(
        _model(score="cf").parts(ITEMS, LEVELS, None).score, torch.zeros(2, 5)
    )


def test_parts_stacked_order() -> None:
    parts = _model().parts(ITEMS, LEVELS, SCORE)
    stacked = parts.stacked()
    assert stacked.shape == (2, 5, 3)
    torch.testing.assert_close(stacked[..., 0], parts.action)
    torch.testing.assert_close(stacked[..., 1], parts.score)
    torch.testing.assert_close(stacked[..., 2], parts.sim)


# ---------------------------------------------------------------- fusion


def test_sum_fusion_hand_worked() -> None:
    model = _model(liked=10.0, clicked=1.0, unobserved=0.0, sim="position")
    reward = model(model.parts(ITEMS, LEVELS, SCORE))
    # r_a + r_ŷ + r_sim; row 0: (10 + 1 + 3, 1 + 0.5 + 2, 0 + 0.25 + 2, 0 + 0 + 2, 1 + 0.75 + 0)
    expected = torch.tensor([[14.0, 3.5, 2.25, 2.0, 1.75], [13.2, 10.4, 3.6, 2.8, 2.0]])
    torch.testing.assert_close(reward, expected)


def test_weighted_fusion_starts_as_sum_and_learns() -> None:
    summed = _model(fusion="sum")
    weighted = _model(fusion="weighted", weights=(1.0, 1.0, 1.0))
    parts = summed.parts(ITEMS, LEVELS, SCORE)
    reward = weighted(parts)
    torch.testing.assert_close(reward, summed(parts))
    reward.sum().backward()
    grad = weighted.weight_logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    # d/dlogit_k Σ 3·softmax·S = 3·w_k·(S_k − Σ_j w_j S_j), w = 1/3, S = the parts' sums.
    totals = parts.stacked().sum(dim=(0, 1))
    torch.testing.assert_close(grad, totals - totals.mean())


def test_weighted_fusion_initial_weights_sum_to_three() -> None:
    weighted = _model(fusion="weighted", weights=(2.0, 1.0, 1.0))
    parts = RewardParts(torch.ones(1, 2), torch.ones(1, 2) * 2, torch.ones(1, 2) * 4)
    # 3 · (0.5, 0.25, 0.25) · (1, 2, 4) = 1.5 + 1.5 + 3 = 6
    torch.testing.assert_close(weighted(parts), torch.full((1, 2), 6.0))


def test_mlp_fusion_is_non_negative() -> None:
    torch.manual_seed(0)
    model = _model(fusion="mlp")
    parts = RewardParts(*(torch.randn(8, 5) * 50 for _ in range(3)))
    reward = model(parts)
    assert reward.shape == (8, 5)
    assert (reward >= 0).all() and torch.isfinite(reward).all()
    reward.sum().backward()
    assert all(p.grad is not None for p in model.mlp.parameters())


# ---------------------------------------------------------------- log R^β


def test_log_rewards_numeric() -> None:
    model = _model(beta=2.0, eps=0.01, sim="position")
    parts = model.parts(ITEMS, LEVELS, SCORE)
    reward = model(parts)
    expected = torch.tensor([[2.0 * math.log(r + 0.01) for r in row] for row in reward.tolist()])
    torch.testing.assert_close(model.log_rewards(parts), expected)
    # Row 0, column 3: R = 2 → 2 · log 2.01.
    assert model.log_rewards(parts)[0, 3].item() == pytest.approx(2 * math.log(2.01), rel=1e-6)


def test_log_rewards_zero_reward_is_finite() -> None:
    model = _model(use_action=False, score="none", sim="none", eps=1e-3)
    parts = model.parts(ITEMS, LEVELS, SCORE)
    torch.testing.assert_close(model.log_rewards(parts), torch.full((2, 5), math.log(1e-3)))


# ---------------------------------------------------------------- score maps


def test_normalise_per_row() -> None:
    scores = torch.tensor([[2.0, 4.0, 3.0, 6.0], [-1.0, -3.0, -2.0, -1.0], [5.0, 5.0, 5.0, 5.0]])
    got = normalise_per_row(scores)
    expected = torch.tensor([[0.0, 0.5, 0.25, 1.0], [1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(got, expected)


def test_normalise_per_row_random_rows() -> None:
    torch.manual_seed(1)
    scores = torch.randn(6, 50) * 10 + 3
    got = normalise_per_row(scores)
    torch.testing.assert_close(got.min(dim=1).values, torch.zeros(6))
    torch.testing.assert_close(got.max(dim=1).values, torch.ones(6))
    assert ((got >= 0) & (got <= 1)).all()
    # Order is preserved within each row.
    assert torch.equal(got.argsort(dim=1), scores.argsort(dim=1))


def test_lm_score() -> None:
    log_probs = torch.tensor([[-1.0, -2.0, -5.0], [-30.0, -10.0, -10.5]], requires_grad=True)
    got = lm_score(log_probs)
    expected = torch.tensor(
        [[1.0, math.exp(-1), math.exp(-4)], [math.exp(-20), 1.0, math.exp(-0.5)]]
    )
    torch.testing.assert_close(got, expected)
    assert (got > 0).all() and (got <= 1).all()
    torch.testing.assert_close(got.max(dim=1).values, torch.ones(2))
    assert not got.requires_grad and got.grad_fn is None


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize(
    "kwargs",
    [
        {"use_action": False, "score": "none", "sim": "none"},  # every part is a zero fill
        {"score": "cf", "sim": "prefix"},  # score given as None below
    ],
)
def test_parts_stay_on_the_items_device(kwargs: dict) -> None:
    # The meta device stands in for a GPU: a zero part made on the CPU would not stack.
    model = _model(**kwargs).to("meta")
    items, levels = ITEMS.to("meta"), LEVELS.to("meta")
    parts = model.parts(items, levels, None)
    assert {parts.action.device, parts.score.device, parts.sim.device} == {items.device}
    assert model(parts).shape == (2, 5)
