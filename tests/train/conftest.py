"""Helpers the trainer tests share."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def first_losses():
    """`first_losses(trainer, steps)` -> the first `steps` training losses of epoch 0, with
    fixed batches and sampling streams (what a run on another device must reproduce)."""

    def run(trainer, steps: int) -> list[float]:
        trainer.rng = np.random.default_rng(0)
        trainer.generator = torch.Generator().manual_seed(0)
        losses = []
        for members in trainer.epoch_batches(0)[:steps]:
            loss, _ = trainer._loss([trainer.examples[i] for i in members])
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
            losses.append(loss.item())
        return losses

    return run
