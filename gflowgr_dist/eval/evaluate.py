"""Full-ranking leave-one-out evaluation of any recommender, with per-user results on disk.

A recommender is anything that returns top-K item lists for a batch of histories; the same
metrics (Recall / NDCG at 1, 5, 10, 20; coverage, entropy, Gini, long-tail share at 10) and the
same per-user Parquet serve generative models, SASRec and popularity, so their rows in a table
are computed one way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gflowgr_dist.config import EvalConfig
from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.data.split import Splits, split_histories
from gflowgr_dist.eval.metrics import diversity_metrics, rank_metrics, save_per_user, summarize

logger = logging.getLogger(__name__)

# (capped histories, full histories to exclude or None, k) -> ranked items [B, k]
RankFn = Callable[[list[np.ndarray], list[np.ndarray] | None, int], np.ndarray]


@dataclass
class EvalResult:
    """Summary metrics plus what a paired test needs (per-user values and lists)."""

    summary: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    targets: np.ndarray
    ranked: np.ndarray


def training_popularity(dataset: RecDataset) -> np.ndarray:
    """Interactions per item in the training part (before each user's validation target)."""
    from gflowgr_dist.models.popularity import Popularity

    return Popularity.fit(dataset).counts


def evaluate(
    rank_fn: RankFn,
    dataset: RecDataset,
    splits: Splits,
    split: str,
    cfg: EvalConfig,
    *,
    max_users: int | None = None,
    seed: int = 0,
    per_user_path: Path | None = None,
) -> EvalResult:
    """Ranks the catalogue for every example of `split` and scores it.

    Args:
        rank_fn: the recommender.
        max_users: evaluate a fixed random subset of this many users (validation speed-up).
        per_user_path: write per-user rows (user, target, list, metrics) as Parquet.
    """
    start = time.perf_counter()
    users, histories, targets, seen = split_histories(dataset, splits, split)
    if max_users is not None and max_users < len(users):
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users, targets = users[keep], targets[keep]
        histories, seen = [histories[i] for i in keep], [seen[i] for i in keep]
    k = max(cfg.ks)
    ranked = rank_fn(histories, seen if cfg.exclude_history else None, k)
    per_user = rank_metrics(ranked, targets, tuple(cfg.ks))
    summary = summarize(per_user)
    summary |= diversity_metrics(ranked, dataset.num_items, training_popularity(dataset), 10)
    summary["valid_id_rate"] = float((ranked[:, :k] >= 0).mean())
    summary["users"] = float(len(users))
    summary["seconds"] = time.perf_counter() - start
    if per_user_path is not None:
        save_per_user(per_user_path, users, targets, ranked, per_user)
    return EvalResult(summary, per_user, users, targets, ranked)


def format_row(name: str, summary: dict[str, float]) -> str:
    cols = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10")
    return f"{name:<18}" + "".join(f"{summary.get(c, float('nan')):>12.4f}" for c in cols)


def format_header() -> str:
    return f"{'model':<18}" + "".join(f"{c:>12}" for c in ("R@5", "R@10", "N@5", "N@10", "Cov@10"))
