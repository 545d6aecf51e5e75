"""GFlowNet balance losses over semantic-ID trajectories, as plain functions of tensors.

GFlowGR (arXiv 2506.16114; paper.md §1–§2) treats decoding an item's semantic ID t_1..t_L as a
trajectory s_0 -> s_1 -> ... -> s_L through a prefix tree, with the backbone's softmax as the
forward policy P_F and terminal reward R(s_L). Because every prefix has exactly one parent,
P_B = 1 and every log P_B term below is 0; that is why no function takes `log_pb`.

Conventions shared by every function:

- `log_pf[b, l]` is log P_F(s_{l+1} | s_l) of the token actually chosen at step l, [B, L].
- `log_flows[b, l]` is log F(s_l) for l = 0..L-1; the terminal flow is clamped, log F(s_L) :=
  log R(s_L) (paper.md §1 "Flow", §8.3), so it is never predicted.
- `mask[b, l]` (optional, bool or 0/1) marks real steps. It must be a prefix mask (all real steps
  before all padded ones); a trajectory of length n ends in s_n, whose flow is log R. Padded
  entries may hold anything, even NaN or -inf: they are replaced before any arithmetic, so they
  reach neither the loss nor its gradient.
- Losses are returned per trajectory, [B], so the caller decides the reduction; the paper sums
  over the N trajectories of an example (`gfn_objective`).

Nothing here depends on Ray or on a model class: the learner and the tests call the same code.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A reward of exactly 0 (an augmentation with no signal) needs a floor before the log (§8.4).
DEFAULT_REWARD_EPS = 1e-3


def _step_mask(log_pf: Tensor, mask: Tensor | None) -> Tensor:
    """Validated boolean prefix mask [B, L]; all True when `mask` is None."""
    if mask is None:
        return torch.ones_like(log_pf, dtype=torch.bool)
    if mask.shape != log_pf.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match log_pf {tuple(log_pf.shape)}")
    mask = mask.bool()
    lengths = mask.sum(dim=1, keepdim=True)  # [B, 1]
    steps = torch.arange(mask.shape[1], device=mask.device)  # [L]
    if not torch.equal(mask, steps < lengths):
        raise ValueError(
            "mask must be a prefix mask (real steps first, padding after); "
            "left-padded or holed masks are not supported"
        )
    return mask


def _check_batch(log_pf: Tensor, log_rewards: Tensor, **others: Tensor) -> None:
    """Raise ValueError unless log_pf is [B, L], log_rewards [B] and each other tensor [B, L]."""
    if log_pf.ndim != 2:
        raise ValueError(f"log_pf must be [B, L]; got shape {tuple(log_pf.shape)}")
    if log_rewards.shape != log_pf.shape[:1]:
        raise ValueError(
            f"log_rewards {tuple(log_rewards.shape)} must be [B] with B={log_pf.shape[0]}"
        )
    for name, tensor in others.items():
        if tensor.shape != log_pf.shape:
            raise ValueError(
                f"{name} {tuple(tensor.shape)} must match log_pf {tuple(log_pf.shape)}"
            )


def _state_log_flows(log_flows: Tensor, log_rewards: Tensor, mask: Tensor) -> Tensor:
    """log F(s_l) for l = 0..L [B, L+1], with log F(s_n) := log R at each trajectory's end n.

    Positions after s_n are set to 0 (never used, but kept finite for the backward pass).
    """
    lengths = mask.sum(dim=1, keepdim=True)  # [B, 1]
    states = torch.arange(mask.shape[1] + 1, device=mask.device)  # [L+1]
    padded = torch.cat([log_flows, log_rewards[:, None]], dim=1)  # [B, L+1]
    padded = torch.where(states < lengths, padded, torch.zeros_like(padded))
    return torch.where(states == lengths, log_rewards[:, None], padded)  # [B, L+1]


def tb_residual(
    log_z: Tensor, log_pf: Tensor, log_rewards: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Trajectory-balance residual before squaring, log Z + Σ_l log P_F − log R (for logging).

    torchgfn calls this the score plus `logZ`; the sign tells whether Z over- or under-shoots.

    Args:
        log_z: log Z(U) per trajectory (torchgfn's `logZ`), [B].
        log_pf: log P_F of the chosen token at each step, [B, L].
        log_rewards: log R(s_L), [B].
        mask: real steps, [B, L] prefix mask; None means all steps are real.

    Returns:
        The residual of paper.md §2's L_TB, [B].
    """
    _check_batch(log_pf, log_rewards)
    if log_z.shape != log_rewards.shape:
        raise ValueError(f"log_z {tuple(log_z.shape)} must match log_rewards [B]")
    mask = _step_mask(log_pf, mask)
    log_pf = torch.where(mask, log_pf, torch.zeros_like(log_pf))  # [B, L]
    return log_z + log_pf.sum(dim=1) - log_rewards  # [B]


