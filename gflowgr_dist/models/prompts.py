"""Token tensors for training and decoding, built from item histories (see vocab.py).

Training a decoder-only model on one (history, target) example at a time re-reads the same
history for every target. Instead a user's training sequence is cut into windows of up to
`max_history + 1` items and every window trains several targets at once (causal attention makes
each target see only the items before it). Windows end every `stride` items from the end; a
window's loss covers its last `stride` items, so every training target is learnt exactly once,
with between `max_history + 1 - stride` and `max_history` items of history. `stride = 1` is the
per-example regime; larger strides trade history length for speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gflowgr_dist.models.vocab import SidVocab

IGNORE = -100


@dataclass
class Window:
    """A run of one user's items; the last `num_targets` of them carry loss."""

    user: int
    items: np.ndarray  # [w]
    num_targets: int


def training_windows(
    sequences: list[np.ndarray], users: list[int], max_history: int, stride: int
) -> list[Window]:
    """Windows covering every training target (positions 1..m-1 of each sequence) once."""
    width = max_history + 1
    stride = max(1, min(stride, width - 1))
    windows = []
    for user, seq in zip(users, sequences, strict=True):
        end = len(seq)
        while end > 1:
            start = max(0, end - width)
            first_target = max(end - stride, start + 1)
            windows.append(Window(user, seq[start:end], end - first_target))
            end = first_target
    return windows


def collate_decoder_windows(
    windows: list[Window],
    sid_tokens: np.ndarray,
    vocab: SidVocab,
    user_tokens: list[int | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`, `labels` [B, T] for a causal LM."""
    rows, labels = [], []
    for index, window in enumerate(windows):
        head = [vocab.bos_id] + _user(user_tokens, index)
        body = sid_tokens[window.items].reshape(-1).tolist()  # [w * L]
        label = [IGNORE] * len(head) + body
        cut = len(head) + (len(window.items) - window.num_targets) * vocab.num_levels
        label[:cut] = [IGNORE] * cut
        rows.append(head + body)
        labels.append(label)
    return _pad_right(rows, labels, vocab.pad_id)


def collate_seq2seq(
    histories: list[np.ndarray],
    targets: np.ndarray,
    sid_tokens: np.ndarray,
    vocab: SidVocab,
    user_tokens: list[int | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Encoder `input_ids`/`attention_mask` and decoder `labels` (target tokens + <eos>)."""
    batch = encoder_prompts(histories, sid_tokens, vocab, user_tokens)
    eos = np.full((len(targets), 1), vocab.eos_id)
    labels = np.concatenate([sid_tokens[targets], eos], axis=1)  # [B, L + 1]
    return batch | {"labels": torch.from_numpy(labels.astype(np.int64))}


def decoder_prompts(
    histories: list[np.ndarray],
    sid_tokens: np.ndarray,
    vocab: SidVocab,
    user_tokens: list[int | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation: `input_ids`, `attention_mask`, `position_ids`."""
    rows = [
        [vocab.bos_id] + _user(user_tokens, i) + sid_tokens[h].reshape(-1).tolist()
        for i, h in enumerate(histories)
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}


def encoder_prompts(
    histories: list[np.ndarray],
    sid_tokens: np.ndarray,
    vocab: SidVocab,
    user_tokens: list[int | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded encoder inputs for a T5 backbone."""
    rows = [
        _user(user_tokens, i) + sid_tokens[h].reshape(-1).tolist() + [vocab.eos_id]
        for i, h in enumerate(histories)
    ]
    batch = _pad_right(rows, rows, vocab.pad_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding), [B, T]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _user(user_tokens: list[int | None] | None, index: int) -> list[int]:
    if user_tokens is None or user_tokens[index] is None:
        return []
    return [int(user_tokens[index])]


def _pad_right(rows: list[list[int]], labels: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, : len(label)] = torch.tensor(label)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}
