"""One Ray cluster for every runtime test (starting one costs ~10 s), and tiny data built here.

Ray is kept small and on loopback: 2 CPUs, no dashboard, actors at fractional CPUs.
"""

from __future__ import annotations

import pytest

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig, SyntheticConfig, load_config
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.train.cf import sasrec_config
from gflowgr_dist.train.gflowgr import GflowgrTrainer
from gflowgr_dist.train.sasrec import train_sasrec


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # a new cluster, never one a stale /tmp/ray file points at
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def runtime_data():
    dataset = load_synthetic(
        SyntheticConfig(num_users=60, num_items=40, num_clusters=4, stay_probability=0.95), 0
    )
    table, _ = build_semantic_ids(
        dataset,
        SemanticIdConfig(codebook_sizes=[4, 4]),
        EmbeddingConfig(encoder="hashing"),
        seed=0,
    )
    splits = leave_one_out(dataset, 8)
    cf, _ = train_sasrec(dataset, splits, sasrec_config(_runtime_cfg("/tmp/unused")))
    return dataset, splits, table, cf


@pytest.fixture(scope="session")
def runtime_cfg():
    """`runtime_cfg(out, *overrides)` -> Config (tests import nothing from conftest)."""
    return _runtime_cfg


@pytest.fixture(scope="session")
def make_trainer(runtime_data):
    """`make_trainer(cfg, out)` -> a fresh GflowgrTrainer on the session's tiny data."""

    def build(cfg, out):
        dataset, splits, table, cf = runtime_data
        return GflowgrTrainer(cfg, dataset, splits, table, out, cf_model=cf)

    return build


@pytest.fixture(scope="session")
def fit_single():
    """`fit_single(trainer)` -> the per-step losses of the single-process trainer's whole run
    (the reference the S = 0 runtime must reproduce)."""
    from gflowgr_dist.tracking import read_metrics

    def fit(trainer):
        trainer.fit()
        records = read_metrics(trainer.out_dir / "metrics.jsonl")
        return [r["gfn/loss"] for r in records if "gfn/loss" in r]

    return fit


@pytest.fixture(scope="session")
def epoch_ids():
    """`epoch_ids(trainer, epoch)` -> sorted example ids the epoch's batches hold."""
    return lambda trainer, epoch=0: sorted(
        int(i) for batch in trainer.epoch_batches(epoch) for i in batch
    )


def _runtime_cfg(out, *extra):
    """Tiny model, one epoch, on-policy samples in the mix (so weight syncs matter)."""
    return load_config(
        overrides=[
            f"run.output_dir={out}",
            "data.max_history=8",
            "model.preset=tiny",
            "model.dropout=0.0",
            "train.batch_size=16",
            "train.lr=3e-3",
            "train.log_every=1",
            "train.epochs=1",
            "train.num_threads=1",
            "train.max_eval_users=8",
            "eval.beam_width=10",
            "eval.ks=[5, 10]",
            "gfn.calibration_users=8",
            "gfn.sampler.num_augmented=3",
            "gfn.sampler.weights_start={random: 0.3, cf: 0.4, on_policy: 0.3}",
            "gfn.sampler.weights_end={random: 0.2, cf: 0.4, on_policy: 0.4}",
            "logging.progress=false",
            "sasrec.epochs=2",
            "runtime.actor_cpus=0.1",
            *extra,
        ]
    )