def trajectory_balance(
    log_z: Tensor, log_pf: Tensor, log_rewards: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Trajectory balance, L_TB(τ) = (log Z + Σ_l log P_F(s_{l+1}|s_l) − log R(s_L))².

    Paper.md §2 (TB); Malkin et al. 2022. P_B = 1 on the prefix tree, so no log P_B term.

    Args:
        log_z: log Z(U) per trajectory (torchgfn's `logZ`), [B]; from `LogZHead` or
            `vargrad_log_z` repeated over the N trajectories of an example.
        log_pf: log P_F of the chosen token at each step, [B, L].
        log_rewards: log R(s_L), [B].
        mask: real steps, [B, L] prefix mask; None means all steps are real.

    Returns:
        Squared residual per trajectory, [B].
    """
    return tb_residual(log_z, log_pf, log_rewards, mask).pow(2)


def vargrad_log_z(log_pf_sum: Tensor, log_rewards: Tensor) -> Tensor:
    """Per-example VarGrad estimate of log Z(U), detached.

    log Z(U) = mean_n (log R(τ_n) − Σ log P_F(τ_n)).

    Paper.md §8.2 option (b): no `logZ` parameter; with this estimate the TB residuals of an
    example's N trajectories average to exactly 0, so TB penalises only their spread. It is
    detached so gradients reach log P_F through the TB residual alone.

    Args:
        log_pf_sum: Σ_l log P_F of each trajectory, [B, N] (N trajectories per example).
        log_rewards: log R of each trajectory, [B, N].

    Returns:
        log Z estimate per example, [B], with no gradient.
    """
    if log_pf_sum.ndim != 2 or log_pf_sum.shape != log_rewards.shape:
        raise ValueError(
            f"log_pf_sum {tuple(log_pf_sum.shape)} and log_rewards "
            f"{tuple(log_rewards.shape)} must both be [B, N]"
        )
    return (log_rewards - log_pf_sum).mean(dim=1).detach()  # [B]


def detailed_balance(
    log_flows: Tensor, log_pf: Tensor, log_rewards: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Detailed balance, L_DB(τ) = Σ_l (log F(s_l) + log P_F(s_{l+1}|s_l) − log F(s_{l+1}))².

    Paper.md §2 (DB), with log F(s_L) := log R(s_L) and P_B = 1 (Bengio et al. 2023).

    Args:
        log_flows: log F(s_l) for l = 0..L-1, [B, L] (e.g. from `FlowHead`).
        log_pf: log P_F of the chosen token at each step, [B, L].
        log_rewards: log R(s_L), [B].
        mask: real steps, [B, L] prefix mask; None means all steps are real.

    Returns:
        Sum of squared per-transition residuals over real steps, [B].
    """
    _check_batch(log_pf, log_rewards, log_flows=log_flows)
    mask = _step_mask(log_pf, mask)
    flows = _state_log_flows(log_flows, log_rewards, mask)  # [B, L+1]
    log_pf = torch.where(mask, log_pf, torch.zeros_like(log_pf))  # [B, L]
    residual = flows[:, :-1] + log_pf - flows[:, 1:]  # [B, L]
    return torch.where(mask, residual.pow(2), torch.zeros_like(residual)).sum(dim=1)


def subtrajectory_balance(
    log_flows: Tensor,
    log_pf: Tensor,
    log_rewards: Tensor,
    lamda: float = 0.9,
    mask: Tensor | None = None,
) -> Tensor:
    """SubTB(λ): λ^(j−i)-weighted mean over sub-trajectories i < j of the balance residual².

    Madan et al. 2023, "Learning GFlowNets from partial episodes", eq. 9:
    Σ_{i<j≤n} λ^(j−i) (log F(s_i) + Σ_{k=i}^{j−1} log P_F(s_{k+1}|s_k) − log F(s_j))²
    / Σ_{i<j≤n} λ^(j−i), with log F(s_n) := log R and P_B = 1 (paper.md §1).
    The (0, n) term is TB with log Z = log F(s_0); the (l, l+1) terms are DB.
    Paper.md §8.10 warns that naive SubTB on logged data is non-identifiable: keep L_GR
    beside it.

    Args:
        log_flows: log F(s_l) for l = 0..L-1, [B, L].
        log_pf: log P_F of the chosen token at each step, [B, L].
        log_rewards: log R(s_L), [B].
        lamda: weight base λ > 0 (torchgfn's spelling); λ → 0 approaches DB, large λ favours
            long sub-trajectories.
        mask: real steps, [B, L] prefix mask; None means all steps are real.

    Returns:
        Normalised weighted sum per trajectory, [B].
    """
    _check_batch(log_pf, log_rewards, log_flows=log_flows)
    if not lamda > 0:
        raise ValueError(f"lamda={lamda} must be > 0 (the SubTB(λ) weight base)")
    mask = _step_mask(log_pf, mask)
    flows = _state_log_flows(log_flows, log_rewards, mask)  # [B, L+1]
    log_pf = torch.where(mask, log_pf, torch.zeros_like(log_pf))  # [B, L]

    # Prefix sums make every sub-trajectory's Σ log P_F one difference: cum[j] − cum[i].
    cum = torch.cat([torch.zeros_like(log_pf[:, :1]), log_pf.cumsum(dim=1)], dim=1)  # [B, L+1]
    residual = (flows - cum)[:, :, None] - (flows - cum)[:, None, :]  # [B, i, j]

    # Keep i < j <= n (the trajectory's length) and weight by λ^(j−i).
    states = torch.arange(flows.shape[1], device=flows.device)  # [L+1]
    span = (states[None, :] - states[:, None]).to(flows.dtype)  # [i, j]
    lengths = mask.sum(dim=1)  # [B]
    valid = (span > 0) & (states[None, None, :] <= lengths[:, None, None])  # [B, i, j]
    weight = torch.where(valid, lamda**span, torch.zeros_like(span))  # [B, i, j]
    total = (weight * residual.pow(2)).sum(dim=(1, 2))  # [B]
    return total / weight.sum(dim=(1, 2)).clamp_min(torch.finfo(flows.dtype).tiny)


def gfn_objective(loss_sft: Tensor, loss_gfn_per_traj: Tensor, lam: float) -> Tensor:
    """GFlowGR's total loss, L = L_GR + λ Σ_{n=1}^{N} L_GFN(τ_n), averaged over examples.

    Paper.md §2 (Total): L_GFN is TB, DB or SubTB; τ_1 is the positive. L_GR is kept because
    flow matching alone erodes recommendation accuracy (§2 "Keep L_GR").

    Args:
        loss_sft: L_GR already reduced over the batch, scalar.
        loss_gfn_per_traj: L_GFN of each trajectory, [B, N].
        lam: λ >= 0; paper default 1, performance is a reverse V over {0.01, ..., 100}.

    Returns:
        Scalar loss: loss_sft + lam · mean_B Σ_N loss_gfn_per_traj.
    """
    if loss_sft.ndim != 0:
        raise ValueError(f"loss_sft must be a scalar; got shape {tuple(loss_sft.shape)}")
    if loss_gfn_per_traj.ndim != 2:
        raise ValueError(
            f"loss_gfn_per_traj must be [B, N]; got shape {tuple(loss_gfn_per_traj.shape)}"
        )
    if lam < 0:
        raise ValueError(f"lam={lam} must be >= 0 (the weight of L_GFN, paper.md §2)")
    return loss_sft + lam * loss_gfn_per_traj.sum(dim=1).mean()


def check_finite(name: str, tensor: Tensor, fix: str) -> None:
    """Raise if `tensor` holds NaN or ±inf (torchgfn-style debug invariant).

    Args:
        name: the quantity, e.g. "log_rewards" or "log_pf".
        tensor: any shape.
        fix: the option or change that removes the cause, quoted in the message.

    Raises:
        FloatingPointError: naming the quantity, the count of non-finite values out of the
            total (NaN and inf counted apart) and `fix`.
    """
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    nan = int(torch.isnan(tensor).sum())
    raise FloatingPointError(
        f"{name} has {bad} non-finite values out of {tensor.numel()} "
        f"({nan} NaN, {bad - nan} inf); fix: {fix}"
    )


def log_reward(reward: Tensor, eps: float = DEFAULT_REWARD_EPS, beta: float = 1.0) -> Tensor:
    """log R^β = β · log(R + ε), the TB/DB target (paper.md §8.4).

    ε keeps a zero reward finite; β (reward exponent) is not in the paper, so keep β = 1.

    Args:
        reward: non-negative rewards, any shape.
        eps: floor ε >= 0 added before the log.
        beta: reward exponent β.

    Returns:
        β · log(reward + eps), same shape as `reward`.

    Raises:
        ValueError: if eps < 0 or any reward is negative (the count is reported).
    """
    if eps < 0:
        raise ValueError(f"eps={eps} must be >= 0")
    negative = int((reward < 0).sum())
    if negative:
        raise ValueError(
            f"reward has {negative} negative values out of {reward.numel()} "
            f"(min {float(reward.min()):.4g}); rewards must be >= 0 before ε is added: "
            "shift or clip the reward components"
        )
    return beta * torch.log(reward + eps)
