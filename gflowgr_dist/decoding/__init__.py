"""Decoding: from a trained backbone and user histories to ranked items.

`ItemRanker` turns semantic IDs into items (an ID shared by several items recommends all of
them, with the ID's score) and drops excluded items, for both rankers:

- `beam`: trie-constrained beam search (beam.py), the way TIGER, LETTER and LC-Rec decode;
- `exact`: every ID's log-likelihood (exact.py), the oracle and an exact ranker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from gflowgr_dist.decoding.beam import beam_search
from gflowgr_dist.decoding.exact import exact_sid_scores, users_per_chunk
from gflowgr_dist.decoding.steppers import Stepper
from gflowgr_dist.models.prompts import decoder_prompts, encoder_prompts
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.semantic_ids.table import SemanticIdTable
from gflowgr_dist.semantic_ids.trie import SidTrie

PAD = -1


@dataclass
class Ranking:
    """Top-K items per user: `items` [U, K] (PAD = -1 where fewer exist), `scores` [U, K]."""

    items: np.ndarray
    scores: np.ndarray


class ItemRanker:
    """Ranks catalogue items for user histories with a generative backbone."""

    def __init__(
        self,
        model: PreTrainedModel,
        vocab: SidVocab,
        table: SemanticIdTable,
        trie: SidTrie | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.table = table
        self.trie = trie or SidTrie(table.codes, table.codebook_sizes)
        self.stepper = Stepper(model)
        self.sid_tokens = vocab.item_tokens(table.codes)  # [I, L]
        self.sid_of_item = self.trie.sid_index(torch.from_numpy(table.codes)).numpy()  # [I]
        self.items_by_sid = _group_items(self.sid_of_item, self.trie.num_sids)  # [S, G]
        self.group_sizes = np.bincount(self.sid_of_item, minlength=self.trie.num_sids)  # [S]

    def prompts(
        self, histories: list[np.ndarray], user_tokens: list[int | None] | None = None
    ) -> dict[str, torch.Tensor]:
        build = encoder_prompts if self.stepper.encoder_decoder else decoder_prompts
        return build(histories, self.sid_tokens, self.vocab, user_tokens)

    def rank(
        self,
        histories: list[np.ndarray],
        k: int,
        *,
        ranker: str = "beam",
        beam_width: int = 20,
        exclude: list[np.ndarray] | None = None,
        user_tokens: list[int | None] | None = None,
        trie_normalised: bool = False,
    ) -> Ranking:
        """Top-k items for one batch of histories."""
        was_training = self.model.training
        self.model.eval()
        try:
            prompts = self.prompts(histories, user_tokens)
            if ranker == "exact":
                sid_scores = exact_sid_scores(
                    self.stepper, prompts, self.trie, self.vocab, trie_normalised
                )
                item_scores = sid_scores[:, torch.from_numpy(self.sid_of_item)].numpy()
                return _top_items(np.arange(item_scores.shape[1]), item_scores, k, exclude)
            codes, scores = beam_search(
                self.stepper,
                prompts,
                self.trie,
                self.vocab,
                beam_width=beam_width,
                banned=None if exclude is None else self.banned_sids(exclude),
                trie_normalised=trie_normalised,
            )
            return self._expand_beams(codes, scores, k, exclude)
        finally:
            self.model.train(was_training)

    def rank_all(
        self,
        histories: list[np.ndarray],
        k: int,
        *,
        ranker: str = "beam",
        beam_width: int = 20,
        batch_size: int = 64,
        exclude: list[np.ndarray] | None = None,
        user_tokens: list[int | None] | None = None,
        progress: bool = False,
        max_exact_rows: int = 4096,
        trie_normalised: bool = False,
    ) -> Ranking:
        """`rank` over many users in batches (exact scoring batches by its row budget)."""
        if ranker == "exact":
            batch_size = min(batch_size, users_per_chunk(self.trie, max_exact_rows))
        parts = []
        starts = range(0, len(histories), batch_size)
        for start in tqdm(starts, desc=f"rank ({ranker})", disable=not progress, leave=False):
            stop = start + batch_size
            parts.append(
                self.rank(
                    histories[start:stop],
                    k,
                    ranker=ranker,
                    beam_width=beam_width,
                    exclude=None if exclude is None else exclude[start:stop],
                    user_tokens=None if user_tokens is None else user_tokens[start:stop],
                    trie_normalised=trie_normalised,
                )
            )
        return Ranking(
            np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts])
        )

    def banned_sids(self, exclude: list[np.ndarray]) -> torch.Tensor:
        """[B, S] mask of IDs all of whose items are excluded (an ID shared with an allowed
        item stays: the allowed item is still a recommendation)."""
        banned = torch.zeros(len(exclude), self.trie.num_sids, dtype=torch.bool)
        for row, items in enumerate(exclude):
            sids, counts = np.unique(self.sid_of_item[np.unique(items)], return_counts=True)
            banned[row, torch.from_numpy(sids[counts == self.group_sizes[sids]])] = True
        return banned

    def _expand_beams(
        self,
        codes: torch.Tensor,
        scores: torch.Tensor,
        k: int,
        exclude: list[np.ndarray] | None,
    ) -> Ranking:
        """Beams [B, W, L] -> items: each ID expands to all its items, in beam order."""
        batch, width, _ = codes.shape
        sid = self.trie.sid_index(codes.view(batch * width, -1)).view(batch, width).numpy()
        groups = self.items_by_sid[np.maximum(sid, 0)]  # [B, W, G]
        item_scores = np.repeat(scores.numpy()[:, :, None], groups.shape[2], axis=2)
        item_scores[(groups == PAD) | (sid[:, :, None] < 0)] = -np.inf
        return _top_items(groups.reshape(batch, -1), item_scores.reshape(batch, -1), k, exclude)


def _group_items(sid_of_item: np.ndarray, num_sids: int) -> np.ndarray:
    """Items behind each ID, [S, G] padded with PAD (G = largest group)."""
    order = np.argsort(sid_of_item, kind="stable")
    counts = np.bincount(sid_of_item, minlength=num_sids)
    groups = np.full((num_sids, max(1, counts.max())), PAD, dtype=np.int64)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    groups[sid_of_item[order], rank] = order
    return groups


def _top_items(
    items: np.ndarray, scores: np.ndarray, k: int, exclude: list[np.ndarray] | None
) -> Ranking:
    """Best k (item, score) pairs per row; ties keep the given order. items: [I] or [B, C]."""
    scores = scores.astype(np.float64, copy=True)
    items = np.broadcast_to(items, scores.shape)
    if exclude is not None:
        for row, banned in enumerate(exclude):
            scores[row, np.isin(items[row], banned)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_items = np.take_along_axis(items, order, axis=1).copy()
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_items[~np.isfinite(top_scores)] = PAD
    if top_items.shape[1] < k:
        pad = k - top_items.shape[1]
        top_items = np.pad(top_items, ((0, 0), (0, pad)), constant_values=PAD)
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return Ranking(top_items, top_scores.astype(np.float32))
