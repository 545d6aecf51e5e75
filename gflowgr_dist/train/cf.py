"""The collaborative model (CM) that the sampler's curriculum and the reward's r_ŷ read.

GFlowGR names no CM (paper.md §3 "Which CM?"); SASRec with the CE loss is ours, the strongest
of our baselines. The same weights serve the baseline row and the GFlowGR run of a seed: the
table's `sasrec-ce` cell saves them to `<run>/sasrec-ce/model.safetensors`, and a GFlowGR run
reuses that file, or trains and saves it when it is absent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from gflowgr_dist.config import Config
from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.data.split import Splits
from gflowgr_dist.models.sasrec import SasRec, SasRecConfig

logger = logging.getLogger(__name__)


def cf_path(cfg: Config) -> Path:
    return cfg.run.output_dir / "sasrec-ce" / "model.safetensors"


def sasrec_config(cfg: Config, loss: str = "ce") -> SasRecConfig:
    return SasRecConfig(**cfg.sasrec.model_dump(), loss=loss, seed=cfg.run.seed)


def save_sasrec(model: SasRec, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def load_or_train_cf(cfg: Config, dataset: RecDataset, splits: Splits) -> SasRec:
    """The seed's SASRec-CE in eval mode: loaded from `cf_path`, else trained and saved there."""
    from safetensors.torch import load_file

    from gflowgr_dist.train.sasrec import train_sasrec

    path = cf_path(cfg)
    model_cfg = sasrec_config(cfg)
    if path.is_file():
        model = SasRec(dataset.num_items, model_cfg)
        model.load_state_dict(load_file(str(path)))
        logger.info("cf: SASRec-CE loaded from %s", path)
        return model.eval()
    logger.info("cf: training SASRec-CE (no %s yet)", path)
    model, _ = train_sasrec(dataset, splits, model_cfg, progress=cfg.logging.progress)
    save_sasrec(model, path)
    return model.eval()


@torch.no_grad()
def cf_scores(model: SasRec, histories: list[np.ndarray], batch_size: int = 512) -> np.ndarray:
    """Scores of every item for each history, [E, I] float32."""
    parts = [
        model.scores(histories[start : start + batch_size]).float().numpy()
        for start in range(0, len(histories), batch_size)
    ]
    return np.concatenate(parts)
