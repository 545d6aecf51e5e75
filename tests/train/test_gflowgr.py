"""The GFlowGR trainer on synthetic data: every algorithm trains, TB learns its target (flow
calibration rises above continued SFT's), non-finite rewards stop or skip, resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig, SyntheticConfig, load_config
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.tracking import read_metrics
from gflowgr_dist.train.cf import sasrec_config
from gflowgr_dist.train.gflowgr import GflowgrTrainer
from gflowgr_dist.train.sasrec import train_sasrec


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
    splits = leave_one_out(dataset, 8)
    cfg = _cfg("/tmp/unused")
    cf, _ = train_sasrec(dataset, splits, sasrec_config(cfg))
    return dataset, splits, table, cf


def _cfg(out, *extra):
    return load_config(
        overrides=[
            f"run.output_dir={out}",
            "data.max_history=8",
            "model.preset=tiny",
            "model.dropout=0.0",
            "train.batch_size=32",
            "train.lr=3e-3",
            "train.log_every=2",
            "train.patience=10",
            "logging.progress=false",
            "sasrec.epochs=3",
            *extra,
        ]
    )


def _trainer(tmp_path, data, *extra, name="run"):
    dataset, splits, table, cf = data
    cfg = _cfg(tmp_path, *extra)
    return GflowgrTrainer(cfg, dataset, splits, table, tmp_path / name, cf_model=cf)


@pytest.mark.parametrize("algorithm", ["tb", "db", "subtb", "dpo", "sdpo", "grpo", "sft"])
def test_every_algorithm_trains_with_finite_logged_losses(tmp_path, data, algorithm):
    trainer = _trainer(tmp_path, data, "train.epochs=1", f"gfn.algorithm={algorithm}")
    fit = trainer.fit()
    assert fit["steps"] > 0 and np.isfinite(fit["best_val_ndcg@10"])
    records = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if "gfn/loss" in r]
    assert records and all(np.isfinite(r["gfn/loss"]) for r in records)
    assert all(np.isfinite(r["gfn/loss_sft"]) for r in records)
    if algorithm in ("tb", "db", "subtb"):
        assert all("gfn/loss_gfn" in r and "gfn/log_z" in r for r in records)
        mix = [r["gfn/mix_cf"] + r["gfn/mix_random"] for r in records]
        assert np.allclose(mix, 1.0)  # default mixture: CF curriculum and random only
    validation = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if "gfn/val_ndcg@10" in r]
    assert validation and "gfn/calibration" in validation[0]


def test_tb_raises_flow_calibration_above_continued_sft(tmp_path, data):
    # Same start, same data and steps: only the loss differs. TB fits P(item) ∝ R(item); SFT
    # fits the logged item alone, so TB must correlate log P with log R more.
    results = {}
    for algorithm in ("tb", "sft"):
        torch.manual_seed(0)
        trainer = _trainer(
            tmp_path, data, "train.epochs=15", f"gfn.algorithm={algorithm}", name=algorithm
        )
        start = trainer.calibration()["pearson"]
        trainer.fit()
        results[algorithm] = (start, trainer.calibration()["pearson"])
    assert results["tb"][0] == pytest.approx(results["sft"][0])
    # Measured here: start 0.11, SFT 0.46, TB 0.51 (within-user Pearson).
    assert results["tb"][1] > results["sft"][1] + 0.03, results
    assert results["tb"][1] > results["tb"][0] + 0.3, results


def test_non_finite_reward_stops_or_skips(tmp_path, data, monkeypatch):
    from gflowgr_dist.gfn.reward import RewardModel

    def broken(self, parts):
        out = parts.stacked().sum(-1)
        out[0, 0] = float("nan")
        return torch.log(out + 1e-3)

    monkeypatch.setattr(RewardModel, "log_rewards", broken)
    trainer = _trainer(tmp_path, data, "train.epochs=1", "gfn.calibration_users=0")
    with pytest.raises(FloatingPointError, match=r"log_rewards has 1 non-finite.*gfn.reward.eps"):
        trainer.fit()

    skipping = _trainer(
        tmp_path,
        data,
        "train.epochs=1",
        "gfn.on_error=skip",
        "gfn.calibration_users=0",
        name="skip",
    )
    fit = skipping.fit()
    assert fit["steps"] == 0  # every step had the NaN: all skipped, none trained on
    skipped = [r for r in read_metrics(tmp_path / "skip/metrics.jsonl") if "gfn/skipped_steps" in r]
    assert len(skipped) == len(skipping._train_batches_per_epoch())


class _CrashError(Exception):
    pass


@pytest.mark.parametrize("adapter", [(), ("gfn.lora_rank=4",)], ids=["full", "lora"])
def test_resume_reaches_the_same_weights_and_heads(tmp_path, data, monkeypatch, adapter):
    extra = ("train.epochs=2", "gfn.calibration_users=20", "model.dropout=0.1", *adapter)
    straight = _trainer(tmp_path, data, *extra, name="a")
    straight.fit()

    crashing = _trainer(tmp_path, data, *extra, name="b")
    real_epoch = GflowgrTrainer._train_epoch

    def epoch_then_crash(self):
        if self.state.epoch == 1:
            raise _CrashError
        return real_epoch(self)

    monkeypatch.setattr(GflowgrTrainer, "_train_epoch", epoch_then_crash)
    with pytest.raises(_CrashError):
        crashing.fit()
    monkeypatch.setattr(GflowgrTrainer, "_train_epoch", real_epoch)
    resumed = _trainer(tmp_path, data, *extra, name="b")
    resumed.fit(resume=True)

    assert resumed.state.step == straight.state.step
    for module in ("model", "log_z_head"):
        a = getattr(straight, module).state_dict()
        b = getattr(resumed, module).state_dict()
        for name in a:
            torch.testing.assert_close(a[name], b[name], msg=f"{module}.{name}")


def _first_chunk(trainer):
    return [trainer.examples[i] for i in trainer.epoch_batches(0)[0]]


def test_targets_per_window_gives_trajectories_to_a_random_subset_of_targets(tmp_path, data):
    trainer = _trainer(tmp_path, data, "gfn.targets_per_window=2")
    chunk = _first_chunk(trainer)
    assert max(w.num_targets for w in chunk) > 2
    batches = [
        trainer.source.build(chunk, np.arange(len(chunk)), 0.0, np.random.default_rng(seed))
        for seed in (0, 1)
    ]
    for batch in batches:
        # Each window keeps min(2, its targets) distinct targets, and they are its targets.
        counts = np.bincount(batch.positions[:, 0], minlength=len(chunk))
        np.testing.assert_array_equal(counts, [min(2, w.num_targets) for w in chunk])
        assert len({tuple(p) for p in batch.positions}) == len(batch.positions)
        for (w, c), target in zip(batch.positions, batch.targets, strict=True):
            assert len(chunk[w].items) - chunk[w].num_targets <= c < len(chunk[w].items)
            assert chunk[w].items[c] == target
        loss, extra = trainer.learner_loss(chunk, batch)
        assert torch.isfinite(loss) and np.isfinite(extra["loss_gfn"])
    assert not np.array_equal(batches[0].positions, batches[1].positions)


def test_keeping_every_target_is_the_run_without_the_option(tmp_path, data):
    plain = _trainer(tmp_path, data, name="plain")
    every = _trainer(tmp_path, data, "gfn.targets_per_window=10000", name="every")
    chunk = _first_chunk(plain)
    a, b = (
        t.source.build(chunk, np.arange(len(chunk)), 0.3, np.random.default_rng(5))
        for t in (plain, every)
    )
    assert len(a.targets) == sum(w.num_targets for w in chunk)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.strategies, b.strategies)


def test_lora_trains_the_adapter_alone_and_checkpoints_the_merged_model(tmp_path, data):
    from gflowgr_dist.models import lora
    from gflowgr_dist.train import checkpoint

    trainer = _trainer(tmp_path, data, "train.epochs=1", "gfn.lora_rank=4", "gfn.lora_alpha=8")
    base = {k: v.clone() for k, v in lora.plain_state(trainer.model, merged=False).items()}
    adapter = {k: v.clone() for k, v in lora.adapter_state(trainer.model).items()}
    trainer.fit()

    # The backbone is frozen; every adapter tensor moved (B starts at zero).
    for key, value in lora.plain_state(trainer.model, merged=False).items():
        torch.testing.assert_close(value, base[key], rtol=0, atol=0, msg=key)
    assert all(not torch.equal(v, adapter[k]) for k, v in lora.adapter_state(trainer.model).items())

    # best/ (the one epoch's state) is a plain model computing the trained function, with the
    # adapter beside it; restoring it into a fresh LoRA trainer gives the same function.
    best = tmp_path / "run" / "best"
    plain = checkpoint.load_model(best)[0].eval()
    assert not lora.has_lora(plain) and (best / "adapter" / "adapter_config.json").is_file()
    ids = torch.randint(0, trainer.vocab.size, (4, 9), generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
        fresh = _trainer(tmp_path, data, "gfn.lora_rank=4", "gfn.lora_alpha=8", name="fresh")
        checkpoint.restore_weights(fresh.model, best)
        fresh.model.eval()
        torch.testing.assert_close(
            fresh.model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5
        )


def test_lora_targets_that_the_backbone_lacks_are_one_config_error(tmp_path, data):
    from gflowgr_dist.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gfn.lora_targets=\['query'\].*q_proj"):
        _trainer(tmp_path, data, "gfn.lora_rank=4", "gfn.lora_targets=[query]")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("algorithm", ["tb", "db"])
def test_gflowgr_steps_on_the_gpu_match_the_cpu(tmp_path, data, algorithm, first_losses):
    mix = "{random: 0.4, cf: 0.3, on_policy: 0.3}"  # on-policy: sampling on the GPU too
    extra = (f"gfn.algorithm={algorithm}", f"gfn.sampler.weights_start={mix}",
             f"gfn.sampler.weights_end={mix}")  # fmt: skip
    runs = {}
    for device in ("cpu", "cuda"):
        trainer = _trainer(tmp_path, data, *extra, f"train.device={device}", name=device)
        runs[device] = first_losses(trainer, 3)
        assert next(trainer.model.parameters()).device.type == device
    np.testing.assert_allclose(runs["cuda"], runs["cpu"], rtol=2e-3)
