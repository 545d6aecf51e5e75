"""Full-ranking metrics, diversity measures and a paired bootstrap, all kept per user.

The protocol is TIGER's: one held-out target per user, ranked against the whole catalogue, with
Recall@K (equal to HitRate@K when there is one target) and NDCG@K. Metrics stay per user so two
systems evaluated on the same users can be compared by a paired bootstrap rather than by their
means alone; `save_per_user` writes them with each user's top-K list for that purpose.

GFlowNet fine-tuning claims more diverse recommendations, so diversity is measured over the
top-K lists as well: catalogue coverage, entropy and Gini coefficient of item exposure, and the
share of slots that go to long-tail items.

Ranked lists are int arrays [U, K] of item ids in rank order; -1 marks an empty slot (a list
shorter than K) and never matches a target or counts as an exposure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

PAD = -1
DEFAULT_KS = (1, 5, 10, 20)
_RANK_CHUNK = 1024
_BOOTSTRAP_CHUNK = 1000


def rank_metrics(
    ranked: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS
) -> dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k of one target each.

    Args:
        ranked: item ids in rank order, [U, K] int, -1 for empty slots; K >= max(ks).
        targets: the held-out item of each user, [U] int.
        ks: cut-offs.

    Returns:
        {"recall@k": [U] float64, "ndcg@k": [U] float64} for every k in ks; NDCG@k is
        1 / log2(rank + 2) for a hit at 0-based rank < k, else 0.
    """
    ranked = np.asarray(ranked)
    targets = np.asarray(targets)
    if ranked.ndim != 2 or ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"ranked {ranked.shape} and targets {targets.shape} do not match")
    if ranked.shape[1] < max(ks):
        raise ValueError(f"ranked lists have {ranked.shape[1]} slots, fewer than k={max(ks)}")

    # First slot holding the target (targets are >= 0, so padding never matches).
    hits = (ranked == targets[:, None]) & (ranked != PAD)  # [U, K]
    found = hits.any(axis=1)  # [U]
    rank = np.where(found, hits.argmax(axis=1), ranked.shape[1])  # [U]
    gain = 1.0 / np.log2(rank + 2.0)  # [U]

    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = rank < k
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, gain, 0.0)
    return out


def ranked_from_scores(
    scores: torch.Tensor | np.ndarray, k: int, exclude: list[np.ndarray] | None = None
) -> np.ndarray:
    """Top-k items of every row, highest score first, ties broken by lower item id.

    Args:
        scores: a score for every item, [U, I].
        k: list length; when fewer than k items remain after exclusion the tail is -1.
        exclude: per user, item ids that may not be recommended (e.g. the history).

    Returns:
        Ranked item ids, [U, k] int64.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    num_users = scores.shape[0]
    out = np.full((num_users, k), PAD, dtype=np.int64)
    for start in range(0, num_users, _RANK_CHUNK):
        stop = min(start + _RANK_CHUNK, num_users)
        block = scores[start:stop]  # [b, I]
        allowed = np.ones_like(block, dtype=bool)  # [b, I]
        if exclude is not None:
            for row, items in enumerate(exclude[start:stop]):
                allowed[row, np.asarray(items, dtype=np.int64)] = False
        keyed = np.where(allowed, -block, np.inf)  # [b, I] lower is better
        order = np.argsort(keyed, axis=1, kind="stable")[:, :k]  # [b, min(k, I)]
        valid = np.take_along_axis(allowed, order, axis=1)
        out[start:stop, : order.shape[1]] = np.where(valid, order, PAD)
    return out


def item_exposure(ranked: np.ndarray, num_items: int, k: int = 10) -> np.ndarray:
    """How many top-k slots each item fills across all users, [I] int64."""
    slots = np.asarray(ranked)[:, :k].ravel()
    return np.bincount(slots[slots != PAD], minlength=num_items)


def item_coverage(ranked: np.ndarray, num_items: int, k: int = 10) -> float:
    """Fraction of the catalogue that appears in at least one top-k list."""
    return float((item_exposure(ranked, num_items, k) > 0).sum() / num_items)


def recommendation_entropy(ranked: np.ndarray, num_items: int, k: int = 10) -> tuple[float, float]:
    """Shannon entropy of item exposure over all top-k slots.

    Returns:
        (entropy in nats, entropy / log(num_items) in [0, 1])
    """
    counts = item_exposure(ranked, num_items, k)
    total = counts.sum()
    if total == 0 or num_items < 2:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log(p)).sum())
    return entropy, entropy / float(np.log(num_items))


def gini(ranked: np.ndarray, num_items: int, k: int = 10) -> float:
    """Gini coefficient of exposure counts over the whole catalogue (unexposed items count).

    0 when every item fills the same number of slots; 1 - 1/I when one item fills them all.
    """
    counts = np.sort(item_exposure(ranked, num_items, k)).astype(np.float64)  # ascending
    total = counts.sum()
    if total == 0:
        return 0.0
    index = np.arange(1, num_items + 1)
    return float(2.0 * (index * counts).sum() / (num_items * total) - (num_items + 1) / num_items)


def head_items(item_popularity: np.ndarray, head_fraction: float = 0.2) -> np.ndarray:
    """Boolean mask [I] of the ceil(head_fraction * I) most popular items (ties: lower id)."""
    popularity = np.asarray(item_popularity)
    n_head = int(np.ceil(head_fraction * popularity.shape[0]))
    order = np.lexsort((np.arange(popularity.shape[0]), -popularity))
    head = np.zeros(popularity.shape[0], dtype=bool)
    head[order[:n_head]] = True
    return head


def long_tail_share(
    ranked: np.ndarray, item_popularity: np.ndarray, k: int = 10, head_fraction: float = 0.2
) -> float:
    """Share of filled top-k slots given to items outside the training head.

    Args:
        ranked: [U, K] ranked item ids.
        item_popularity: training interaction count of each item, [I].
        k: cut-off.
        head_fraction: the most popular fraction of the catalogue that counts as the head.
    """
    slots = np.asarray(ranked)[:, :k].ravel()
    slots = slots[slots != PAD]
    if slots.size == 0:
        return 0.0
    return float((~head_items(item_popularity, head_fraction)[slots]).mean())


def diversity_metrics(
    ranked: np.ndarray, num_items: int, item_popularity: np.ndarray, k: int = 10
) -> dict[str, float]:
    """All diversity measures at cut-off k, keyed `name@k` (callers add a namespace)."""
    entropy, entropy_norm = recommendation_entropy(ranked, num_items, k)
    return {
        f"coverage@{k}": item_coverage(ranked, num_items, k),
        f"entropy@{k}": entropy,
        f"entropy_norm@{k}": entropy_norm,
        f"gini@{k}": gini(ranked, num_items, k),
        f"long_tail@{k}": long_tail_share(ranked, item_popularity, k),
    }


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over users of every per-user metric."""
    return {name: float(np.mean(values)) for name, values in per_user.items()}


