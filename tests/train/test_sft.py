"""SFT on synthetic data: it learns, checkpoints load in plain transformers, resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig, SyntheticConfig, load_config
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.tracking import read_metrics
from gflowgr_dist.train import checkpoint
from gflowgr_dist.train.sft import SftTrainer, WarmupCosine


@pytest.fixture(scope="module")
def data():
    dataset = load_synthetic(
        SyntheticConfig(num_users=120, num_items=40, num_clusters=4, stay_probability=0.95), 0
    )
    table, _ = build_semantic_ids(
        dataset,
        SemanticIdConfig(codebook_sizes=[4, 4]),
        EmbeddingConfig(encoder="hashing"),
        seed=0,
    )
    return dataset, leave_one_out(dataset, 8), table


def _cfg(tmp_path, *extra):
    return load_config(
        overrides=[
            f"run.output_dir={tmp_path}",
            "data.max_history=8",
            "model.preset=tiny",
            "model.dropout=0.0",
            "train.batch_size=32",
            "train.lr=3e-3",
            "train.log_every=5",
            "logging.progress=false",
            "eval.beam_width=20",
            *extra,
        ]
    )


@pytest.mark.parametrize("arch", ["decoder", "t5"])
def test_sft_learns_the_cluster_structure(tmp_path, data, arch):
    dataset, splits, table = data
    cfg = _cfg(tmp_path, f"model.arch={arch}", "train.epochs=12", "train.patience=12")
    trainer = SftTrainer(cfg, dataset, splits, table, tmp_path / "sft")
    before = trainer.evaluate("valid").summary["ndcg@10"]
    fit = trainer.fit()
    after = trainer.evaluate("valid").summary["ndcg@10"]
    # 40 items in 4 clusters and users who stay in a cluster: a model that learnt the cluster
    # of the last item ranks the target far above chance (random N@10 is about 0.06).
    assert fit["best_val_ndcg@10"] >= after - 1e-9
    assert after > max(0.15, before + 0.08), (before, after)
    losses = [
        r["sft/loss"] for r in read_metrics(tmp_path / "sft/metrics.jsonl") if "sft/loss" in r
    ]
    assert losses[-1] < losses[0]


def test_checkpoint_loads_with_plain_transformers(tmp_path, data):
    dataset, splits, table = data
    trainer = SftTrainer(_cfg(tmp_path, "train.epochs=1"), dataset, splits, table, tmp_path / "s")
    trainer.fit()
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "s/best/model"))
    ids = torch.tensor([[1, 5, 9, 13]])
    torch.testing.assert_close(plain(ids).logits, trainer.model.eval()(ids).logits)
    _, vocab, back_table, cfg = checkpoint.load_model(tmp_path / "s/best")
    np.testing.assert_array_equal(back_table.codes, table.codes)
    assert vocab.offsets == trainer.vocab.offsets and cfg.model.preset == "tiny"
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(".")) == []


class _CrashError(Exception):
    pass


def test_resume_reaches_the_same_weights(tmp_path, data, monkeypatch):
    dataset, splits, table = data
    cfg = _cfg(tmp_path, "train.epochs=2", "model.dropout=0.1", "train.patience=5")
    straight = SftTrainer(cfg, dataset, splits, table, tmp_path / "a")
    straight.fit()

    # Crash at the start of epoch 2, then resume from last/.
    crashing = SftTrainer(cfg, dataset, splits, table, tmp_path / "b")
    real_epoch = SftTrainer._train_epoch

    def epoch_then_crash(self):
        if self.state.epoch == 1:
            raise _CrashError
        return real_epoch(self)

    monkeypatch.setattr(SftTrainer, "_train_epoch", epoch_then_crash)
    with pytest.raises(_CrashError):
        crashing.fit()
    monkeypatch.setattr(SftTrainer, "_train_epoch", real_epoch)
    resumed = SftTrainer(cfg, dataset, splits, table, tmp_path / "b")
    resumed.fit(resume=True)

    assert resumed.state.step == straight.state.step
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_warmup_cosine_shape():
    schedule = WarmupCosine(total_steps=100, warmup_ratio=0.1)
    factors = [schedule(step) for step in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5) and factors[100] == pytest.approx(0.0)
    assert np.all(np.diff(factors[9:]) <= 1e-12)


def test_time_budget_shrinks_the_schedule_so_lr_reaches_zero(tmp_path, data):
    dataset, splits, table = data
    # 200 epochs would take minutes; a 0.05-minute budget must end the cosine on time.
    cfg = _cfg(tmp_path, "train.epochs=200", "train.patience=200", "train.max_minutes=0.05")
    trainer = SftTrainer(cfg, dataset, splits, table, tmp_path / "s")
    fit = trainer.fit()
    assert fit["epochs"] < 200
    assert trainer.schedule.total_steps == trainer.state.step
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
    assert fit["train_minutes"] < 0.05 * 1.5


# --- train.device (the GPU checks skip where torch sees no GPU) ------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_device_without_a_gpu_is_one_config_error(tmp_path, data):
    from gflowgr_dist.errors import ConfigError

    dataset, splits, table = data
    with pytest.raises(ConfigError, match=r"train\.device='cuda' but torch sees no GPU.*cpu"):
        SftTrainer(_cfg(tmp_path, "train.device=cuda"), dataset, splits, table, tmp_path)


def test_auto_device_is_the_gpu_when_there_is_one(tmp_path, data):
    dataset, splits, table = data
    trainer = SftTrainer(_cfg(tmp_path, "train.device=auto"), dataset, splits, table, tmp_path)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer.device.type == next(trainer.model.parameters()).device.type == expected


@needs_gpu
def test_sft_and_evaluation_on_the_gpu_match_the_cpu(tmp_path, data, first_losses):
    dataset, splits, table = data
    results = {}
    for device in ("cpu", "cuda"):
        cfg = _cfg(tmp_path, f"train.device={device}")
        trainer = SftTrainer(cfg, dataset, splits, table, tmp_path / device)
        results[device] = (first_losses(trainer, 5), trainer.evaluate("valid").summary["ndcg@10"])
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=2e-3)
    assert abs(results["cuda"][1] - results["cpu"][1]) < 0.02
