"""The baselines GFlowGR is compared with (paper.md §5): DPO, S-DPO and GRPO, as loss functions.

All three see the same trajectories and sequence log-probabilities as the GFlowNet losses:
`log_probs[e, t]` = Σ_l log P_F of trajectory t of example e under the policy (column 0 the
positive), `ref_log_probs` the same under the frozen starting model.

- DPO (Rafailov et al. 2023): −log σ(β[(π_w − ref_w) − (π_l − ref_l)]) with the positive as the
  winner and one augmented item as the loser.
- S-DPO (Chen et al. 2024, softmax DPO for recommendation): all N augmented items are losers at
  once, −log σ(−log Σ_n exp(β[(π_n − ref_n) − (π_w − ref_w)])).
- GRPO (Shao et al. 2024): G items sampled from the policy under the trie, advantages
  normalised within the group, −A · log π, plus β_KL times the k3 estimate of KL(π ‖ ref) on the
  sampled items. Sampling is on-policy and each batch is used for one step, so the clipped
  importance ratio equals 1 and the surrogate reduces to the plain policy gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def _margins(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    if log_probs.shape != ref_log_probs.shape or log_probs.ndim != 2:
        raise ValueError(
            f"log_probs {tuple(log_probs.shape)} and ref_log_probs "
            f"{tuple(ref_log_probs.shape)} must both be [E, T]"
        )
    return log_probs - ref_log_probs.detach()  # [E, T]


def dpo_loss(log_probs: Tensor, ref_log_probs: Tensor, beta: float) -> Tensor:
    """DPO per example with column 0 the winner and column 1 the loser, [E]."""
    margin = _margins(log_probs, ref_log_probs)
    if margin.shape[1] < 2:
        raise ValueError("DPO needs at least one augmented item (sampler.num_augmented >= 1)")
    return -F.logsigmoid(beta * (margin[:, 0] - margin[:, 1]))


def sdpo_loss(log_probs: Tensor, ref_log_probs: Tensor, beta: float) -> Tensor:
    """S-DPO per example: column 0 the winner against every other column at once, [E]."""
    margin = _margins(log_probs, ref_log_probs)
    if margin.shape[1] < 2:
        raise ValueError("S-DPO needs at least one augmented item (sampler.num_augmented >= 1)")
    gaps = beta * (margin[:, 1:] - margin[:, :1])  # [E, N]
    return -F.logsigmoid(-torch.logsumexp(gaps, dim=1))


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """(R − mean) / (std + ε) within each group, [E, G]; a group of equal rewards gives 0."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def grpo_loss(
    log_probs: Tensor, ref_log_probs: Tensor, rewards: Tensor, kl_weight: float
) -> Tensor:
    """GRPO per example over its G on-policy samples (all columns), [E].

    Args:
        log_probs: Σ log π of each sampled ID, [E, G] (with gradient).
        ref_log_probs: the same under the reference model, [E, G].
        rewards: reward of each sample, [E, G].
        kl_weight: β_KL.
    """
    advantages = group_advantages(rewards.detach())  # [E, G]
    gap = ref_log_probs.detach() - log_probs  # log ref/π
    kl = torch.exp(gap) - gap - 1.0  # k3 estimator, >= 0
    return (-(advantages * log_probs) + kl_weight * kl).mean(dim=1)
