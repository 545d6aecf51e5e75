"""Chaos: rollout and reward actors killed at random moments, at least ten times in one run.

The run uses S = 0 with stream seeding, so an unkilled run is exactly reproducible (the
equivalence test shows it equals the single-process trainer). Re-issued work restarts from the
same sampling streams under the same weights, so the noise a kill may add is zero: the killed
run must give the very losses, weights and validation NDCG of the unkilled one, and consume
every training example exactly once per epoch.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

from gflowgr_dist.runtime.driver import run_distributed

KILLS = 12  # the issue asks for >= 10 in one run
LOSS_RTOL = 1e-6  # measured: 0.0 difference (the same floats)


class Killer:
    """Kills a random rollout or reward actor every 0.2-1.0 s until `KILLS` are done."""

    def __init__(self, run, seed: int) -> None:
        self.run, self.rng = run, random.Random(seed)
        self.killed: list[str] = []
        self.stop = threading.Event()
        threading.Thread(target=self._kill, daemon=True).start()

    def _kill(self) -> None:
        import ray

        while len(self.killed) < KILLS and not self.stop.wait(self.rng.uniform(0.2, 1.0)):
            actors = {**self.run.rollouts, **self.run.rewards}
            name = self.rng.choice(sorted(actors))
            ray.kill(actors[name], no_restart=False)
            self.killed.append(name)


def test_ten_random_kills_change_nothing(
    runtime_cfg, make_trainer, fit_single, epoch_ids, ray_cluster, tmp_path
):
    torch.set_num_threads(1)
    extra = (
        "train.epochs=2",
        "runtime.num_rollout_actors=2",
        "runtime.num_reward_actors=2",
        "runtime.max_restarts=100",
    )
    cfg = runtime_cfg(tmp_path, *extra)
    single = make_trainer(cfg, tmp_path / "single")
    expected = fit_single(single)

    killers: list[Killer] = []

    def chaos(run, step):
        if not killers:  # from the first learner step on
            killers.append(Killer(run, seed=7))
        time.sleep(0.3)  # stretch the run so the kills land while it trains

    trainer = make_trainer(cfg, tmp_path / "chaos")
    result = run_distributed(cfg, tmp_path / "chaos", trainer=trainer, on_step=chaos)
    killers[0].stop.set()
    killed = killers[0].killed
    assert len(killed) >= 10, f"only {len(killed)} kills landed during the run"
    assert {n.split("-")[0] for n in killed} == {"rollout", "reward"}
    assert result.retired == []
    print(f"\nchaos: {len(killed)} kills {sorted(killed)}; restarts {result.restarts}")
    for epoch in (0, 1):
        ids = result.consumed_ids[epoch]
        assert sorted(ids) == epoch_ids(trainer, epoch) and len(ids) == len(set(ids))
    np.testing.assert_allclose(result.losses, expected, rtol=LOSS_RTOL, atol=0)
    final, reference = trainer.model.state_dict(), single.model.state_dict()
    assert all(torch.equal(final[k], reference[k]) for k in final)
    assert trainer.state.best_metric == pytest.approx(single.state.best_metric, abs=0)
