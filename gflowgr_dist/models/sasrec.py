"""SASRec: the self-attentive sequential recommender, our discriminative baseline.

Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018): item embeddings plus
learned positions go through causal transformer blocks, and the hidden state at position t
scores the item at t + 1 by a dot product with the (shared) item embeddings.

Two training losses are offered because published numbers disagree on which SASRec they mean:

- `bce`: one sampled negative per position, binary cross-entropy (the paper; the SASRec
  baseline of TIGER and P5).
- `ce`: softmax cross-entropy over the full catalogue (RecBole's default), markedly stronger
  under full-ranking evaluation.

Item ids are shifted by +1 inside the model so that 0 is padding; sequences are left-padded so
the most recent item always sits at the last position (and gets the same position embedding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_NEGATIVE_RESAMPLE_ROUNDS = 10


@dataclass
class SasRecConfig:
    """SASRec architecture and training settings.

    Attributes:
        hidden: embedding and model width.
        layers: transformer blocks.
        heads: attention heads (must divide hidden).
        dropout: dropout on embeddings, attention and feed-forward.
        max_len: longest history the model reads (older items are cut).
        loss: "bce" (one sampled negative, the paper) or "ce" (full softmax, RecBole).
        lr: Adam learning rate.
        batch_size: training windows per step.
        epochs: most epochs to train.
        patience: epochs without a better validation NDCG@10 before stopping.
        weight_decay: Adam L2 penalty.
        pre_norm: LayerNorm before attention/FFN (True) or after (False, post-LN).
        ffn_dim: feed-forward width; None means `hidden` as in the paper.
        window_stride: step between training windows of long sequences; None means max_len
            (windows do not overlap). Each target is trained on exactly once either way.
        eval_batch_size: users scored at once during evaluation.
        device: torch device.
        seed: seed of initialisation, shuffling and negative sampling.
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    loss: Literal["bce", "ce"] = "bce"
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    patience: int = 10
    weight_decay: float = 0.0
    pre_norm: bool = True
    ffn_dim: int | None = None
    window_stride: int | None = None
    eval_batch_size: int = 512
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "ce"):
            raise ValueError(f"loss={self.loss!r} is not one of 'bce', 'ce'")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.max_len < 1:
            raise ValueError(f"max_len={self.max_len} must be >= 1")
        if self.window_stride is not None and not 1 <= self.window_stride <= self.max_len:
            raise ValueError(f"window_stride={self.window_stride} must be in [1, max_len]")


def left_pad(histories: list[np.ndarray], max_len: int) -> torch.Tensor:
    """The last max_len items of each history, shifted by +1 and left-padded with 0.

    Args:
        histories: per user, item ids (0-based) in time order.
        max_len: output width.

    Returns:
        [B, max_len] int64.
    """
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = np.asarray(history, dtype=np.int64)[-max_len:]
        if tail.size:
            out[row, max_len - len(tail) :] = tail + 1
    return torch.from_numpy(out)


