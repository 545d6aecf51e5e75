"""Reward actors: stateless scorers of rolled-out batches (batch in, `ScoredBatch` out).

They hold only the reward model built from config and the ID table, so Ray may restart one at
any time and re-run its call: the answer depends on the batch alone. A learnable reward fusion
(`gfn.reward.fusion` weighted / mlp) is trained by the learner, so the learner recomputes log R
itself in that case and these scores serve the logs only.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from gflowgr_dist.config import RewardConfig
from gflowgr_dist.gfn.reward import RewardModel
from gflowgr_dist.gfn.trajectories import trajectory_rewards
from gflowgr_dist.runtime.messages import Health, RolloutResult, ScoredBatch, current_node


class RewardActor:
    """One reward role (wrapped with `ray.remote` by the driver); see module docstring."""

    def __init__(self, cfg: RewardConfig, codes: np.ndarray, name: str) -> None:
        torch.set_num_threads(1)
        self.name = name
        self.reward = RewardModel(cfg, codes)
        self.calls = 0

    @torch.no_grad()
    def score(self, result: RolloutResult) -> ScoredBatch:
        started = time.perf_counter()
        self.calls += 1
        log_rewards, rewards = trajectory_rewards(self.reward, result.batch)  # [E, T] each
        return ScoredBatch(
            work=result.work,
            batch=result.batch,
            log_rewards=log_rewards.numpy(),
            rewards=rewards.numpy(),
            rollout_actor=result.actor,
            rollout_seconds=result.seconds,
            reward_seconds=time.perf_counter() - started,
            tokens=result.tokens,
        )

    def health(self) -> Health:
        return Health(self.name, "reward", os.getpid(), None, self.calls, current_node())
