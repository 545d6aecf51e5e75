"""Semantic IDs: text embedding, residual k-means, RQ-VAE, the ID table and the tensor trie."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig
from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.errors import DataError
from gflowgr_dist.semantic_ids.table import SemanticIdTable, add_dedup_level

logger = logging.getLogger(__name__)


def build_semantic_ids(
    dataset: RecDataset,
    cfg: SemanticIdConfig,
    embedding: EmbeddingConfig,
    *,
    seed: int,
    cache: Path | None = None,
    progress: bool = False,
) -> tuple[SemanticIdTable, dict[str, Any]]:
    """Gives every item of `dataset` a semantic ID as `cfg` asks.

    Returns:
        (the table, its statistics: utilisation per level, collisions before dedup, shared IDs)
    """
    if cfg.method == "external":
        if dataset.external_sids is None:
            raise DataError(
                f"semantic_ids.method='external' but dataset {dataset.name!r} ships no index; "
                "use method 'rkmeans' or 'rqvae'"
            )
        codes = dataset.external_sids
        sizes = [int(c) + 1 for c in codes.max(axis=0)]
        if dataset.external_sid_tokens:
            sizes = [len(t) for t in dataset.external_sid_tokens]
        letters = [t[0][1:].split("_")[0] for t in dataset.external_sid_tokens or []]
        table = SemanticIdTable(codes, sizes, "external", dedup=False, level_names=letters)
        return table, table.stats(base_codes=codes)

    from gflowgr_dist.semantic_ids.embed import embed_texts

    vectors = embed_texts(dataset.item_texts, embedding, cache=cache, progress=progress)
    base = _quantise(vectors, cfg, seed=seed, progress=progress)
    sizes = list(cfg.codebook_sizes)
    codes = base
    if cfg.dedup:
        codes = add_dedup_level(base)
        sizes.append(int(codes[:, -1].max()) + 1)
    table = SemanticIdTable(codes, sizes, cfg.method, dedup=cfg.dedup)
    return table, table.stats(base_codes=base)


def _quantise(
    vectors: np.ndarray, cfg: SemanticIdConfig, *, seed: int, progress: bool
) -> np.ndarray:
    if cfg.method == "rkmeans":
        from gflowgr_dist.semantic_ids.rkmeans import residual_kmeans

        return residual_kmeans(vectors, cfg.codebook_sizes, iters=cfg.kmeans_iters, seed=seed)
    from gflowgr_dist.semantic_ids.rqvae import fit_rqvae

    codes, train_stats = fit_rqvae(
        vectors, cfg.codebook_sizes, cfg.rqvae, seed=seed, progress=progress
    )
    logger.info("rq-vae trained: %s", train_stats)
    return codes
