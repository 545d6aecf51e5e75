"""Leave-one-out split in time order (TIGER, LETTER, RecBole's sequential protocol).

For a user with items s_0 … s_{n-1} (sorted by timestamp, ties by item id; see schema.py):

- test:  target s_{n-1}, history s_{<n-1}
- valid: target s_{n-2}, history s_{<n-2}
- train: every target s_t for 1 <= t <= n-3, history s_{<t}

so every earlier prefix is one training example, and no training target is ever a validation or
test target of the same user. A history is cut to its `max_history` most recent items. Users with
fewer than 3 interactions cannot supply all three parts: with 2 the last item is a test target
and there is no validation target; with 1 the user gives no example.

An example is stored as (user, split, target_index, history_start) into the user's sequence, not
as copied item lists, so the split costs O(examples) integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gflowgr_dist.data.schema import RecDataset

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Splits:
    """Examples as positions into each user's time-ordered sequence.

    Attributes:
        users: user of each example, [X] int64.
        split: 0 = train, 1 = valid, 2 = test, [X] int8.
        target_index: position of the target in the user's sequence, [X] int64.
        history_start: first history position (target_index - max_history, floored at 0), [X].
        max_history: the cap used.
    """

    users: np.ndarray
    split: np.ndarray
    target_index: np.ndarray
    history_start: np.ndarray
    max_history: int

    def select(self, name: str) -> np.ndarray:
        """Indices of the examples of one split ("train", "valid" or "test")."""
        return np.flatnonzero(self.split == SPLIT_NAMES.index(name))

    def count(self, name: str) -> int:
        return int((self.split == SPLIT_NAMES.index(name)).sum())

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "user": self.users,
                "split": pa.array([SPLIT_NAMES[s] for s in self.split.tolist()], pa.string()),
                "target_index": self.target_index,
                "history_start": self.history_start,
            },
            metadata={"max_history": str(self.max_history)},
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> Splits:
        names = np.asarray(table["split"].to_pylist())
        split = np.zeros(len(names), dtype=np.int8)
        for code, name in enumerate(SPLIT_NAMES):
            split[names == name] = code
        return cls(
            users=table["user"].to_numpy(),
            split=split,
            target_index=table["target_index"].to_numpy(),
            history_start=table["history_start"].to_numpy(),
            max_history=int(table.schema.metadata[b"max_history"]),
        )


def leave_one_out(dataset: RecDataset, max_history: int) -> Splits:
    """Cuts every user's sequence into train / valid / test examples (see module docstring)."""
    lengths = np.bincount(dataset.users, minlength=dataset.num_users)

    # Train targets: positions 1 .. n-3 of each user, built without a loop over users.
    n_train = np.maximum(lengths - 3, 0)
    train_users = np.repeat(np.arange(dataset.num_users), n_train)
    starts = np.concatenate([[0], np.cumsum(n_train)[:-1]])
    train_pos = np.arange(n_train.sum()) - np.repeat(starts, n_train) + 1

    # Valid and test targets: the last two positions (when the user has them).
    valid_users = np.flatnonzero(lengths >= 3)
    test_users = np.flatnonzero(lengths >= 2)
    users = np.concatenate([train_users, valid_users, test_users]).astype(np.int64)
    target = np.concatenate([train_pos, lengths[valid_users] - 2, lengths[test_users] - 1]).astype(
        np.int64
    )
    split = np.concatenate(
        [
            np.zeros(len(train_users), np.int8),
            np.ones(len(valid_users), np.int8),
            np.full(len(test_users), 2, np.int8),
        ]
    )

    # Order examples by (user, target) so a user's examples are contiguous.
    order = np.lexsort((target, users))
    users, target, split = users[order], target[order], split[order]
    return Splits(
        users=users,
        split=split,
        target_index=target,
        history_start=np.maximum(target - max_history, 0),
        max_history=max_history,
    )


def example_items(dataset: RecDataset, splits: Splits, index: int) -> tuple[np.ndarray, int]:
    """(history items [h], target item) of one example; for tests and inspection."""
    offsets = dataset.user_offsets()
    base = offsets[splits.users[index]]
    history = dataset.items[base + splits.history_start[index] : base + splits.target_index[index]]
    return history, int(dataset.items[base + splits.target_index[index]])


def split_histories(
    dataset: RecDataset, splits: Splits, split: str
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Every example of one split, ready to rank.

    Returns:
        (users [U], capped histories (history_start .. target), targets [U],
        full histories (every earlier item, for excluding already-seen items))
    """
    index = splits.select(split)
    base = dataset.user_offsets()[splits.users[index]]  # [U]
    begin = base + splits.history_start[index]
    end = base + splits.target_index[index]
    items = dataset.items
    histories = [items[b:e] for b, e in zip(begin.tolist(), end.tolist(), strict=True)]
    seen = [items[b:e] for b, e in zip(base.tolist(), end.tolist(), strict=True)]
    return splits.users[index], histories, items[end], seen


def training_sequences(dataset: RecDataset) -> tuple[list[int], list[np.ndarray]]:
    """Each user's items before the validation target (positions < n-2), users with >= 2."""
    offsets = dataset.user_offsets()
    users, sequences = [], []
    for user in range(dataset.num_users):
        seq = dataset.items[offsets[user] : max(offsets[user], offsets[user + 1] - 2)]
        if len(seq) >= 2:
            users.append(user)
            sequences.append(seq)
    return users, sequences
