"""Tests of the GFlowNet balance losses: hand-worked values, invariants, masking and errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gflowgr_dist.gfn.losses import (
    check_finite,
    detailed_balance,
    gfn_objective,
    log_reward,
    subtrajectory_balance,
    tb_residual,
    trajectory_balance,
    vargrad_log_z,
)

torch.set_num_threads(1)

# One L = 2 trajectory shared by the hand-worked DB and SubTB tests.
LOG_FLOWS = torch.tensor([[1.0, 0.5]])  # log F(s_0), log F(s_1)
LOG_PF = torch.tensor([[-0.2, -0.3]])
LOG_R = torch.tensor([0.0])  # log F(s_2) := log R


def test_tb_hand_worked() -> None:
    # residual = log Z + Σ log P_F − log R = 0.5 + (−1 − 2) − (−1) = −1.5
    # squared: 2.25
    # Second row: 0 + (−0.5 − 0.5) − (−1) = 0.
    log_z = torch.tensor([0.5, 0.0])
    log_pf = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    log_r = torch.tensor([-1.0, -1.0])
    torch.testing.assert_close(tb_residual(log_z, log_pf, log_r), torch.tensor([-1.5, 0.0]))
    torch.testing.assert_close(trajectory_balance(log_z, log_pf, log_r), torch.tensor([2.25, 0.0]))


def test_db_hand_worked() -> None:
    # step 0: log F(s_0) + log P_F − log F(s_1) = 1.0 − 0.2 − 0.5 = 0.3 → 0.09
    # step 1: log F(s_1) + log P_F − log R      = 0.5 − 0.3 − 0.0 = 0.2 → 0.04
    # L_DB = 0.09 + 0.04 = 0.13
    torch.testing.assert_close(detailed_balance(LOG_FLOWS, LOG_PF, LOG_R), torch.tensor([0.13]))


def test_subtb_hand_worked() -> None:
    # λ = 0.5; state flows (1.0, 0.5, 0.0), prefix sums of log P_F (0, −0.2, −0.5).
    # (i, j) = (0, 1): 1.0 − 0.2 − 0.5 = 0.3 → 0.09, weight 0.5
    # (i, j) = (1, 2): 0.5 − 0.3 − 0.0 = 0.2 → 0.04, weight 0.5
    # (i, j) = (0, 2): 1.0 − 0.5 − 0.0 = 0.5 → 0.25, weight 0.25
    # (0.045 + 0.02 + 0.0625) / (0.5 + 0.5 + 0.25) = 0.1275 / 1.25 = 0.102
    loss = subtrajectory_balance(LOG_FLOWS, LOG_PF, LOG_R, lamda=0.5)
    torch.testing.assert_close(loss, torch.tensor([0.102]))


def test_subtb_small_lamda_tends_to_mean_db() -> None:
    # As λ → 0 the length-1 terms dominate: SubTB → L_DB / L = 0.13 / 2.
    loss = subtrajectory_balance(LOG_FLOWS.double(), LOG_PF.double(), LOG_R.double(), 1e-8)
    torch.testing.assert_close(loss, torch.tensor([0.065], dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 5),
    lamda=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_consistent_flows_give_zero_loss(batch: int, steps: int, lamda: float, seed: int) -> None:
    # With log F(s_l) = log R − Σ_{k≥l} log P_F_k every balance condition holds exactly.
    gen = torch.Generator().manual_seed(seed)
    log_pf = -torch.rand(batch, steps, generator=gen, dtype=torch.float64) * 5  # [B, L]
    log_r = torch.randn(batch, generator=gen, dtype=torch.float64) * 3  # [B]
    tail = log_pf.flip(1).cumsum(1).flip(1)  # [B, L], Σ_{k≥l} log P_F_k
    log_flows = log_r[:, None] - tail  # [B, L]
    zero = torch.zeros(batch, dtype=torch.float64)

    torch.testing.assert_close(detailed_balance(log_flows, log_pf, log_r), zero)
    torch.testing.assert_close(subtrajectory_balance(log_flows, log_pf, log_r, lamda), zero)
    torch.testing.assert_close(trajectory_balance(log_flows[:, 0], log_pf, log_r), zero)


def test_vargrad_centres_tb_residuals_and_is_detached() -> None:
    # Example 0: log R − Σ log P_F = (0 − (−1), −1 − (−3)) = (1, 2) → log Z = 1.5.
    log_pf_sum = torch.tensor([[-1.0, -3.0], [-2.0, -0.5]], requires_grad=True)  # [B, N]
    log_r = torch.tensor([[0.0, -1.0], [1.0, 0.0]], requires_grad=True)  # [B, N]
    log_z = vargrad_log_z(log_pf_sum, log_r)  # [B]
    assert log_z[0].item() == pytest.approx(1.5)
    assert not log_z.requires_grad

    residual = log_z[:, None] + log_pf_sum - log_r  # [B, N], the TB residual of each τ_n
    torch.testing.assert_close(residual.mean(dim=1), torch.zeros(2))


def test_tb_gradients_reach_log_pf_and_log_z() -> None:
    log_z = torch.tensor([0.5], requires_grad=True)
    log_pf = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    trajectory_balance(log_z, log_pf, torch.tensor([-1.0])).sum().backward()
    # d/dx (residual²) = 2 · residual = 2 · (−1.5) = −3 for log Z and every log P_F step.
    torch.testing.assert_close(log_z.grad, torch.tensor([-3.0]))
    torch.testing.assert_close(log_pf.grad, torch.tensor([[-3.0, -3.0]]))


@pytest.mark.parametrize("loss_name", ["tb", "db", "subtb"])
def test_padded_steps_are_ignored(loss_name: str) -> None:
    # A length-2 trajectory padded to L = 3 with NaN/−inf garbage matches the unpadded one,
    # and the garbage gets zero (finite) gradient.
    log_pf = torch.tensor([[-0.2, -0.3, -math.inf]], requires_grad=True)
    log_flows = torch.tensor([[1.0, 0.5, math.nan]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    losses = {
        "tb": lambda f, p, m: trajectory_balance(f[:, 0], p, LOG_R, m),
        "db": lambda f, p, m: detailed_balance(f, p, LOG_R, m),
        "subtb": lambda f, p, m: subtrajectory_balance(f, p, LOG_R, 0.5, m),
    }
    padded = losses[loss_name](log_flows, log_pf, mask)
    unpadded = losses[loss_name](LOG_FLOWS, LOG_PF, None)
    torch.testing.assert_close(padded, unpadded)

    padded.sum().backward()
    assert log_pf.grad[0, 2].item() == 0.0
    assert torch.isfinite(log_pf.grad).all()
    assert log_flows.grad is None or torch.isfinite(log_flows.grad).all()


def test_mixed_lengths_match_per_row() -> None:
    log_pf = torch.tensor([[-0.2, -0.3], [-0.4, 7.0]])
    log_flows = torch.tensor([[1.0, 0.5], [0.1, 9.0]])
    log_r = torch.tensor([0.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    # Row 1 has one step: 0.1 − 0.4 − (−1.0) = 0.7 → DB 0.49; SubTB has the single term too.
    expected = torch.tensor([0.13, 0.49])
    torch.testing.assert_close(detailed_balance(log_flows, log_pf, log_r, mask), expected)
    subtb = subtrajectory_balance(log_flows, log_pf, log_r, 0.5, mask)
    torch.testing.assert_close(subtb, torch.tensor([0.102, 0.49]))


def test_non_prefix_mask_rejected() -> None:
    with pytest.raises(ValueError, match="prefix mask"):
        trajectory_balance(
            torch.zeros(1), torch.zeros(1, 3), torch.zeros(1), torch.tensor([[0, 1, 1]])
        )


def test_shape_errors_name_the_tensor() -> None:
    with pytest.raises(ValueError, match="log_rewards"):
        trajectory_balance(torch.zeros(2), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="log_flows"):
        detailed_balance(torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="lamda"):
        subtrajectory_balance(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), lamda=0.0)


def test_gfn_objective_sums_trajectories_and_averages_examples() -> None:
    # Σ_n per example: (1 + 2, 3 + 4) = (3, 7); mean 5; 2.0 + 0.5 · 5 = 4.5.
    per_traj = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    total = gfn_objective(torch.tensor(2.0), per_traj, lam=0.5)
    torch.testing.assert_close(total, torch.tensor(4.5))
    with pytest.raises(ValueError, match="lam"):
        gfn_objective(torch.tensor(2.0), per_traj, lam=-1.0)
    with pytest.raises(ValueError, match="scalar"):
        gfn_objective(torch.tensor([2.0]), per_traj, lam=1.0)


def test_check_finite_message_names_quantity_count_and_fix() -> None:
    check_finite("log_pf", torch.zeros(3), fix="unused")
    bad = torch.tensor([[0.0, math.nan, 1.0], [math.inf, 2.0, -math.inf]])
    with pytest.raises(FloatingPointError) as info:
        check_finite("log_rewards", bad, fix="set reward.eps > 0")
    message = str(info.value)
    assert "log_rewards" in message
    assert "3 non-finite values out of 6" in message
    assert "1 NaN, 2 inf" in message
    assert "set reward.eps > 0" in message


def test_log_reward_handles_zero_and_rejects_negatives() -> None:
    # log(0 + 1e-3) = −6.9078; log(1 + 1e-3) = 0.0009995; β = 2 doubles both.
    out = log_reward(torch.tensor([0.0, 1.0]), eps=1e-3, beta=2.0)
    torch.testing.assert_close(out, 2 * torch.tensor([math.log(1e-3), math.log(1.001)]))
    with pytest.raises(ValueError, match="2 negative values out of 3"):
        log_reward(torch.tensor([-1.0, 0.5, -0.1]))
    with pytest.raises(ValueError, match="eps"):
        log_reward(torch.tensor([1.0]), eps=-1.0)
