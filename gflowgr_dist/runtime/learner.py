"""The learner: a `GflowgrTrainer` fed with batches rolled out and scored elsewhere.

It runs in the driver process (one learner; data-parallel learner actors are not built yet).
The loss is the trainer's own `learner_loss` (log P_F recomputed under the current weights, so
stale batches need no importance weights); the optimizer step below mirrors
`SftTrainer._train_epoch` line for line (zero_grad, backward, clip, step, schedule), which is
what makes an S = 0 run reproduce the single-process losses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gflowgr_dist.runtime.messages import ScoredBatch
from gflowgr_dist.train.gflowgr import GflowgrTrainer


@dataclass
class StepOutcome:
    """One consumed batch: loss None when the trainer skipped the step (non-finite value)."""

    loss: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    grad_norm: float = 0.0
    seconds: float = 0.0
    schedule_done: bool = False


class Learner:
    """See the module docstring. `version` is the number of optimizer steps taken."""

    def __init__(self, trainer: GflowgrTrainer) -> None:
        self.trainer = trainer
        # A learnable reward fusion is trained here: reward actors' scores would be stale.
        self.use_remote_rewards = trainer.gfn.reward.fusion == "sum"

    @property
    def version(self) -> int:
        return self.trainer.state.step

    def step(self, scored: ScoredBatch) -> StepOutcome:
        trainer = self.trainer
        started = time.perf_counter()
        chunk = [trainer.examples[i] for i in scored.batch.example_ids]
        log_rewards = torch.tensor(scored.log_rewards) if self.use_remote_rewards else None
        loss, extra = trainer.learner_loss(chunk, scored.batch, log_rewards)
        if loss is None:
            return StepOutcome(None, seconds=time.perf_counter() - started)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            trainer._trained_parameters(), trainer.cfg.train.grad_clip
        )
        trainer.optimizer.step()
        trainer.scheduler.step()
        trainer.state.step += 1
        seconds = time.perf_counter() - started
        trainer.state.train_seconds += seconds
        if trainer.state.step in (20, 100) or trainer.state.step % 500 == 0:
            trainer._fit_schedule_to_budget()
        extra.pop("tokens", None)
        return StepOutcome(
            loss=loss.item(),
            metrics=extra,
            grad_norm=grad_norm.item(),
            seconds=seconds,
            schedule_done=trainer.state.step >= trainer.schedule.total_steps,
        )

    def state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights: all a rollout engine needs (heads stay in the learner)."""
        return {k: v.detach() for k, v in self.trainer.model.state_dict().items()}