class SasRec(nn.Module):
    """Causal transformer over item sequences; scores items by dot product with embeddings."""

    def __init__(self, num_items: int, cfg: SasRecConfig) -> None:
        super().__init__()
        self.num_items = num_items
        self.cfg = cfg
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.emb_norm = nn.Identity() if cfg.pre_norm else nn.LayerNorm(cfg.hidden)
        block = nn.TransformerEncoderLayer(
            d_model=cfg.hidden,
            nhead=cfg.heads,
            dim_feedforward=cfg.ffn_dim or cfg.hidden,
            dropout=cfg.dropout,
            activation="relu",
            batch_first=True,
            norm_first=cfg.pre_norm,
        )
        self.encoder = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(cfg.hidden) if cfg.pre_norm else nn.Identity()
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        std = self.cfg.hidden**-0.5
        nn.init.normal_(self.item_emb.weight, std=std)
        nn.init.normal_(self.pos_emb.weight, std=std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def attention_mask(self, seq: torch.Tensor) -> torch.Tensor:
        """Causal mask that also hides padded keys; True means "may not attend".

        Every position may attend to itself, so padded rows never see an all-masked row (which
        would give NaN). Shape [B * heads, T, T], as nn.MultiheadAttention expects.
        """
        length = seq.shape[1]
        ones = torch.ones(length, length, dtype=torch.bool, device=seq.device)
        causal = torch.triu(ones, diagonal=1)  # [T, T]
        padded_key = (seq == 0)[:, None, :]  # [B, 1, T]
        mask = (causal[None] | padded_key) & ~torch.eye(length, dtype=torch.bool, device=seq.device)
        return mask.repeat_interleave(self.cfg.heads, dim=0)  # [B * heads, T, T]

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state of every position.

        Args:
            seq: shifted item ids, left-padded with 0, [B, T] with T <= max_len.

        Returns:
            [B, T, H]; the state at t summarises items up to and including t.
        """
        length = seq.shape[1]
        positions = torch.arange(self.cfg.max_len - length, self.cfg.max_len, device=seq.device)
        x = self.item_emb(seq) * self.cfg.hidden**0.5 + self.pos_emb(positions)[None]  # [B, T, H]
        x = self.emb_norm(self.emb_dropout(x))
        x = x * (seq != 0)[..., None]
        x = self.encoder(x, mask=self.attention_mask(seq))  # [B, T, H]
        return self.final_norm(x) * (seq != 0)[..., None]

    def loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Next-item loss averaged over positions with a target.

        Args:
            inputs: shifted item ids, left-padded, [B, T].
            targets: shifted next item of each position, 0 where no loss is taken, [B, T].
            generator: seeds negative sampling (bce only).

        Returns:
            Scalar loss.
        """
        hidden = self(inputs)  # [B, T, H]
        has_target = targets > 0  # [B, T]
        states = hidden[has_target]  # [N, H]
        positives = targets[has_target]  # [N]
        if self.cfg.loss == "ce":
            logits = states @ self.item_emb.weight[1:].T  # [N, I]
            return F.cross_entropy(logits, positives - 1)
        negatives = self.sample_negatives(inputs, targets, generator)[has_target]  # [N]
        pos_logit = (states * self.item_emb(positives)).sum(-1)  # [N]
        neg_logit = (states * self.item_emb(negatives)).sum(-1)  # [N]
        return (F.softplus(-pos_logit) + F.softplus(neg_logit)).mean()

    def sample_negatives(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One uniform negative per position, avoiding items of the same window.

        The paper avoids the user's whole history; the window is a close, cheap stand-in.
        Collisions left after a few redraws (possible only for tiny catalogues) are kept.

        Returns:
            Shifted item ids, [B, T].
        """
        seen = torch.cat([inputs, targets], dim=1)  # [B, 2T]
        shape = targets.shape
        negatives = torch.randint(1, self.num_items + 1, shape, generator=generator)
        negatives = negatives.to(targets.device)
        for _ in range(_NEGATIVE_RESAMPLE_ROUNDS):
            clash = (negatives[..., None] == seen[:, None, :]).any(-1)  # [B, T]
            if not clash.any():
                break
            fresh = torch.randint(1, self.num_items + 1, shape, generator=generator)
            negatives = torch.where(clash, fresh.to(targets.device), negatives)
        return negatives

    @torch.no_grad()
    def scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Score of every item for each history, in eval mode.

        Args:
            histories: per user, item ids (0-based) in time order; the last max_len are used.

        Returns:
            [B, I] float32 on the model's device; column i scores item i.
        """
        was_training = self.training
        self.eval()
        seq = left_pad(histories, self.cfg.max_len).to(self.item_emb.weight.device)  # [B, T]
        last = self(seq)[:, -1]  # [B, H]
        out = last @ self.item_emb.weight[1:].T  # [B, I]
        self.train(was_training)
        return out
