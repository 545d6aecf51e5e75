"""Heads that parameterise the GFlowNet quantities the backbone does not give: log Z(U), log F(s).

GFlowGR is a conditional GFlowNet, so both Z and the state flows must depend on the prompt U
(paper.md §1 "Conditioning"). The paper does not say how they are parameterised (§2 "Not in any
available source"); these follow paper.md §8.2(a) and §8.3: an MLP over the mean-pooled prompt
encoding for log Z, and a linear head on each decoder hidden state for log F(s_l).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def pool_context(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """Masked mean of the prompt's hidden states, the context fed to `LogZHead`.

    Args:
        hidden_states: encoder (or prompt) hidden states, [B, T, H].
        attention_mask: 1 for real tokens, 0 for padding, [B, T].

    Returns:
        Mean over real tokens, [B, H]; a row with no real token pools to zeros.
    """
    if attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must be [B, T] of hidden_states "
            f"{tuple(hidden_states.shape)}"
        )
    keep = attention_mask.bool()[:, :, None]  # [B, T, 1]
    # where, not multiply: padded positions may hold NaN/inf, and NaN * 0 is NaN.
    summed = torch.where(keep, hidden_states, torch.zeros_like(hidden_states)).sum(dim=1)
    count = keep.sum(dim=1).clamp_min(1).to(hidden_states.dtype)  # [B, 1]
    return summed / count  # [B, H]


class LogZHead(nn.Module):
    """log Z(U), torchgfn's `logZ`, as a small MLP over the pooled prompt (paper.md §8.2(a)).

    The last layer's weights start at zero and its bias at `init_log_z`, so log Z is exactly
    `init_log_z` for every prompt at step 0; §8.2 recommends init ≈ log(mean R) so TB starts
    near balance instead of spending its first steps moving Z.

    Args:
        hidden: width H of the pooled context (>= 2).
        init_log_z: the starting value of log Z.
    """

    def __init__(self, hidden: int, init_log_z: float = 0.0) -> None:
        super().__init__()
        if hidden < 2:
            raise ValueError(
                f"hidden={hidden} must be >= 2 (the MLP's middle width is hidden // 2)"
            )
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )
        last = self.mlp[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, init_log_z)

    def forward(self, context: Tensor) -> Tensor:
        """log Z(U) from the pooled context [B, H] (see `pool_context`); returns [B]."""
        return self.mlp(context).squeeze(-1)  # [B]

    def parameter_groups(self, base_lr: float, lr_multiplier: float = 10.0) -> list[dict[str, Any]]:
        """Optimizer param groups giving log Z its own, larger learning rate.

        Paper.md §8.2(a): lr ≈ 10× the base lr, since log Z must track the reward scale while
        the backbone moves slowly. Weight decay is 0 so it does not drag log Z towards 0.

        Args:
            base_lr: the backbone's learning rate.
            lr_multiplier: factor applied to base_lr for this head.

        Returns:
            One group dict, ready to pass to a torch optimizer with the backbone's groups.
        """
        return [
            {
                "params": list(self.parameters()),
                "lr": base_lr * lr_multiplier,
                "weight_decay": 0.0,
                "name": "log_z_head",
            }
        ]


class FlowHead(nn.Module):
    """log F(s_l) from each decoder hidden state, for DB and SubTB (paper.md §8.3).

    Only the non-terminal states s_0..s_{L-1} are predicted; the losses clamp log F(s_L) to
    log R. The hidden state at step l must be the one that predicts token t_{l+1}.

    Args:
        hidden: width H of the decoder hidden states.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, 1)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """log F(s_l) from decoder hidden states [B, L, H]; returns [B, L]."""
        return self.proj(hidden_states).squeeze(-1)  # [B, L]
