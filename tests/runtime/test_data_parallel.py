"""Data-parallel learners (runtime.num_learners = 2) on real Ray and a real gloo group.

- oracle: one data-parallel step, batch A on rank 0 (this process) and batch B on a
  `LearnerWorker` actor, leaves both replicas where one learner lands after one step on the
  row-weighted mean loss of A and B;
- run: a whole distributed run with two learners consumes every example exactly once, takes
  one step per pair of batches, and its replicas stay equal after every step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gflowgr_dist.gfn.trajectories import trajectory_rewards
from gflowgr_dist.runtime.driver import _free_port, run_distributed
from gflowgr_dist.runtime.learner import (
    LearnerSpec,
    LearnerWorker,
    ReplicaState,
    data_parallel_step,
)
from gflowgr_dist.runtime.messages import ScoredBatch, SeedState, WorkItem, WorkKey
from gflowgr_dist.train.sft import length_bucketed_batches

ATOL = 1e-6  # float32 sums in another order (rank 0 + rank 1 vs one weighted loss)


def _scored(trainer, members: np.ndarray, index: int) -> ScoredBatch:
    """A rolled-out and scored batch, as a rollout and a reward actor would send it."""
    chunk = [trainer.examples[i] for i in members]
    rng, generator = np.random.default_rng(index), torch.Generator().manual_seed(index)
    batch = trainer.source.build(chunk, members, 0.0, rng, generator, 0)
    log_rewards, rewards = trajectory_rewards(trainer.reward, batch)
    work = WorkItem(WorkKey(0, index), members, 0.0, SeedState.seeded([index], index))
    return ScoredBatch(
        work, batch, log_rewards.numpy(), rewards.numpy(), "test", 0.0, 0.0, batch.items.size
    )


def _params(trainer) -> dict[str, torch.Tensor]:
    heads = {
        f"head.{n}.{k}": v for n, h in trainer._heads().items() for k, v in h.state_dict().items()
    }
    return {**trainer.model.state_dict(), **heads}


def _assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    worst = max((left[k].float() - right[k].float()).abs().max().item() for k in left)
    assert worst <= ATOL, f"replicas differ by {worst}"


@pytest.mark.parametrize("adapter", [(), ("gfn.lora_rank=4",)], ids=["full", "lora"])
def test_one_data_parallel_step_equals_one_step_on_both_batches(
    ray_cluster, runtime_cfg, make_trainer, tmp_path, adapter
):
    ray = ray_cluster
    torch.set_num_threads(1)
    cfg = runtime_cfg(tmp_path, "runtime.num_learners=2", *adapter)
    rank0, oracle = make_trainer(cfg, tmp_path / "r0"), make_trainer(cfg, tmp_path / "oracle")
    for trainer in (rank0, oracle):  # log Z's bias stays at its (shared) initial value
        trainer.log_z_ready = True
    _assert_same(_params(rank0), _params(oracle))
    rng = np.random.default_rng(0)
    batches = length_bucketed_batches(rank0.lengths, cfg.train.batch_size, rng)
    first, second = _scored(rank0, batches[0], 0), _scored(rank0, batches[1], 1)

    # Rank 1 is a Ray actor; this process is rank 0 of a two-rank gloo group.
    model = rank0.model
    spec = LearnerSpec(
        cfg, rank0.dataset, rank0.splits, rank0.table, rank0.vocab, type(model), model.config,
        rank0.cf_model,
    )  # fmt: skip
    worker = ray.remote(LearnerWorker).options(num_cpus=0.1).remote(spec, 1)
    init = f"tcp://127.0.0.1:{_free_port()}"
    joined = worker.join.remote(init, 2, 120)
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=2)
    try:
        ray.get(joined, timeout=120)
        ray.get(worker.load_state.remote(ReplicaState.capture(rank0)), timeout=120)
        total = rank0.schedule.total_steps
        pending = worker.step.remote(second, total)
        outcome = data_parallel_step(rank0, first, total, remote_rewards=True)
        worker_loss = ray.get(pending, timeout=120)
        replica = ray.get(worker.parameters.remote(), timeout=120)
        ray.get(worker.leave.remote(), timeout=60)
    finally:
        dist.destroy_process_group()
        ray.kill(worker)

    # The oracle: one learner, one step on the row-weighted mean of both batches' losses.
    parts = []
    for scored in (first, second):
        chunk = [oracle.examples[i] for i in scored.batch.example_ids]
        loss, _ = oracle.learner_loss(chunk, scored.batch, torch.tensor(scored.log_rewards))
        parts.append((loss, scored.batch.items.shape[0]))
    rows = sum(r for _, r in parts)
    loss = sum(part * r for part, r in parts) / rows
    oracle.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(oracle._trained_parameters(), cfg.train.grad_clip)
    oracle.optimizer.step()
    oracle.scheduler.step()

    assert outcome.loss == pytest.approx(loss.item(), rel=1e-6) and worker_loss == outcome.loss
    assert rank0.state.step == 1
    _assert_same(_params(rank0), _params(oracle))
    _assert_same(replica, _params(rank0))


def test_two_learner_run_consumes_every_example_once_and_keeps_replicas_equal(
    ray_cluster, runtime_cfg, make_trainer, tmp_path
):
    ray = ray_cluster
    cfg = runtime_cfg(tmp_path, "runtime.num_learners=2", "runtime.seeding=per_batch")
    trainer = make_trainer(cfg, tmp_path / "dp")
    checked = []

    def compare(run, step):
        # Every replica holds rank 0's weights after every step.
        for handle in run.learner.workers.values():
            _assert_same(ray.get(handle.parameters.remote(), timeout=120), _params(run.trainer))
        checked.append(step)

    result = run_distributed(cfg, tmp_path / "dp", trainer=trainer, on_step=compare)
    rng = np.random.default_rng([cfg.run.seed, 0])
    batches = length_bucketed_batches(
        trainer.lengths, cfg.train.batch_size, rng, fraction=cfg.train.epoch_fraction
    )
    ids = result.consumed_ids[0]
    assert sorted(ids) == sorted(int(i) for b in batches for i in b) and len(ids) == len(set(ids))
    steps = math.ceil(len(batches) / 2)
    assert trainer.state.step == steps == len(result.losses) == len(checked)
    assert all(loss is not None and math.isfinite(loss) for loss in result.losses)
    assert max(result.staleness) == 0  # S = 0: both batches of a step come from its weights
    assert not dist.is_initialized()  # the run left its gloo group
