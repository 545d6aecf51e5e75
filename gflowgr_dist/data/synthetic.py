"""A seeded synthetic dataset with clustered items, for fast tests and smoke runs.

Items belong to clusters; an item's text is its cluster's topic words plus a few words of its
own, so a text encoder puts same-cluster items close and semantic IDs share prefixes within a
cluster. Users walk among clusters: the next item stays in the current cluster with probability
`stay_probability`, which gives sequential signal a recommender can learn. Ratings are drawn in
1..5 so behaviour levels exist as in ML-100K.
"""

from __future__ import annotations

import numpy as np

from gflowgr_dist.config import SyntheticConfig
from gflowgr_dist.data.schema import RecDataset, build_dataset

_TOPICS = (
    "space rocket planet orbit",
    "kitchen recipe bake flour",
    "garden flower seed soil",
    "guitar song chord stage",
    "football goal league match",
    "ocean whale coral tide",
    "castle knight dragon sword",
    "market stock trade price",
    "forest wolf pine trail",
    "desert camel dune oasis",
)
_WORDS = (
    "red blue green gold silver dark bright small large quiet loud fast slow old new warm cold "
    "soft hard light deep wild calm rare plain round sharp"
).split()


def load_synthetic(cfg: SyntheticConfig, seed: int) -> RecDataset:
    """Generates the dataset; the same config and seed always give the same data."""
    rng = np.random.default_rng(seed)
    cluster_of = np.sort(rng.integers(0, cfg.num_clusters, cfg.num_items))
    cluster_of[: cfg.num_clusters] = np.arange(cfg.num_clusters)  # every cluster non-empty
    members = [np.flatnonzero(cluster_of == c) for c in range(cfg.num_clusters)]
    titles, texts = _item_texts(cluster_of, rng)

    users, items, stamps = [], [], []
    for user in range(cfg.num_users):
        # Walk among clusters, drawing distinct items, one time step apart.
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        seq = _walk(members, cluster_of, length, cfg.stay_probability, rng)
        users.extend([f"u{user}"] * len(seq))
        items.extend(f"i{i}" for i in seq)
        stamps.extend(1_000_000 + 60 * np.arange(len(seq)))

    return build_dataset(
        name=f"synthetic-{cfg.num_users}x{cfg.num_items}",
        source="synthetic",
        raw_users=users,
        raw_items=items,
        timestamps=np.asarray(stamps, dtype=np.int64),
        ratings=rng.integers(1, 6, len(users)).astype(np.float32),
        item_ids=[f"i{i}" for i in range(cfg.num_items)],
        item_titles=titles,
        item_texts=texts,
    )


def _item_texts(cluster_of: np.ndarray, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    titles, texts = [], []
    for item, cluster in enumerate(cluster_of.tolist()):
        topic = _TOPICS[cluster % len(_TOPICS)]
        if cluster >= len(_TOPICS):
            topic = f"{topic} series{cluster // len(_TOPICS)}"
        own = " ".join(rng.choice(_WORDS, 2, replace=False).tolist())
        titles.append(f"{own} {topic.split()[0]} {item}")
        texts.append(f"{topic} | {own}")
    return titles, texts


def _walk(
    members: list[np.ndarray],
    cluster_of: np.ndarray,
    length: int,
    stay: float,
    rng: np.random.Generator,
) -> list[int]:
    num_items = len(cluster_of)
    length = min(length, num_items)
    seen: set[int] = set()
    cluster = int(rng.integers(len(members)))
    seq: list[int] = []
    while len(seq) < length:
        if rng.random() >= stay:
            cluster = int(rng.integers(len(members)))
        pool = [i for i in members[cluster].tolist() if i not in seen]
        if not pool:
            pool = [i for i in range(num_items) if i not in seen]
        item = int(rng.choice(pool))
        seen.add(item)
        seq.append(item)
    return seq
