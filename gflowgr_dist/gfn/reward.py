"""The reward model R(item | user) = r_a + r_ŷ + r_sim that GFlowGR samples in proportion to.

Paper.md §4:
- r_a, the interaction signal: a value per behaviour level (liked / clicked / unobserved);
- r_ŷ, the estimated score: a collaborative model's score of the item for this user, min-max
  normalised over the catalogue per example into [0, 1], or the LM's own likelihood of the
  item's ID relative to the likeliest trajectory of the example (also in [0, 1]);
- r_sim, format similarity to the positive: semantic-ID codes equal position by position
  (paper.md's formula) or the length of the shared prefix (the trie-aware reading).

Fusion: `sum` (the paper's default), `weighted` (learnable weights, kept on the simplex times 3
so the total scale cannot drift to 0), `mlp` (a small network with a softplus output). The two
learnable fusions are trained by the GFlowNet loss together with the policy; that lets the
reward bend towards the policy, which is why `sum` stays the default (the paper also finds the
MLP brings no gain). The target is log R^β = β log(R + ε) (paper.md §8.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gflowgr_dist.config import RewardConfig
from gflowgr_dist.gfn.losses import log_reward


@dataclass
class RewardParts:
    """The three signals of every trajectory, each [E, T] (T = 1 + N, column 0 the positive)."""

    action: Tensor
    score: Tensor
    sim: Tensor

    def stacked(self) -> Tensor:
        return torch.stack([self.action, self.score, self.sim], dim=-1)  # [E, T, 3]


class RewardModel(nn.Module):
    """Computes R and log R for trajectories of items (see module docstring)."""

    def __init__(self, cfg: RewardConfig, codes: np.ndarray) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("codes", torch.as_tensor(codes, dtype=torch.long), persistent=False)
        levels = [cfg.liked, cfg.clicked, cfg.unobserved]
        self.register_buffer("level_values", torch.tensor(levels), persistent=False)
        if cfg.fusion == "weighted":
            weights = torch.tensor(cfg.weights).clamp_min(1e-3)
            self.weight_logits = nn.Parameter(torch.log(weights / weights.sum()))
        elif cfg.fusion == "mlp":
            self.mlp = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))

    def parts(self, items: Tensor, levels: Tensor, score: Tensor | None) -> RewardParts:
        """Signals of items [E, T] at behaviour levels [E, T]; score [E, T] in [0, 1] or None.

        Column 0 of `items` must be the positive (r_sim compares against it).
        """
        device = items.device  # zero parts must sit where the items do (a GPU)
        if self.cfg.use_action:
            action = self.level_values[levels]
        else:
            action = torch.zeros(items.shape, device=device)
        if score is None or self.cfg.score == "none":
            score = torch.zeros(items.shape, device=device)
        return RewardParts(action.float(), score.float(), self.similarity(items))

    def similarity(self, items: Tensor) -> Tensor:
        """r_sim of every item against column 0 (the positive), [E, T]."""
        if self.cfg.sim == "none":
            return torch.zeros(items.shape, device=items.device)
        codes = self.codes[items]  # [E, T, L]
        equal = codes == codes[:, :1]  # [E, T, L]
        if self.cfg.sim == "prefix":
            equal = equal.long().cumprod(dim=-1).bool()
        return equal.sum(dim=-1).float()

    def forward(self, parts: RewardParts) -> Tensor:
        """R >= 0, [E, T]."""
        stacked = parts.stacked()  # [E, T, 3]
        if self.cfg.fusion == "sum":
            return stacked.sum(dim=-1)
        if self.cfg.fusion == "weighted":
            return (stacked * 3.0 * self.weight_logits.softmax(dim=0)).sum(dim=-1)
        return nn.functional.softplus(self.mlp(stacked)).squeeze(-1)

    def log_rewards(self, parts: RewardParts) -> Tensor:
        """log R^β = β log(R + ε), [E, T]."""
        return log_reward(self(parts), eps=self.cfg.eps, beta=self.cfg.beta)


def normalise_per_row(scores: Tensor, how: str = "minmax") -> Tensor:
    """Each row of CF scores into [0, 1], [E, I].

    minmax: (s − min) / (max − min), a constant row maps to 0 (the paper's reading);
    softmax: P_CF(item) / max P_CF, so only the CF model's few likely items score near 1;
    rank: the percentile rank of the item in its row (0 lowest, 1 highest).
    """
    if how == "softmax":
        log_p = scores.log_softmax(dim=1)
        return torch.exp(log_p - log_p.max(dim=1, keepdim=True).values)
    if how == "rank":
        ranks = scores.argsort(dim=1).argsort(dim=1).to(scores.dtype)
        return ranks / max(1, scores.shape[1] - 1)
    low = scores.min(dim=1, keepdim=True).values
    span = (scores.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return (scores - low) / span


def lm_score(log_prob_sums: Tensor) -> Tensor:
    """The LM's own r_ŷ: P(ID) relative to the example's likeliest trajectory, [E, T] in (0, 1].

    Detached: the reward is a target, not something the policy may move by changing itself.
    """
    log_prob_sums = log_prob_sums.detach()
    return torch.exp(log_prob_sums - log_prob_sums.max(dim=1, keepdim=True).values)
