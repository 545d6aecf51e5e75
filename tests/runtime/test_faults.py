"""Faults the runtime must survive or report, injected into real Ray actors.

- a weight sync that hangs on one actor: the actor is killed, restarted, re-synced, and the run
  reproduces the unfaulted losses;
- a weight sync that keeps failing on one actor: the actor is taken out of service after
  runtime.max_restarts, the other one carries on, nothing is lost;
- the last actor of a role failing for good stops the run with the reason (no silent hang);
- a NaN reward from a reward actor: the run stops naming the count and the fix, or (on_error
  skip) skips exactly that step and trains on nothing non-finite.

The faulty actors are subclasses defined here, shipped to Ray by value, swapped in for the
driver's classes; the fault switches off after a restart through a marker file, as a transient
fault would.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gflowgr_dist.runtime import driver
from gflowgr_dist.runtime.driver import RuntimeFailureError, run_distributed
from gflowgr_dist.runtime.reward import RewardActor
from gflowgr_dist.runtime.rollout import RolloutActor
from gflowgr_dist.tracking import read_metrics

LOSS_RTOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _ship_by_value(ray_cluster):
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def single(runtime_cfg, make_trainer, fit_single, tmp_path_factory):
    """The single-process losses (the S = 0 runtime reproduces them exactly)."""
    out = tmp_path_factory.mktemp("faults")
    torch.set_num_threads(1)
    return fit_single(make_trainer(runtime_cfg(out), out / "single"))


def _faulty(monkeypatch, role: str, cls: type, marker: Path) -> None:
    cls.marker = str(marker)
    name = "RolloutActor" if role == "rollout" else "RewardActor"
    monkeypatch.setattr(driver, name, cls)


class HangingSync(RolloutActor):
    """rollout-0 hangs in its third weight sync, once (the marker records that it did)."""

    marker = ""

    def load_weights(self, state, version):
        if self.name == "rollout-0" and version == 2 and not Path(self.marker).exists():
            Path(self.marker).write_text("hung")
            time.sleep(3600)
        return super().load_weights(state, version)


class FailingSync(RolloutActor):
    """rollout-1 fails every weight sync after the first (a broken engine, say)."""

    marker = ""

    def load_weights(self, state, version):
        if self.name == "rollout-1" and version >= 1:
            raise RuntimeError("engine refused the weights")
        return super().load_weights(state, version)


class NanReward(RewardActor):
    """Puts one NaN into the log rewards of the epoch's second batch."""

    marker = ""

    def score(self, result):
        scored = super().score(result)
        if result.work.key.index == 1:
            scored.log_rewards[0, 1] = np.nan
        return scored


def test_hung_sync_restarts_and_resyncs_the_actor(
    runtime_cfg, make_trainer, single, tmp_path, monkeypatch
):
    _faulty(monkeypatch, "rollout", HangingSync, tmp_path / "hung")
    cfg = runtime_cfg(tmp_path, "runtime.sync_timeout_s=5")
    trainer = make_trainer(cfg, tmp_path / "run")
    result = run_distributed(cfg, tmp_path / "run", trainer=trainer)
    assert (tmp_path / "hung").read_text() == "hung"
    assert result.restarts["rollout-0"] == 1 and result.retired == []
    # The restarted actor got the current weights: the losses are the unfaulted ones.
    np.testing.assert_allclose(result.losses, single, rtol=LOSS_RTOL, atol=0)


def test_actor_failing_every_sync_is_taken_out_of_service(
    runtime_cfg, make_trainer, single, tmp_path, monkeypatch, epoch_ids
):
    _faulty(monkeypatch, "rollout", FailingSync, tmp_path / "failed")
    cfg = runtime_cfg(tmp_path, "runtime.num_rollout_actors=2", "runtime.max_restarts=1")
    trainer = make_trainer(cfg, tmp_path / "run")
    result = run_distributed(cfg, tmp_path / "run", trainer=trainer)
    assert result.retired == ["rollout-1"] and result.restarts["rollout-1"] == 2
    ids = result.consumed_ids[0]
    assert sorted(ids) == epoch_ids(trainer)  # every example once, none lost
    np.testing.assert_allclose(result.losses, single, rtol=LOSS_RTOL, atol=0)


def test_last_actor_of_a_role_failing_stops_the_run_with_the_reason(
    runtime_cfg, make_trainer, tmp_path, monkeypatch
):
    class AlwaysFailing(FailingSync):
        def load_weights(self, state, version):
            if version >= 1:
                raise RuntimeError("engine refused the weights")
            return RolloutActor.load_weights(self, state, version)

    _faulty(monkeypatch, "rollout", AlwaysFailing, tmp_path / "x")
    cfg = runtime_cfg(tmp_path, "runtime.max_restarts=1")
    trainer = make_trainer(cfg, tmp_path / "run")
    started = time.monotonic()
    with pytest.raises(RuntimeFailureError, match=r"rollout-0 failed 2 times.*no other actor"):
        run_distributed(cfg, tmp_path / "run", trainer=trainer)
    assert time.monotonic() - started < 300


def test_nan_reward_stops_the_run_naming_the_count_and_the_fix(
    runtime_cfg, make_trainer, tmp_path, monkeypatch
):
    _faulty(monkeypatch, "reward", NanReward, tmp_path / "x")
    cfg = runtime_cfg(tmp_path)
    trainer = make_trainer(cfg, tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"log_rewards has 1 non-finite.*gfn.reward.eps"):
        run_distributed(cfg, tmp_path / "run", trainer=trainer)
    assert trainer.state.step == 1  # the first batch trained, the NaN batch did not


def test_nan_reward_with_on_error_skip_skips_that_step_only(
    runtime_cfg, make_trainer, single, tmp_path, monkeypatch
):
    _faulty(monkeypatch, "reward", NanReward, tmp_path / "x")
    cfg = runtime_cfg(tmp_path, "gfn.on_error=skip")
    trainer = make_trainer(cfg, tmp_path / "run")
    result = run_distributed(cfg, tmp_path / "run", trainer=trainer)
    assert result.losses[1] is None and all(loss is not None for loss in result.losses[2:])
    assert result.losses[0] == pytest.approx(single[0], rel=LOSS_RTOL)
    assert trainer.state.step == len(result.losses) - 1
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert sum(r.get("gfn/skipped_steps", 0) for r in records) == 1
