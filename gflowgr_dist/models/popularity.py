"""Most-popular baseline: recommend what the training interactions hold most often.

The floor every personalised model must clear. Counts come from training interactions only,
the items of each user's sequence before the validation target (positions < n - 2 of a
sequence of length n), so neither validation nor test targets leak into the ranking.
"""

from __future__ import annotations

import numpy as np
import torch

from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.eval.metrics import ranked_from_scores


def training_interactions(dataset: RecDataset) -> np.ndarray:
    """Which interactions are training data: position < n - 2 within the user's sequence.

    Returns:
        [E] bool mask over the interaction log.
    """
    offsets = dataset.user_offsets()
    lengths = np.diff(offsets)  # [U]
    position = np.arange(dataset.num_interactions) - np.repeat(offsets[:-1], lengths)  # [E]
    return position < np.repeat(lengths - 2, lengths)


class Popularity:
    """Scores every item by its training interaction count, the same for every user."""

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)  # [I]

    @classmethod
    def fit(cls, dataset: RecDataset) -> Popularity:
        """Counts each item's training interactions (see `training_interactions`)."""
        items = dataset.items[training_interactions(dataset)]
        return cls(np.bincount(items, minlength=dataset.num_items))

    @property
    def num_items(self) -> int:
        return int(self.counts.shape[0])

    def scores(self, n_users: int) -> torch.Tensor:
        """The count of every item for each of n_users users, [n_users, I] float32."""
        row = torch.from_numpy(self.counts.astype(np.float32))
        return row[None].expand(n_users, -1)

    def score_histories(self, histories: list[np.ndarray]) -> torch.Tensor:
        """`scores` with the signature evaluation expects; histories are ignored."""
        return self.scores(len(histories))

    def top_k(self, k: int) -> np.ndarray:
        """The k most popular items, ties broken by lower item id, [k] int64."""
        return ranked_from_scores(self.counts[None].astype(np.float64), k)[0]
