"""Dataset statistics: the numbers a reader checks first (users, items, sparsity, lengths)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.data.split import Splits

QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def dataset_stats(dataset: RecDataset, splits: Splits) -> dict[str, Any]:
    """Counts, sparsity, sequence-length quantiles, split sizes and timestamp ties."""
    lengths = np.bincount(dataset.users, minlength=dataset.num_users)
    item_counts = np.bincount(dataset.items, minlength=dataset.num_items)
    cells = dataset.num_users * dataset.num_items
    return {
        "users": dataset.num_users,
        "items": dataset.num_items,
        "interactions": dataset.num_interactions,
        "sparsity": 1.0 - dataset.num_interactions / cells,
        "sequence_length": {
            "mean": float(lengths.mean()),
            **{f"p{int(q * 100)}": float(np.quantile(lengths, q)) for q in QUANTILES},
        },
        "interactions_per_item": {"min": int(item_counts.min()), "max": int(item_counts.max())},
        "splits": {name: splits.count(name) for name in ("train", "valid", "test")},
        "users_with_tied_last_two": _tied_last_two(dataset, lengths),
        "rated_interactions": int(np.isfinite(dataset.ratings).sum()),
    }


def _tied_last_two(dataset: RecDataset, lengths: np.ndarray) -> int:
    """Users whose validation and test targets share a timestamp (ordered by the tie-break)."""
    ends = np.cumsum(lengths)
    has_two = lengths >= 2
    last = dataset.timestamps[ends[has_two] - 1]
    second = dataset.timestamps[ends[has_two] - 2]
    return int((last == second).sum())


def format_stats(stats: dict[str, Any]) -> str:
    """A short human-readable block for the CLI."""
    q = stats["sequence_length"]
    quantiles = " ".join(f"{k}={v:g}" for k, v in q.items() if k != "mean")
    splits = stats["splits"]
    return "\n".join(
        [
            f"users         {stats['users']:,}",
            f"items         {stats['items']:,}",
            f"interactions  {stats['interactions']:,}",
            f"sparsity      {stats['sparsity']:.4%}",
            f"seq length    mean={q['mean']:.2f} {quantiles}",
            f"examples      train={splits['train']:,} valid={splits['valid']:,} "
            f"test={splits['test']:,}",
            f"tied last two {stats['users_with_tied_last_two']:,} users "
            "(ordered by item id: see data/schema.py)",
        ]
    )
