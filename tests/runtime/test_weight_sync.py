"""Weight sync: after one sync a rollout engine holds exactly the learner's weights; a sync to a
dead or hung actor fails within its timeout, naming the actor and the phase."""

from __future__ import annotations

import time

import pytest
import torch

from gflowgr_dist.runtime.rollout import RolloutActor, RolloutSpec
from gflowgr_dist.runtime.weight_sync import WeightSyncError, push_weights


class _Hung:
    """Accepts `load_weights` but never finishes it in time."""

    def load_weights(self, state, version):
        time.sleep(30)


def _spec(cfg, trainer) -> RolloutSpec:
    model = trainer.model
    return RolloutSpec(
        cfg, trainer.dataset, trainer.table, trainer.vocab, type(model), model.config,
        trainer.examples, trainer.cf_model, trainer.seq2seq,
    )  # fmt: skip


def test_engine_weights_equal_learner_weights_after_sync(
    ray_cluster, runtime_cfg, make_trainer, tmp_path
):
    ray = ray_cluster
    cfg = runtime_cfg(tmp_path)
    trainer = make_trainer(cfg, tmp_path / "run")
    actor = ray.remote(RolloutActor).options(num_cpus=0.1).remote(_spec(cfg, trainer), "r0")
    with torch.no_grad():  # move the learner away from any fresh initialisation
        for p in trainer.model.parameters():
            p.add_(0.01)
    ticket = push_weights({"r0": actor}, trainer.model.state_dict(), version=7)
    acks = ticket.wait(timeout_s=120)
    assert acks["r0"].version == 7
    remote = ray.get(actor.weights.remote())
    local = trainer.model.state_dict()
    assert remote.keys() == local.keys()
    assert all(torch.equal(remote[k], local[k]) for k in local)
    assert ray.get(actor.health.remote()).version == 7

    ray.kill(actor, no_restart=True)
    dead = push_weights({"r0": actor}, trainer.model.state_dict(), version=8)
    with pytest.raises(WeightSyncError, match=r"actor r0 died in phase 'load_weights'"):
        dead.wait(timeout_s=30)


def test_sync_to_a_hung_actor_times_out_with_a_clear_error(ray_cluster):
    ray = ray_cluster
    hung = ray.remote(_Hung).options(num_cpus=0.1).remote()
    ticket = push_weights({"hung-0": hung}, {"w": torch.zeros(3)}, version=1)
    started = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"actor hung-0 did not finish phase 'load_weights'"):
        ticket.wait(timeout_s=2)
    assert time.monotonic() - started < 10
    ray.kill(hung, no_restart=True)
