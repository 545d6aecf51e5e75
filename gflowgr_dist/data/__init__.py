"""Data: loaders per source, the leave-one-out split, and the Parquet store."""

from __future__ import annotations

from gflowgr_dist.config import DataConfig
from gflowgr_dist.data.schema import RecDataset


def load_dataset(cfg: DataConfig, seed: int) -> RecDataset:
    """Loads the source named by `cfg.source` into a `RecDataset`."""
    if cfg.source == "ml100k":
        from gflowgr_dist.data.movielens import load_ml100k

        return load_ml100k(cfg.path)
    if cfg.source == "amazon":
        from gflowgr_dist.data.amazon import load_amazon

        return load_amazon(cfg.path, cfg.name, version=cfg.amazon_version, kcore=cfg.kcore)
    if cfg.source == "letter":
        from gflowgr_dist.data.letter import load_letter

        return load_letter(cfg.path, cfg.name)
    from gflowgr_dist.data.synthetic import load_synthetic

    return load_synthetic(cfg.synthetic, seed)
