"""`gflowgr bench decode`: our vectorised beam search vs transformers `generate`, and vs exact.

On one checkpoint and one set of test users it measures:

- users/s of our trie-constrained beam search and of `generate(num_beams=W,
  prefix_allowed_tokens_fn=...)` (the LC-Rec / LETTER / MiniOneRec way), their ratio, and the
  share of users whose ordered top-10 lists are identical;
- what beam search costs against exact full-catalogue scoring: identical ordered top-10 share,
  top-10 set overlap, and the NDCG@10 / Recall@10 of both.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gflowgr_dist.data.split import split_histories
from gflowgr_dist.data.store import read_prepared
from gflowgr_dist.decoding import ItemRanker, Ranking
from gflowgr_dist.decoding.hf_generate import hf_generate_rank, prefix_table
from gflowgr_dist.eval.metrics import rank_metrics
from gflowgr_dist.train import checkpoint

logger = logging.getLogger(__name__)


def _timed(fn) -> tuple[Ranking, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict[str, float]:
    same_order = (a[:, :k] == b[:, :k]).all(axis=1).mean()
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a[:, :k], b[:, :k], strict=True)])
    return {"identical_top10": float(same_order), "top10_overlap": float(overlap)}


def bench_decode(
    checkpoint_dir: Path,
    data_dir: Path,
    *,
    users: int = 200,
    beam_width: int = 20,
    batch_size: int = 16,
    with_exact: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Runs the comparison; returns every number it prints."""
    model, vocab, table, _ = checkpoint.load_model(checkpoint_dir)
    dataset, splits, _ = read_prepared(data_dir)
    ranker = ItemRanker(model.eval(), vocab, table)
    _, histories, targets, _ = split_histories(dataset, splits, "test")
    pick = np.sort(np.random.default_rng(seed).choice(len(targets), users, replace=False))
    histories, targets = [histories[i] for i in pick], targets[pick]
    allowed = prefix_table(ranker)

    # Same users, same batches, one after the other.
    ours, t_ours = _timed(
        lambda: ranker.rank_all(histories, 20, beam_width=beam_width, batch_size=batch_size)
    )
    parts, t_hf = [], 0.0
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        part, seconds = _timed(
            lambda c=chunk: hf_generate_rank(ranker, c, 20, beam_width=beam_width, allowed=allowed)
        )
        parts.append(part.items)
        t_hf += seconds
    hf_items = np.concatenate(parts)
    out: dict[str, Any] = {
        "users": users,
        "beam_width": beam_width,
        "threads": torch.get_num_threads(),
        "ours_users_per_s": users / t_ours,
        "hf_generate_users_per_s": users / t_hf,
        "speedup": t_hf / t_ours,
        "identical_top10_vs_hf": _agreement(ours.items, hf_items)["identical_top10"],
    }
    if with_exact:
        exact, t_exact = _timed(lambda: ranker.rank_all(histories, 20, ranker="exact"))
        m_beam = rank_metrics(ours.items, targets, (10,))
        m_exact = rank_metrics(exact.items, targets, (10,))
        out |= {f"beam_vs_exact_{k}": v for k, v in _agreement(ours.items, exact.items).items()}
        out |= {
            "exact_users_per_s": users / t_exact,
            "beam_ndcg@10": float(m_beam["ndcg@10"].mean()),
            "exact_ndcg@10": float(m_exact["ndcg@10"].mean()),
            "beam_recall@10": float(m_beam["recall@10"].mean()),
            "exact_recall@10": float(m_exact["recall@10"].mean()),
        }
    return out


def format_bench(result: dict[str, Any]) -> str:
    lines = [
        f"users={result['users']} beam_width={result['beam_width']} threads={result['threads']}",
        f"ours (vectorised beam)         {result['ours_users_per_s']:8.1f} users/s",
        f"transformers generate + prefix {result['hf_generate_users_per_s']:8.1f} users/s",
        f"speed-up                       {result['speedup']:8.1f}x",
        f"identical top-10 vs generate   {result['identical_top10_vs_hf']:8.1%}",
    ]
    if "exact_users_per_s" in result:
        lines += [
            f"exact scoring                  {result['exact_users_per_s']:8.1f} users/s",
            f"beam vs exact identical top-10 {result['beam_vs_exact_identical_top10']:8.1%}"
            f" (set overlap {result['beam_vs_exact_top10_overlap']:.1%})",
            f"NDCG@10 beam / exact           {result['beam_ndcg@10']:.4f} / "
            f"{result['exact_ndcg@10']:.4f}",
            f"Recall@10 beam / exact         {result['beam_recall@10']:.4f} / "
            f"{result['exact_recall@10']:.4f}",
        ]
    return "\n".join(lines)
