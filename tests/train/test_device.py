"""`train.device`: asking for a GPU torch cannot see is one config error; on a machine with a
GPU, the SFT and GFlowGR trainers compute there what they compute on the CPU (the GPU tests
skip elsewhere, saying so)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig, SyntheticConfig, load_config
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.errors import ConfigError
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.train.gflowgr import GflowgrTrainer
from gflowgr_dist.train.sft import SftTrainer

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def data():
    dataset = load_synthetic(
        SyntheticConfig(num_users=80, num_items=40, num_clusters=4, stay_probability=0.95), 0
    )
    ids = SemanticIdConfig(codebook_sizes=[4, 4])
    table, _ = build_semantic_ids(dataset, ids, EmbeddingConfig(encoder="hashing"), seed=0)
    return dataset, leave_one_out(dataset, 8), table


def _cfg(out, *extra):
    return load_config(
        overrides=[
            f"run.output_dir={out}",
            "data.max_history=8",
            "model.preset=tiny",
            "model.dropout=0.0",
            "train.batch_size=16",
            "logging.progress=false",
            "gfn.reward.score=lm",  # no CF model needed
            "gfn.sampler.weights_start={random: 0.5, on_policy: 0.5}",
            "gfn.sampler.weights_end={random: 0.5, on_policy: 0.5}",
            *extra,
        ]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_device_without_a_gpu_is_one_config_error(tmp_path, data):
    dataset, splits, table = data
    with pytest.raises(ConfigError, match=r"train\.device='cuda' but torch sees no GPU.*cpu"):
        SftTrainer(_cfg(tmp_path, "train.device=cuda"), dataset, splits, table, tmp_path)


def test_auto_device_is_the_gpu_when_there_is_one(tmp_path, data):
    dataset, splits, table = data
    trainer = SftTrainer(_cfg(tmp_path, "train.device=auto"), dataset, splits, table, tmp_path)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer.device.type == expected
    assert next(trainer.model.parameters()).device.type == expected


def _losses(trainer, steps: int) -> list[float]:
    """The first `steps` losses of the trainer's first epoch (same batches and streams)."""
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


@needs_gpu
@pytest.mark.parametrize("algorithm", ["tb", "db"])
def test_gflowgr_steps_on_the_gpu_match_the_cpu(tmp_path, data, algorithm):
    dataset, splits, table = data
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = _cfg(tmp_path, f"train.device={device}", f"gfn.algorithm={algorithm}")
        trainer = GflowgrTrainer(cfg, dataset, splits, table, tmp_path / device)
        runs[device] = _losses(trainer, 3)
        assert next(trainer.model.parameters()).device.type == device
    np.testing.assert_allclose(runs["cuda"], runs["cpu"], rtol=2e-3)


@needs_gpu
def test_sft_and_evaluation_on_the_gpu_match_the_cpu(tmp_path, data):
    dataset, splits, table = data
    results = {}
    for device in ("cpu", "cuda"):
        cfg = _cfg(tmp_path, f"train.device={device}")
        trainer = SftTrainer(cfg, dataset, splits, table, tmp_path / device)
        losses = _losses(trainer, 5)
        results[device] = (losses, trainer.evaluate("valid").summary["ndcg@10"])
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=2e-3)
    assert abs(results["cuda"][1] - results["cpu"][1]) < 0.02
