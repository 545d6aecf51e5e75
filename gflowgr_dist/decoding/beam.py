"""Trie-constrained beam search, vectorised over batch × beams.

At each level every beam's next-code distribution is masked by the tensor trie (one gather for
the whole batch), the W best (beam, code) pairs over all W × K candidates survive, and the KV
cache follows them by row index. Every returned semantic ID is valid by construction. IDs have a
fixed length L, so there is no length penalty and no early stop; the score of an ID is
sum_l log P(t_l | prompt, t_<l) over the full vocabulary, as in transformers' beam search with
`length_penalty=0`.

Beam search can miss an item whose prefix falls out of the top W early; `exact.py` scores every
ID and is the oracle (with W at least the number of IDs nothing is pruned and the two agree).

`banned` IDs (e.g. items the user has already seen) are pruned at every level: a prefix whose
every completion is banned is masked like an invalid one, so the W surviving beams all end in
admissible IDs (filtering afterwards would leave fewer than W, and hand beams to dead prefixes).
"""

from __future__ import annotations

import torch

from gflowgr_dist.decoding.steppers import Stepper
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.semantic_ids.trie import SidTrie

NEG_INF = float("-inf")


def beam_search(
    stepper: Stepper,
    prompts: dict[str, torch.Tensor],
    trie: SidTrie,
    vocab: SidVocab,
    *,
    beam_width: int,
    banned: torch.Tensor | None = None,
    trie_normalised: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `beam_width` best valid semantic IDs per prompt, none of them `banned`.

    Args:
        banned: optional [B, S] bool over the trie's ID rows (`trie.sids`), True = never return.
        trie_normalised: score codes by the softmax restricted to the trie's allowed codes (the
            GFlowNet forward policy P_F) instead of the full-vocabulary softmax.

    Returns:
        (codes [B, W, L] int64, scores [B, W] float32, best first; -inf marks an empty beam
        when fewer than W IDs exist)
    """
    log_probs, state = stepper.start(prompts)  # [B, V]
    batch = log_probs.shape[0]
    nodes = trie.root(batch)[:, None]  # [B, 1]
    scores = torch.zeros(batch, 1)  # [B, 1]: one empty beam per prompt
    codes = torch.zeros(batch, 1, 0, dtype=torch.long)  # [B, 1, 0]
    rows = tokens = None
    alive = None if banned is None else trie.alive_nodes(~banned)
    for level in range(vocab.num_levels):
        # Advance the cache along the surviving beams (level 0 reads the prompt's output).
        width = scores.shape[1]
        if rows is not None:
            log_probs, state = stepper.advance(state, rows, tokens)

        # Score every (beam, allowed code) pair; invalid continuations get -inf.
        size = vocab.codebook_sizes[level]
        step = log_probs[:, vocab.level_slice(level)].cpu().view(batch, width, size)
        allowed = trie.allowed(nodes.view(-1), level).view(batch, width, size)
        if trie_normalised:
            step = restrict_to_allowed(step, allowed)
        if alive is not None:
            allowed &= _alive_children(trie, nodes, level, alive[level])
        candidates = (scores[:, :, None] + step).masked_fill(~allowed, NEG_INF)

        # Keep the best W over all width × size candidates.
        scores, flat = candidates.view(batch, -1).topk(min(beam_width, width * size), dim=1)
        parent, code = flat // size, flat % size  # [B, W']
        codes = torch.cat([codes.gather(1, _expand(parent, level)), code[..., None]], dim=2)
        nodes = trie.step(nodes.gather(1, parent).view(-1), level, code.view(-1))
        nodes = nodes.view(batch, -1)
        rows = (torch.arange(batch)[:, None] * width + parent).view(-1)
        tokens = (code + vocab.offsets[level]).view(-1)
    return codes, scores


def _expand(parent: torch.Tensor, level: int) -> torch.Tensor:
    return parent[..., None].expand(-1, -1, level)


def _alive_children(
    trie: SidTrie, nodes: torch.Tensor, level: int, alive: torch.Tensor
) -> torch.Tensor:
    """Whether each child of each beam still leads to an admissible ID.

    nodes [B, W] at depth `level`, alive [B, N_{level+1}] -> [B, W, K_level].
    """
    batch, width = nodes.shape
    children = trie.children[level][nodes.view(-1).clamp(min=0)].long()  # [B*W, K]
    ok = alive.gather(1, children.clamp(min=0).view(batch, -1))  # [B, W*K]
    return ok.view(batch, width, -1)


def restrict_to_allowed(log_probs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log-softmax over the allowed codes only (last dim); rows with none allowed stay -inf."""
    masked = log_probs.masked_fill(~allowed, NEG_INF)
    norm = torch.logsumexp(masked, dim=-1, keepdim=True)
    return torch.where(allowed, masked - norm.nan_to_num(neginf=0.0), masked)
