"""Ancestral sampling of semantic IDs under the trie: the on-policy sampler and GRPO's rollouts.

Each of the n samples per prompt walks the trie level by level, drawing the next code from the
backbone's softmax restricted to the codes the trie allows there, sharpened or flattened by a
temperature. Every sample is a valid ID by construction. The prompt is read once and its KV cache
fanned out to the n samples.
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
    batch = log_probs.shape[0]
    rows = torch.arange(batch).repeat_interleave(num_samples)  # [B*n]
    log_probs = log_probs[rows]
    nodes = trie.root(len(rows))
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

        # Feed the drawn token (the first step also fans the prompt cache out).
        if level + 1 < vocab.num_levels:
            log_probs, state = stepper.advance(state, rows, code + vocab.offsets[level])
            rows = torch.arange(len(code))
    return torch.stack(codes, dim=1).view(batch, num_samples, -1)
