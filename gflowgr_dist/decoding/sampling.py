"""Ancestral sampling of semantic IDs under the trie: the on-policy sampler and GRPO's rollouts.

Each of the n samples per prompt walks the trie level by level, drawing the next code from the
backbone's softmax restricted to the codes the trie allows there, sharpened or flattened by a
temperature. Every sample is a valid ID by construction. The prompt is read once and its KV cache
fanned out to the n samples. Prompts that are prefixes of training windows can instead be
read window by window (`sample_sids_in_windows`): one forward pass per window serves all its
targets, so a window with k targets costs one prefill rather than k.
"""

from __future__ import annotations

import torch

from gflowgr_dist.decoding.steppers import Stepper
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.semantic_ids.trie import SidTrie


def sample_sids(
    stepper: Stepper,
    prompts: dict[str, torch.Tensor],
    trie: SidTrie,
    vocab: SidVocab,
    *,
    num_samples: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`num_samples` IDs per prompt, drawn from P_F^(1/temperature) under the trie.

    `temperature=0` is greedy decoding under the trie (argmax at every level): the reference a
    rollout engine's greedy output is checked against after a weight sync.

    Returns:
        codes [B, n, L] int64.
    """
    log_probs, state = stepper.start(prompts)  # [B, V]
    return _sample(stepper, log_probs, state, trie, vocab, num_samples, temperature, generator)


@torch.no_grad()
def sample_sids_in_windows(
    stepper: Stepper,
    windows: dict[str, torch.Tensor],
    rows: torch.Tensor,
    starts: torch.Tensor,
    trie: SidTrie,
    vocab: SidVocab,
    *,
    num_samples: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`sample_sids` for the E prompts window[rows[e]][:starts[e]], decoder backbones only.

    windows: right-padded `input_ids` / `attention_mask` [W, S] of training windows; starts:
    the position of each example's target's first token. Each window is read once. The samples
    of all its targets then grow as one-token branches appended to the window's own cache, each
    attending (4-D mask) to the window before its target and to its own earlier codes, at the
    positions it would have alone. The cache stays one row per window, so no per-sample copy
    of the history is made.

    Returns:
        codes [E, n, L] int64, the draws `sample_sids` makes from those prompts.
    """
    if stepper.encoder_decoder:
        raise ValueError("sample_sids_in_windows needs a decoder-only backbone")
    device = stepper.device
    padding = windows["attention_mask"].to(device)
    out = stepper.model(
        input_ids=windows["input_ids"].to(device),
        attention_mask=padding,
        position_ids=(padding.long().cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
    )
    rows, starts = rows.to(device), starts.to(device)
    branches = _Branches(rows, starts, padding.bool(), num_samples)
    log_probs = out.logits[rows, starts - 1].float().log_softmax(-1)  # [E, V]

    def advance(level: int, tokens: torch.Tensor) -> torch.Tensor:
        ids, position, mask = branches.step(level, tokens, vocab.pad_id, stepper.model.dtype)
        step = stepper.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
        return step.logits[branches.window, branches.slot].float().log_softmax(-1)

    codes = _walk(log_probs, advance, trie, vocab, num_samples, temperature, generator)
    return codes.view(len(rows), num_samples, -1)


class _Branches:
    """Where each of the R = E * n samples lives in its window's row, and the masks of its
    branch tokens (see `sample_sids_in_windows`)."""

    def __init__(self, rows: torch.Tensor, starts: torch.Tensor, padding: torch.Tensor, n: int):
        self.window = rows.repeat_interleave(n)  # [R]
        self.start = starts.repeat_interleave(n)  # [R]
        counts = torch.bincount(self.window, minlength=padding.shape[0])  # [W]
        order = self.window.argsort(stable=True)
        self.slot = torch.empty_like(self.window)
        first = (counts.cumsum(0) - counts)[self.window[order]]
        self.slot[order] = torch.arange(len(order), device=rows.device) - first  # [R]
        self.width = int(counts.max())
        self.num_windows, self.size = padding.shape
        index = torch.arange(self.size, device=rows.device)
        # Window keys each sample may read: its window's tokens before its target. [R, S]
        self.history = padding[self.window] & (index[None, :] < self.start[:, None])

    def step(self, level: int, tokens: torch.Tensor, pad_id: int, dtype: torch.dtype):
        """Input ids and positions [W, width] and the additive mask [W, 1, width, K] that append
        each sample's level-`level` token (K = S + (level + 1) * width keys)."""
        width = self.width
        shape = (self.num_windows, width)
        ids = torch.full(shape, pad_id, dtype=torch.long, device=tokens.device)
        ids[self.window, self.slot] = tokens
        position = torch.zeros(shape, dtype=torch.long, device=tokens.device)
        position[self.window, self.slot] = self.start + level
        keys = self.size + (level + 1) * width
        allowed = torch.zeros((*shape, keys), dtype=torch.bool, device=tokens.device)
        allowed[self.window, self.slot, : self.size] = self.history
        slots = torch.arange(width, device=tokens.device)
        for earlier in range(level + 1):
            # Each slot's own branch tokens (empty slots see only themselves).
            allowed[:, slots, self.size + earlier * width + slots] = True
        mask = torch.zeros(allowed.shape, dtype=dtype, device=tokens.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return ids, position, mask[:, None]


def _sample(
    stepper: Stepper,
    log_probs: torch.Tensor,
    state,
    trie: SidTrie,
    vocab: SidVocab,
    num_samples: int,
    temperature: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Walks the trie from started prompts (log_probs [B, V]) over the stepper's cache."""
    batch = log_probs.shape[0]
    fan_out = torch.arange(batch).repeat_interleave(num_samples)  # [B*n]

    def advance(level: int, tokens: torch.Tensor) -> torch.Tensor:
        nonlocal state
        # The first step fans each prompt's cache out to its n samples; later ones continue
        # every row in place.
        log_probs, state = stepper.advance(state, fan_out if level == 0 else None, tokens)
        return log_probs

    codes = _walk(log_probs, advance, trie, vocab, num_samples, temperature, generator)
    return codes.view(batch, num_samples, -1)


def _walk(
    log_probs: torch.Tensor,
    advance,
    trie: SidTrie,
    vocab: SidVocab,
    num_samples: int,
    temperature: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Draws n codes per prompt level by level (log_probs [B, V] of level 0); `advance(level,
    tokens [B*n])` feeds the drawn tokens and returns the next level's log-probs [B*n, V].
    Returns codes [B*n, L]."""
    log_probs = log_probs.repeat_interleave(num_samples, dim=0)  # [B*n, V]
    nodes = trie.root(len(log_probs))
    codes = []
    for level in range(vocab.num_levels):
        # Restrict to the trie, temper, draw one code per row (argmax when greedy).
        logits = log_probs[:, vocab.level_slice(level)].cpu()
        logits = logits.masked_fill(~trie.allowed(nodes, level), float("-inf"))
        if temperature == 0:
            code = logits.argmax(dim=-1)
        else:
            probs = (logits / temperature).softmax(dim=-1)
            code = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        codes.append(code)
        nodes = trie.step(nodes, level, code)

        # Feed the drawn token and read the next level.
        if level + 1 < vocab.num_levels:
            log_probs = advance(level, code + vocab.offsets[level])
    return torch.stack(codes, dim=1)