def save_per_user(
    path: str | Path,
    users: np.ndarray,
    targets: np.ndarray,
    ranked: np.ndarray,
    per_user: dict[str, np.ndarray],
) -> Path:
    """Writes one Parquet row per user: user, target, top-K list and every per-user metric.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ranked = np.asarray(ranked, dtype=np.int64)
    columns = {
        "user": pa.array(np.asarray(users, dtype=np.int64)),
        "target": pa.array(np.asarray(targets, dtype=np.int64)),
        "ranked": pa.FixedSizeListArray.from_arrays(pa.array(ranked.ravel()), ranked.shape[1]),
    }
    columns.update({name: pa.array(np.asarray(v, np.float64)) for name, v in per_user.items()})
    pq.write_table(pa.table(columns), path)
    return path


def load_per_user(
    path: str | Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Reads back what `save_per_user` wrote.

    Returns:
        (users [U], targets [U], ranked [U, K], per-user metrics)
    """
    table = pq.read_table(path)
    ranked_col = table["ranked"].combine_chunks()
    width = ranked_col.type.list_size
    ranked = ranked_col.flatten().to_numpy().reshape(-1, width)
    fixed = {"user", "target", "ranked"}
    per_user = {n: table[n].to_numpy() for n in table.column_names if n not in fixed}
    return table["user"].to_numpy(), table["target"].to_numpy(), ranked, per_user


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Paired bootstrap over users of the difference in mean metric, a - b.

    Users are resampled with replacement, keeping each user's pair (a_u, b_u) together. The
    two-sided p-value is that of the shifted-null test: how often a resampled difference lies
    at least |mean_diff| away from mean_diff, with a +1 correction so it is never 0.

    Args:
        a: per-user metric of system A, [U].
        b: per-user metric of system B on the same users, [U].
        n: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        {"mean_diff", "ci_low", "ci_high" (95% percentile interval), "p_value"}
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # [U]
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-D arrays, got {diff.shape}")
    rng = np.random.default_rng(seed)
    boot = np.empty(n, dtype=np.float64)
    for start in range(0, n, _BOOTSTRAP_CHUNK):
        stop = min(start + _BOOTSTRAP_CHUNK, n)
        idx = rng.integers(0, diff.size, size=(stop - start, diff.size))  # [c, U]
        boot[start:stop] = diff[idx].mean(axis=1)
    mean_diff = float(diff.mean())
    extreme = np.abs(boot - mean_diff) >= abs(mean_diff) - 1e-12
    return {
        "mean_diff": mean_diff,
        "ci_low": float(np.percentile(boot, 2.5)),
        "ci_high": float(np.percentile(boot, 97.5)),
        "p_value": float((extreme.sum() + 1) / (n + 1)),
    }
