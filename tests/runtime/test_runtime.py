"""The distributed run on a real (small, local) Ray cluster.

- equivalence: S = 0, one rollout actor, stream seeding: the per-step losses equal the
  single-process GflowgrTrainer's (tolerance below), and so do the final weights;
- fault: a rollout and a reward actor killed mid-run; the run finishes, every example id is
  consumed exactly once, and (re-issued work being reproducible) the losses are unchanged;
- resume: stop after k steps, resume, end in the same state as the uninterrupted run;
- staleness: S = 1 with syncs every 2 steps and two rollout actors: no consumed batch is older
  than S, stale batches are dropped, counted and re-issued, each example still consumed once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.runtime.driver import run_distributed
from gflowgr_dist.tracking import read_metrics

LOSS_RTOL = 1e-6  # measured: the losses agree exactly (0.0 difference) on this machine


@pytest.fixture(scope="module")
def reference(runtime_cfg, make_trainer, fit_single, tmp_path_factory):
    """The single-process run and the uninterrupted S = 0 distributed run, once per module."""
    out = tmp_path_factory.mktemp("runtime")
    torch.set_num_threads(1)
    cfg = runtime_cfg(out)
    single = make_trainer(cfg, out / "single")
    losses = fit_single(single)
    return {"cfg": cfg, "losses": losses, "weights": single.model.state_dict(), "out": out}


@pytest.fixture(scope="module")
def distributed(reference, make_trainer, ray_cluster):
    cfg, out = reference["cfg"], reference["out"]
    trainer = make_trainer(cfg, out / "dist")
    result = run_distributed(cfg, out / "dist", trainer=trainer)
    return result, trainer


def test_s0_distributed_run_reproduces_single_process_losses(reference, distributed):
    result, trainer = distributed
    expected = reference["losses"]
    assert len(expected) >= 4 and len(result.losses) == len(expected)
    np.testing.assert_allclose(result.losses, expected, rtol=LOSS_RTOL, atol=0)
    assert max(result.staleness) == 0 and result.counters.dropped == 0
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], reference["weights"][k]) for k in final)
    records = read_metrics(reference["out"] / "dist/metrics.jsonl")
    assert any("learner/loss" in r and "buffer/dropped" in r for r in records)


def test_killed_actors_are_restarted_and_nothing_is_counted_twice(
    reference, distributed, make_trainer, tmp_path, epoch_ids
):
    cfg = reference["cfg"]
    killed = []

    def kill(run, step):
        if step == 2:
            run_ray = __import__("ray")
            run_ray.kill(run.rollouts["rollout-0"], no_restart=False)
            run_ray.kill(run.rewards["reward-0"], no_restart=False)
            killed.append(step)

    trainer = make_trainer(cfg, tmp_path / "fault")
    result = run_distributed(cfg, tmp_path / "fault", trainer=trainer, on_step=kill)
    assert killed == [2]
    assert result.restarts["rollout-0"] >= 1
    ids = result.consumed_ids[0]
    assert sorted(ids) == epoch_ids(trainer) and len(ids) == len(set(ids))
    # Re-issued work starts from the same sampling streams under the same weights.
    np.testing.assert_allclose(result.losses, distributed[0].losses, rtol=LOSS_RTOL, atol=0)


def test_resume_after_k_steps_reaches_the_uninterrupted_state(
    reference, distributed, make_trainer, tmp_path, epoch_ids
):
    cfg = reference["cfg"]
    first = make_trainer(cfg, tmp_path / "resume")
    part = run_distributed(cfg, tmp_path / "resume", trainer=first, stop_after=3)
    assert part.stopped_early and len(part.losses) == 3
    second = make_trainer(cfg, tmp_path / "resume")
    rest = run_distributed(cfg, tmp_path / "resume", trainer=second, resume=True)
    np.testing.assert_allclose(
        part.losses + rest.losses, distributed[0].losses, rtol=LOSS_RTOL, atol=0
    )
    ids = part.consumed_ids[0] + rest.consumed_ids[0]
    assert sorted(ids) == epoch_ids(second)
    final, expected = second.model.state_dict(), distributed[1].model.state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert second.state.step == distributed[1].state.step


def test_no_consumed_batch_is_older_than_s_and_drops_are_counted(
    reference, make_trainer, runtime_cfg, tmp_path, epoch_ids
):
    cfg = runtime_cfg(
        tmp_path,
        "runtime.max_staleness=1",
        "runtime.sync_every=2",
        "runtime.num_rollout_actors=2",
        "runtime.seeding=per_batch",
        "train.epochs=2",
    )
    trainer = make_trainer(cfg, tmp_path / "stale")
    result = run_distributed(cfg, tmp_path / "stale", trainer=trainer)
    assert max(result.staleness) <= 1
    assert result.counters.consumed == len(result.losses)
    assert result.counters.dropped > 0  # weights lag by one step every other step
    for epoch in (0, 1):
        ids = result.consumed_ids[epoch]
        assert sorted(ids) == epoch_ids(trainer, epoch)


def test_rollouts_and_rewards_are_handled_while_the_learner_steps(
    runtime_cfg, make_trainer, tmp_path, epoch_ids, monkeypatch
):
    # The learner's step runs on a helper thread while the driver thread passes finished
    # rollouts to the reward actors and scored batches to the buffer, so the next batch waits
    # for the learner rather than the other way round.
    import time

    from gflowgr_dist.runtime.driver import DistributedRun
    from gflowgr_dist.runtime.learner import Learner

    stepping, during = {"now": False}, []
    step, complete = Learner.step, DistributedRun._complete

    def slow_step(self, scored):
        stepping["now"] = True
        time.sleep(0.3)  # a learner step long enough for the next rollout to finish within it
        try:
            return step(self, scored)
        finally:
            stepping["now"] = False

    def recording_complete(self, ref):
        during.append(stepping["now"])
        return complete(self, ref)

    monkeypatch.setattr(Learner, "step", slow_step)
    monkeypatch.setattr(DistributedRun, "_complete", recording_complete)
    cfg = runtime_cfg(
        tmp_path,
        "runtime.max_staleness=1",
        "runtime.num_rollout_actors=2",
        "runtime.seeding=per_batch",
    )
    trainer = make_trainer(cfg, tmp_path / "overlap")
    result = run_distributed(cfg, tmp_path / "overlap", trainer=trainer)
    assert any(during), "no rollout or reward call was handled during a learner step"
    assert max(result.staleness) <= 1
    assert sorted(result.consumed_ids[0]) == epoch_ids(trainer, 0)
