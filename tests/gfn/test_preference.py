"""Tests of the DPO, S-DPO and GRPO baselines: hand-worked values, gradient signs and errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gflowgr_dist.gfn.preference import dpo_loss, group_advantages, grpo_loss, sdpo_loss

torch.set_num_threads(1)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------- DPO


def test_dpo_hand_worked() -> None:
    # Row 0: margins w = −1 − (−2) = 1, l = −3 − (−2.5) = −0.5;
    #   β = 0.5 → 0.5 · 1.5 = 0.75.
    # Row 1: w = −4 − (−3) = −1, l = −1 − (−2) = 1 → 0.5 · (−2) = −1.
    log_probs = torch.tensor([[-1.0, -3.0, -9.0], [-4.0, -1.0, 0.0]])
    ref = torch.tensor([[-2.0, -2.5, -1.0], [-3.0, -2.0, -5.0]])
    expected = torch.tensor([-_log_sigmoid(0.75), -_log_sigmoid(-1.0)])
    torch.testing.assert_close(dpo_loss(log_probs, ref, beta=0.5), expected)


def test_dpo_uses_only_column_one_as_loser() -> None:
    log_probs = torch.tensor([[-1.0, -3.0, -9.0]])
    ref = torch.tensor([[-2.0, -2.5, -1.0]])
    changed = log_probs.clone()
    changed[0, 2] = 5.0
    torch.testing.assert_close(dpo_loss(log_probs, ref, 0.5), dpo_loss(changed, ref, 0.5))


def test_dpo_gradient_only_through_the_policy() -> None:
    log_probs = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.5]], requires_grad=True)
    dpo_loss(log_probs, ref, 0.5).sum().backward()
    assert ref.grad is None
    assert log_probs.grad[0, 0] < 0 < log_probs.grad[0, 1]


# ---------------------------------------------------------------- S-DPO


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-20.0, 0.0), min_size=4, max_size=4),
    st.floats(0.01, 5.0),
)
def test_sdpo_with_one_loser_is_dpo(values: list[float], beta: float) -> None:
    log_probs = torch.tensor([values[:2]], dtype=torch.float64)
    ref = torch.tensor([values[2:]], dtype=torch.float64)
    torch.testing.assert_close(sdpo_loss(log_probs, ref, beta), dpo_loss(log_probs, ref, beta))


def test_sdpo_hand_worked() -> None:
    # margins (w, l1, l2) = (1, 0, −1); β = 1:
    # −log σ(−log(e^{0 − 1} + e^{−1 − 1})) = −log σ(−log(e^{−1} + e^{−2})).
    log_probs = torch.tensor([[0.0, -1.0, -3.0]])
    ref = torch.tensor([[-1.0, -1.0, -2.0]])
    inner = -math.log(math.exp(-1) + math.exp(-2))
    torch.testing.assert_close(sdpo_loss(log_probs, ref, 1.0), torch.tensor([-_log_sigmoid(inner)]))


def test_sdpo_gradient_signs() -> None:
    torch.manual_seed(0)
    log_probs = (torch.randn(6, 5) - 3).requires_grad_()
    ref = torch.randn(6, 5) - 3
    sdpo_loss(log_probs, ref, beta=0.7).sum().backward()
    grad = log_probs.grad
    assert (grad[:, 0] < 0).all()  # raising the winner's log-prob lowers the loss
    assert (grad[:, 1:] > 0).all()  # raising a loser's raises it
    # The winner's pull balances the losers' pushes.
    torch.testing.assert_close(grad[:, 0], -grad[:, 1:].sum(dim=1))


def test_sdpo_moves_the_right_way() -> None:
    log_probs = torch.tensor([[-2.0, -3.0, -1.0, -4.0]])
    ref = torch.tensor([[-2.5, -2.0, -2.0, -3.0]])
    base = sdpo_loss(log_probs, ref, 1.0)
    winner_up = log_probs.clone()
    winner_up[0, 0] += 0.5
    assert sdpo_loss(winner_up, ref, 1.0) < base
    for loser in (1, 2, 3):
        loser_up = log_probs.clone()
        loser_up[0, loser] += 0.5
        assert sdpo_loss(loser_up, ref, 1.0) > base


@pytest.mark.parametrize("loss", [dpo_loss, sdpo_loss])
def test_preference_losses_reject_bad_shapes(loss) -> None:
    with pytest.raises(ValueError):
        loss(torch.zeros(3, 1), torch.zeros(3, 1), 0.1)  # no loser
    with pytest.raises(ValueError):
        loss(torch.zeros(3, 4), torch.zeros(3, 5), 0.1)  # mismatched
    with pytest.raises(ValueError):
        loss(torch.zeros(3, 4), torch.zeros(4, 4), 0.1)  # mismatched rows
    with pytest.raises(ValueError):
        loss(torch.zeros(4), torch.zeros(4), 0.1)  # not [E, T]


# ---------------------------------------------------------------- GRPO


def test_group_advantages_hand_worked() -> None:
    # [1, 2, 3]: mean 2, population std sqrt(2/3).
    got = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]))
    scale = math.sqrt(1.5)
    torch.testing.assert_close(got, torch.tensor([[-scale, 0.0, scale]]), atol=1e-5, rtol=1e-5)


def test_group_advantages_normalised_rows() -> None:
    torch.manual_seed(1)
    rewards = torch.randn(8, 6, dtype=torch.float64) * 5 + 2
    rewards[3] = 4.0  # a constant group
    got = group_advantages(rewards)
    varying = torch.tensor([row != 3 for row in range(8)])
    torch.testing.assert_close(got.mean(dim=1), torch.zeros(8, dtype=torch.float64))
    std = got[varying].std(dim=1, unbiased=False)
    torch.testing.assert_close(std, torch.ones(7, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[3], torch.zeros(6, dtype=torch.float64))


def test_grpo_gradient_follows_the_advantage() -> None:
    rewards = torch.tensor([[1.0, 5.0, 2.0, 8.0], [0.0, 0.0, 1.0, 0.0]])
    log_probs = torch.tensor([[-2.0, -3.0, -1.0, -4.0], [-1.0, -2.0, -3.0, -4.0]])
    log_probs.requires_grad_()
    loss = grpo_loss(log_probs, log_probs.detach() - 0.3, rewards, kl_weight=0.0)
    assert loss.shape == (2,)
    loss.sum().backward()
    above = rewards > rewards.mean(dim=1, keepdim=True)
    assert (log_probs.grad[above] < 0).all()  # gradient descent raises their log-prob
    assert (log_probs.grad[~above] > 0).all()  # and lowers the rest
    # Exactly −A / G.
    torch.testing.assert_close(log_probs.grad, -group_advantages(rewards) / 4)


def test_grpo_rewards_carry_no_gradient() -> None:
    rewards = torch.tensor([[1.0, 5.0, 2.0]], requires_grad=True)
    log_probs = torch.tensor([[-2.0, -3.0, -1.0]], requires_grad=True)
    grpo_loss(log_probs, log_probs.detach(), rewards, kl_weight=0.1).sum().backward()
    assert rewards.grad is None


def test_grpo_kl_term() -> None:
    # Equal rewards: zero advantages, so the loss is the KL term alone.
    rewards = torch.ones(2, 3)
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -2.0]])
    zero = grpo_loss(log_probs, log_probs.clone(), rewards, kl_weight=1.0)
    torch.testing.assert_close(zero, torch.zeros(2))
    ref = log_probs + torch.tensor([[0.5, -0.5, 1.0], [0.0, 0.0, -2.0]])
    loss = grpo_loss(log_probs, ref, rewards, kl_weight=2.0)
    assert (loss > 0).all()
    # k3: e^{g} − g − 1 with g = log ref − log π, averaged over the group, times β_KL.
    gap = ref - log_probs
    torch.testing.assert_close(loss, 2.0 * (gap.exp() - gap - 1).mean(dim=1))
    # With kl_weight = 0 the KL term is gone.
    torch.testing.assert_close(grpo_loss(log_probs, ref, rewards, 0.0), torch.zeros(2))


def test_grpo_kl_pulls_towards_the_reference() -> None:
    rewards = torch.ones(1, 2)
    log_probs = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0]])  # sample 0 above the reference, sample 1 below
    grpo_loss(log_probs, ref, rewards, kl_weight=1.0).sum().backward()
    assert log_probs.grad[0, 0] > 0 > log_probs.grad[0, 1]
