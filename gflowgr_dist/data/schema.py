"""The one in-memory form every loader produces, and its checks.

Loaders differ in what they read (ML-100K, Amazon dumps, LETTER JSON, the synthetic generator);
they all return a `RecDataset`: dense integer users and items, an interaction log in time order,
and item texts. `store.py` writes it as Parquet; `split.py` cuts it into examples.

Order within a user is decided once, here, by a stable sort on (timestamp, item): two
interactions with the same timestamp are ordered by dense item id. ML-100K needs this rule: 415
of its 943 users share a timestamp between their last two interactions, so without it the test
item would depend on file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gflowgr_dist.errors import DataError

SCHEMA_VERSION = 1


@dataclass
class RecDataset:
    """Interactions and item texts with dense ids, sorted by (user, timestamp, item).

    Attributes:
        name: dataset name (e.g. "ml-100k").
        source: loader that produced it ("ml100k", "amazon", "letter", "synthetic").
        users: dense user id of each interaction, [E] int64.
        items: dense item id of each interaction, [E] int64.
        timestamps: seconds since the epoch (or list position where the source has no time),
            [E] int64.
        ratings: explicit rating of each interaction where the source has one, [E] float32;
            NaN where absent.
        user_ids: original id of each dense user, [U].
        item_ids: original id of each dense item, [I].
        item_titles: short display name of each item, [I].
        item_texts: the text embedded for semantic IDs, [I].
        external_sids: codes the source ships (LETTER's index), [I, L] int64, or None.
        external_sid_tokens: per level, the token string of each code, for external_sids.
    """

    name: str
    source: str
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    item_titles: list[str]
    item_texts: list[str]
    external_sids: np.ndarray | None = None
    external_sid_tokens: list[list[str]] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return int(self.users.shape[0])

    def user_offsets(self) -> np.ndarray:
        """Start of each user's run of interactions, [U + 1] (the log is sorted by user)."""
        counts = np.bincount(self.users, minlength=self.num_users)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def sequence(self, user: int) -> np.ndarray:
        """The user's items in time order, [n]."""
        offsets = self.user_offsets()
        return self.items[offsets[user] : offsets[user + 1]]


def build_dataset(
    *,
    name: str,
    source: str,
    raw_users: list[str] | np.ndarray,
    raw_items: list[str] | np.ndarray,
    timestamps: np.ndarray,
    ratings: np.ndarray | None,
    item_ids: list[str],
    item_titles: list[str],
    item_texts: list[str],
) -> RecDataset:
    """Maps raw ids to dense ids, sorts the log, and checks the result.

    Users are numbered by sorted raw id (numerically when every id is an integer), so the
    numbering does not depend on file order; items follow `item_ids`, which must list every
    item the log names.

    Raises:
        DataError: the log names an item absent from `item_ids`, or lengths disagree.
    """
    raw_users = np.asarray(raw_users).astype(str)
    raw_items = np.asarray(raw_items).astype(str)
    num = raw_users.shape[0]
    if not (raw_items.shape[0] == num == timestamps.shape[0]):
        raise DataError(
            f"{name}: interaction columns differ in length (users {num}, items "
            f"{raw_items.shape[0]}, timestamps {timestamps.shape[0]})"
        )
    if num == 0:
        raise DataError(f"{name}: no interactions left to load; check the files and filters")
    item_index = {raw: i for i, raw in enumerate(item_ids)}
    unknown = sorted({r for r in np.unique(raw_items).tolist() if r not in item_index})
    if unknown:
        raise DataError(
            f"{name}: {len(unknown)} interaction item id(s) have no item record, e.g. "
            f"{unknown[:3]}; every item in the interactions must appear in the item file"
        )
    user_ids, users = _dense_users(raw_users)
    items = np.fromiter((item_index[r] for r in raw_items), dtype=np.int64, count=num)
    ratings = np.full(num, np.nan, np.float32) if ratings is None else ratings.astype(np.float32)
    order = np.lexsort((items, timestamps.astype(np.int64), users))
    dataset = RecDataset(
        name=name,
        source=source,
        users=users.astype(np.int64)[order],
        items=items[order],
        timestamps=timestamps.astype(np.int64)[order],
        ratings=ratings[order],
        user_ids=user_ids.tolist(),
        item_ids=list(item_ids),
        item_titles=list(item_titles),
        item_texts=list(item_texts),
    )
    validate(dataset)
    return dataset


def _dense_users(raw_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct raw ids (numerically when all are integers) and each row's dense id."""
    distinct = np.unique(raw_users)
    if all(u.isdigit() for u in distinct.tolist()):
        distinct = distinct[np.argsort(distinct.astype(np.int64), kind="stable")]
    lookup = {u: i for i, u in enumerate(distinct.tolist())}
    dense = np.fromiter((lookup[u] for u in raw_users.tolist()), np.int64, len(raw_users))
    return distinct, dense


def drop_unused_items(dataset: RecDataset) -> RecDataset:
    """Removes items no interaction names and renumbers the rest densely (order kept)."""
    used = np.zeros(dataset.num_items, dtype=bool)
    used[dataset.items] = True
    if used.all():
        return dataset
    new_id = np.cumsum(used) - 1
    keep = np.flatnonzero(used)
    dataset.items = new_id[dataset.items]
    dataset.item_ids = [dataset.item_ids[i] for i in keep]
    dataset.item_titles = [dataset.item_titles[i] for i in keep]
    dataset.item_texts = [dataset.item_texts[i] for i in keep]
    if dataset.external_sids is not None:
        dataset.external_sids = dataset.external_sids[keep]
    return dataset


def validate(dataset: RecDataset) -> None:
    """Checks the invariants every later stage relies on.

    Raises:
        DataError: naming the broken invariant.
    """
    n_items = dataset.num_items
    if len(dataset.item_titles) != n_items or len(dataset.item_texts) != n_items:
        raise DataError(f"{dataset.name}: item titles/texts do not cover all {n_items} items")
    if dataset.num_interactions == 0:
        raise DataError(f"{dataset.name}: the dataset has no interactions")
    if dataset.items.min() < 0 or dataset.items.max() >= n_items:
        raise DataError(f"{dataset.name}: item ids outside [0, {n_items})")
    if dataset.users.min() < 0 or dataset.users.max() >= dataset.num_users:
        raise DataError(f"{dataset.name}: user ids outside [0, {dataset.num_users})")
    key = np.lexsort((dataset.items, dataset.timestamps, dataset.users))
    if not np.array_equal(key, np.arange(dataset.num_interactions)):
        raise DataError(f"{dataset.name}: interactions are not sorted by (user, timestamp, item)")
    if dataset.external_sids is not None and dataset.external_sids.shape[0] != n_items:
        raise DataError(f"{dataset.name}: external semantic IDs do not cover all items")
