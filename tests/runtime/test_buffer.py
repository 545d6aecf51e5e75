"""Trajectory buffer: bounded, one entry per batch, version-aware admission with counted drops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.gfn.trajectories import TrajectoryBatch
from gflowgr_dist.runtime.buffer import TrajectoryBuffer
from gflowgr_dist.runtime.messages import ScoredBatch, SeedState, WorkItem, WorkKey


def _scored(index: int, version: int) -> ScoredBatch:
    items = np.zeros((2, 4), np.int64)
    batch = TrajectoryBatch(
        example_ids=np.array([index]),
        users=np.zeros(2, np.int64),
        targets=np.zeros(2, np.int64),
        items=items,
        levels=items,
        strategies=items[:, 1:],
        cf_scores=None,
        policy_version=version,
    )
    seed = SeedState.capture(np.random.default_rng(0), torch.Generator().manual_seed(0))
    work = WorkItem(WorkKey(0, index), np.array([index]), 0.0, seed)
    zeros = np.zeros((2, 4), np.float32)
    return ScoredBatch(work, batch, zeros, zeros, "rollout-0", 0.0, 0.0, 8)


def test_admission_drops_batches_older_than_s_and_counts_them():
    buffer = TrajectoryBuffer(capacity=4, max_staleness=2)
    assert buffer.put(_scored(0, version=3), learner_version=5) == "admitted"  # lag 2 = S
    assert buffer.put(_scored(1, version=2), learner_version=5) == "dropped"  # lag 3 > S
    assert buffer.put(_scored(2, version=5), learner_version=5) == "admitted"
    # Waiting makes batch 0 stale: take drops it, returns its work for re-issue, serves batch 2.
    take = buffer.take(learner_version=6)
    assert take.scored.work.key.index == 2
    assert [w.key.index for w in take.dropped] == [0]
    counters = buffer.get_counters()
    assert (counters.admitted, counters.dropped, counters.consumed) == (2, 2, 1)
    assert buffer.take(learner_version=6).scored is None


def test_synchronous_buffer_admits_only_the_current_version():
    buffer = TrajectoryBuffer(capacity=2, max_staleness=0)
    assert buffer.put(_scored(0, version=4), learner_version=5) == "dropped"
    assert buffer.put(_scored(1, version=5), learner_version=5) == "admitted"
    assert buffer.take(learner_version=5).scored.policy_version == 5


def test_buffer_is_bounded_fifo_of_whole_batches():
    buffer = TrajectoryBuffer(capacity=2, max_staleness=10)
    assert [buffer.put(_scored(i, 0), 0) for i in range(3)] == ["admitted", "admitted", "full"]
    assert buffer.depth() == 2 and buffer.get_counters().refused_full == 1
    first = buffer.take(0)
    assert first.scored.work.key.index == 0 and first.depth == 1
    assert first.scored.batch.num_trajectories == 8  # one entry carries the whole batch


def test_counters_round_trip_and_bad_arguments():
    buffer = TrajectoryBuffer(capacity=1, max_staleness=0)
    buffer.put(_scored(0, 0), 1)
    other = TrajectoryBuffer(capacity=1, max_staleness=0)
    other.set_counters(buffer.get_counters())
    assert other.get_counters().dropped == 1
    with pytest.raises(ValueError, match="capacity"):
        TrajectoryBuffer(capacity=0, max_staleness=0)


def test_seed_state_round_trips_through_json():
    rng, gen = np.random.default_rng([1, 2]), torch.Generator().manual_seed(3)
    state = SeedState.capture(rng, gen)
    expected = (rng.random(3), torch.rand(3, generator=gen))
    rng2, gen2 = SeedState.from_json(state.to_json()).restore()
    assert np.array_equal(rng2.random(3), expected[0])
    assert torch.equal(torch.rand(3, generator=gen2), expected[1])
