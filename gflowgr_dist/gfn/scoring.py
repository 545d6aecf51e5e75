"""Teacher-forced log P_F of many semantic-ID trajectories per example, with the SFT loss.

A GFlowGR step needs, for each training example (history U, positive v) and its N augmented
items, log P_F(s_{l+1} | s_l) of every code of every trajectory, plus the SFT loss of the
positive. No rollout is needed: the trajectories are fixed code sequences (paper.md §7).

Decoder-only backbones train on packed windows (models/prompts.py): one row holds up to
`max_history + 1` items of a user and every item in its last `num_targets` positions is a
target, its history the items before it. Re-reading that history once per augmented item would
cost a forward pass per trajectory. Instead each augmented trajectory is appended to the row as
a short *branch* of L-1 tokens that attends, through a 4-D attention mask, to the window tokens
before its target and to its own earlier tokens, with position ids continuing from the target's
start. One forward pass then gives:

- the window's next-token logits: SFT loss and the positive's log P_F;
- each branch's logits: the augmented trajectories' log P_F at levels 1..L-1 (level 0 shares
  the logits of the state s_0 just before the target, which is the same state for all).

The forward policy is the backbone's softmax restricted to the trie at each level
(log P_F = logit − logsumexp over the codes the trie allows there), so P_F sums to one over
valid IDs, which is what a GFlowNet over the prefix tree needs. SFT keeps the full softmax.

T5 backbones read the history in the encoder once and score the 1 + N target sequences in the
decoder with the encoder output shared (repeated per trajectory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from gflowgr_dist.gfn.heads import pool_context
from gflowgr_dist.models.prompts import IGNORE, Window, encoder_prompts
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.semantic_ids.trie import SidTrie

PAD_SEGMENT = -1


@dataclass
class ScoredTrajectories:
    """Outputs of one packed forward pass.

    Attributes:
        loss_sft: mean next-token cross-entropy of the positives' tokens, scalar.
        log_pf: log P_F of each chosen code, [E, T, L] (T = 1 + N, column 0 the positive).
        hidden: the hidden state that predicts each code, [E, T, L, H] (for flow heads).
        context: the hidden state of s_0 (the prompt's summary), [E, H] (for log Z heads).
    """

    loss_sft: Tensor
    log_pf: Tensor
    hidden: Tensor
    context: Tensor


def window_targets(windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
    """(window index [E], item position in its window [E]) of every target, in order."""
    rows = [np.full(w.num_targets, i) for i, w in enumerate(windows)]
    cols = [np.arange(len(w.items) - w.num_targets, len(w.items)) for w in windows]
    return np.concatenate(rows), np.concatenate(cols)


def score_decoder_windows(
    model: PreTrainedModel,
    windows: list[Window],
    augmented: np.ndarray,
    sid_tokens: np.ndarray,
    vocab: SidVocab,
    trie: SidTrie,
    codes: np.ndarray,
    user_tokens: list[int | None] | None = None,
    positions: np.ndarray | None = None,
) -> ScoredTrajectories:
    """Scores the targets of `windows` and their augmented items in one forward pass.

    Args:
        windows: training windows; the SFT loss covers all their targets.
        augmented: augmented items per example, [E, N] (N may be 0).
        positions: (window, item position) of the E examples, [E, 2]; None: every target of
            every window, in `window_targets` order.
        sid_tokens: token ids of every item's ID, [I, L].
        codes: codes of every item's ID, [I, L] (for the trie).
    """
    rows, cols = window_targets(windows) if positions is None else positions.T
    targets = np.array([windows[r].items[c] for r, c in zip(rows, cols, strict=True)])
    items = np.concatenate([targets[:, None], augmented], axis=1)  # [E, T]
    packed = _pack(windows, rows, cols, items, sid_tokens, vocab, user_tokens)
    device = next(model.parameters()).device
    mask = _attention_mask(packed["segment"], packed["limit"], model.dtype).to(device)

    # One forward pass through the body, then the LM head on the states we need.
    body = model.get_decoder()
    hidden = body(
        input_ids=packed["input_ids"].to(device),
        attention_mask=mask,
        position_ids=packed["position_ids"].to(device),
    ).last_hidden_state  # [B, S, H]
    head = model.get_output_embeddings()
    loss_sft = _sft_loss(head, hidden, packed["labels"].to(device))

    # The state predicting each code of each trajectory, then log P_F under the trie.
    at = packed["step_position"].to(device)  # [E, T, L]
    row = torch.tensor(rows, device=device)[:, None, None].expand_as(at)
    step_hidden = hidden[row, at]  # [E, T, L, H]
    logits = head(step_hidden).float()  # [E, T, L, V]
    log_pf = trie_log_pf(logits, torch.as_tensor(codes[items], device=device), vocab, trie)
    context = step_hidden[:, 0, 0]  # [E, H]: s_0, shared by all T trajectories
    return ScoredTrajectories(loss_sft, log_pf, step_hidden, context)


def trie_log_pf(logits: Tensor, codes: Tensor, vocab: SidVocab, trie: SidTrie) -> Tensor:
    """log P_F of each code with the softmax restricted to the codes the trie allows.

    logits [E, T, L, V] (full vocabulary, the step predicting code l at [..., l, :]),
    codes [E, T, L] -> [E, T, L].
    """
    count, width, levels = codes.shape
    flat = codes.reshape(-1, levels).cpu()  # [E*T, L]
    nodes = trie.root(flat.shape[0])
    out = []
    for level in range(levels):
        # Allowed codes after this prefix; renormalise the level's logits over them.
        allowed = trie.allowed(nodes, level).to(logits.device)  # [E*T, K]
        level_logits = logits[:, :, level, vocab.level_slice(level)].reshape(len(flat), -1)
        level_logits = level_logits.masked_fill(~allowed, float("-inf"))
        chosen = flat[:, level].to(logits.device)
        picked = level_logits.gather(1, chosen[:, None]).squeeze(1)
        out.append(picked - torch.logsumexp(level_logits, dim=1))
        nodes = trie.step(nodes, level, flat[:, level])
    return torch.stack(out, dim=1).view(count, width, levels)


def _sft_loss(head: torch.nn.Module, hidden: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over labelled positions (labels [B, S], IGNORE elsewhere)."""
    shift = labels[:, 1:]  # [B, S-1]
    keep = shift != IGNORE
    logits = head(hidden[:, :-1][keep]).float()  # [M, V]
    return torch.nn.functional.cross_entropy(logits, shift[keep])


def _pack(
    windows: list[Window],
    rows: np.ndarray,
    cols: np.ndarray,
    items: np.ndarray,
    sid_tokens: np.ndarray,
    vocab: SidVocab,
    user_tokens: list[int | None] | None,
) -> dict[str, torch.Tensor]:
    """Token rows (window + branches), their segments and the position of every step."""
    levels = vocab.num_levels
    branch = levels - 1  # tokens per augmented trajectory
    heads = [
        [vocab.bos_id] + ([] if not user_tokens or user_tokens[i] is None else [user_tokens[i]])
        for i in range(len(windows))
    ]
    lengths = [len(h) + len(w.items) * levels for h, w in zip(heads, windows, strict=True)]
    per_window = np.bincount(rows, minlength=len(windows))  # targets per window
    extra = items.shape[1] - 1
    width = max(n + t * extra * branch for n, t in zip(lengths, per_window, strict=True))
    shape = (len(windows), width)
    ids = torch.full(shape, vocab.pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position = torch.zeros(shape, dtype=torch.long)
    segment = torch.full(shape, PAD_SEGMENT, dtype=torch.long)
    limit = torch.zeros(shape, dtype=torch.long)
    step = torch.zeros((len(rows), items.shape[1], levels), dtype=torch.long)
    cursor = list(lengths)
    for w, (window, head) in enumerate(zip(windows, heads, strict=True)):
        # The window itself: causal, labels on its targets.
        tokens = head + sid_tokens[window.items].reshape(-1).tolist()
        n = len(tokens)
        ids[w, :n] = torch.tensor(tokens)
        position[w, :n] = torch.arange(n)
        segment[w, :n] = 0
        first = len(head) + (len(window.items) - window.num_targets) * levels
        labels[w, first:n] = ids[w, first:n]
    for e, (w, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        # Positive: code l is predicted from the token before it in the window.
        start = len(heads[w]) + c * levels  # position of the target's first token
        step[e, 0] = torch.arange(start - 1, start - 1 + levels)
        for t in range(1, items.shape[1]):
            # Augmented branch: L-1 tokens after the history before the target.
            at = cursor[w]
            cursor[w] += branch
            ids[w, at : at + branch] = torch.from_numpy(sid_tokens[items[e, t], :branch])
            position[w, at : at + branch] = torch.arange(start, start + branch)
            segment[w, at : at + branch] = e * extra + t
            limit[w, at : at + branch] = start
            step[e, t, 0] = start - 1
            step[e, t, 1:] = torch.arange(at, at + branch)
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": position,
        "segment": segment,
        "limit": limit,
        "step_position": step,
    }


def _attention_mask(segment: Tensor, limit: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive 4-D mask [B, 1, S, S]: window tokens are causal; a branch token sees the
    window before its target and its own branch up to itself; padding sees only itself."""
    size = segment.shape[1]
    index = torch.arange(size)
    causal = index[None, :] <= index[:, None]  # [S(q), S(k)]
    q_seg, k_seg = segment[:, :, None], segment[:, None, :]  # [B, S, 1], [B, 1, S]
    window_q, window_k = q_seg == 0, k_seg == 0
    own = window_q & window_k & causal
    history = (q_seg > 0) & window_k & (index[None, None, :] < limit[:, :, None])
    branch = (q_seg > 0) & (k_seg == q_seg) & causal
    pad_self = (q_seg == PAD_SEGMENT) & torch.eye(size, dtype=torch.bool)
    allowed = own | history | branch | pad_self  # [B, S, S]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def score_seq2seq(
    model: PreTrainedModel,
    histories: list[np.ndarray],
    items: np.ndarray,
    sid_tokens: np.ndarray,
    vocab: SidVocab,
    trie: SidTrie,
    codes: np.ndarray,
    user_tokens: list[int | None] | None = None,
) -> ScoredTrajectories:
    """T5: encoder once per example, decoder over the 1 + N trajectories (items [E, T])."""
    count, width = items.shape
    device = next(model.parameters()).device
    prompts = encoder_prompts(histories, sid_tokens, vocab, user_tokens)
    enc_mask = prompts["attention_mask"].to(device)
    encoded = model.get_encoder()(
        input_ids=prompts["input_ids"].to(device), attention_mask=enc_mask
    ).last_hidden_state  # [E, S, H]

    # Decoder over every trajectory, the encoder output repeated per trajectory.
    eos = np.full((count, width, 1), vocab.eos_id)
    labels = torch.from_numpy(np.concatenate([sid_tokens[items], eos], axis=2)).to(device)
    labels = labels.view(count * width, -1)  # [E*T, L+1]
    out = model(
        encoder_outputs=(encoded.repeat_interleave(width, dim=0),),
        attention_mask=enc_mask.repeat_interleave(width, dim=0),
        labels=labels,
        output_hidden_states=True,
    )
    logits = out.logits.float().view(count, width, -1, out.logits.shape[-1])  # [E, T, L+1, V]
    positive = logits[:, 0].reshape(-1, logits.shape[-1])  # [E*(L+1), V]
    positive_labels = labels.view(count, width, -1)[:, 0].reshape(-1)
    loss_sft = torch.nn.functional.cross_entropy(positive, positive_labels)
    levels = vocab.num_levels
    log_pf = trie_log_pf(logits[:, :, :levels], torch.as_tensor(codes[items]), vocab, trie)
    hidden = out.decoder_hidden_states[-1].view(count, width, levels + 1, -1)[:, :, :levels]
    context = pool_context(encoded, enc_mask)  # [E, H]
    return ScoredTrajectories(loss_sft, log_pf, hidden, context)
