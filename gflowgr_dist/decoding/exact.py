"""Exact full-catalogue scoring: the log-likelihood of every valid semantic ID for each prompt.

The trie is walked level by level: every depth-l node's log-probabilities come from one cached
decoding step of its parent, so a prompt costs one model step per trie node (sum_l N_l rows),
not one forward pass per item. It is the oracle beam search is tested against, and a ranker
where the catalogue is small enough (ML-100K: about 2,600 node steps per user).

Rows in flight are B × N_l; users are processed in chunks so that B × max_l N_l stays under
`max_rows`, which bounds the KV-cache memory (rows × prompt length × layers × kv width).
"""

from __future__ import annotations

import torch

from gflowgr_dist.decoding.beam import restrict_to_allowed
from gflowgr_dist.decoding.steppers import Stepper
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.semantic_ids.trie import SidTrie


def users_per_chunk(trie: SidTrie, max_rows: int) -> int:
    """How many prompts fit one exact-scoring pass under the row budget."""
    widest = max(int(trie.edges(level)[0].numel()) for level in range(trie.num_levels))
    return max(1, max_rows // widest)


def exact_sid_scores(
    stepper: Stepper,
    prompts: dict[str, torch.Tensor],
    trie: SidTrie,
    vocab: SidVocab,
    trie_normalised: bool = False,
) -> torch.Tensor:
    """Log-likelihood of every ID in the trie, [B, S] (columns follow `trie.sids`).

    With `trie_normalised` each level's softmax is restricted to the codes the trie allows.
    """
    log_probs, state = stepper.start(prompts)  # [B, V]
    batch = log_probs.shape[0]
    node_scores = torch.zeros(batch, 1)  # [B, N_0 = 1]: the root
    for level in range(vocab.num_levels):
        # Score every depth-(level+1) node from its parent's next-token distribution.
        parent, code = trie.edges(level)  # [N]
        width = node_scores.shape[1]
        level_probs = log_probs.cpu().view(batch, width, -1)[:, :, vocab.level_slice(level)]
        if trie_normalised:
            allowed = (trie.children[level] >= 0)[None].expand(batch, -1, -1)  # [B, N_l, K]
            level_probs = restrict_to_allowed(level_probs, allowed)
        step = level_probs[:, parent, code]
        node_scores = node_scores[:, parent] + step  # [B, N]

        # Feed each node's token to get the next level's distributions.
        if level + 1 < vocab.num_levels:
            rows = (torch.arange(batch)[:, None] * width + parent[None, :]).view(-1)
            tokens = (vocab.offsets[level] + code).repeat(batch)
            log_probs, state = stepper.advance(state, rows, tokens)
    scores = torch.empty_like(node_scores)
    scores[:, trie.leaf_sid] = node_scores  # node order -> `trie.sids` order
    return scores
