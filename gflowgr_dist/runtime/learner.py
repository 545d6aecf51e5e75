"""The learner: a `GflowgrTrainer` fed with batches rolled out and scored elsewhere.

It runs in the driver process, on `train.device`. With `runtime.num_learners` = N > 1 the
driver is rank 0 of a group of N replicas (gloo between CPU learners, NCCL between GPU ones;
`LearnerWorker` actors are ranks 1 … N-1, one GPU each): each step takes N batches, one per
rank, and every rank runs `data_parallel_step` (row-weighted gradients all-reduced in one
collective, then the same clipped AdamW step everywhere).

The loss is the trainer's own `learner_loss` (log P_F recomputed under the current weights, so
stale batches need no importance weights); the one-learner step below mirrors
`SftTrainer._train_epoch` line for line (zero_grad, backward, clip, step, schedule), which is
what makes an S = 0 run reproduce the single-process losses.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from gflowgr_dist.models.lora import adapter_state, has_lora, plain_state
from gflowgr_dist.runtime.messages import Health, ScoredBatch, current_node
from gflowgr_dist.train.gflowgr import GflowgrTrainer


@dataclass
class StepOutcome:
    """One consumed batch: loss None when the trainer skipped the step (non-finite value)."""

    loss: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    grad_norm: float = 0.0
    seconds: float = 0.0
    schedule_done: bool = False


class LearnerGroupError(RuntimeError):
    """A data-parallel learner replica died or timed out inside a step."""


class Learner:
    """See the module docstring. `version` is the number of optimizer steps taken.

    `workers` are the `LearnerWorker` handles of ranks 1 … N-1 (empty: one learner).
    """

    def __init__(
        self, trainer: GflowgrTrainer, workers: dict[str, Any] | None = None, timeout_s=300.0
    ) -> None:
        self.trainer = trainer
        self.workers = workers or {}
        self.timeout_s = timeout_s
        # A learnable reward fusion is trained here: reward actors' scores would be stale.
        self.use_remote_rewards = trainer.gfn.reward.fusion == "sum"

    @property
    def world_size(self) -> int:
        return 1 + len(self.workers)

    def step_group(self, group: list[ScoredBatch]) -> StepOutcome:
        """One data-parallel step: batch i to rank i (ranks past the group get none)."""
        import ray

        trainer = self.trainer
        total = trainer.schedule.total_steps
        refs = {
            name: handle.step.remote(group[rank] if rank < len(group) else None, total)
            for rank, (name, handle) in enumerate(self.workers.items(), start=1)
        }
        try:
            outcome = data_parallel_step(trainer, group[0], total, self.use_remote_rewards)
            ray.get(list(refs.values()), timeout=self.timeout_s)
        except (RuntimeError, ray.exceptions.RayError) as err:
            raise LearnerGroupError(
                f"a learner replica of {list(refs)} failed in step {trainer.state.step + 1} "
                f"({type(err).__name__}: {str(err)[:200]}); the learners cannot continue "
                "without it: rerun with --resume to continue from the last checkpoint"
            ) from err
        if trainer.state.step in (20, 100) or trainer.state.step % 500 == 0:
            trainer._fit_schedule_to_budget()
        return outcome

    def push_state(self) -> None:
        """Copies rank 0's whole training state to every replica (start, resume)."""
        import ray

        if self.workers:
            state = ray.put(ReplicaState.capture(self.trainer))
            refs = [w.load_state.remote(state) for w in self.workers.values()]
            ray.get(refs, timeout=self.timeout_s)

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
        """The backbone's weights: all a rollout engine needs (heads stay in the learner).

        On the host: the object store pickles a GPU tensor with its device, which an engine
        on another GPU (or none) could not load. (The NCCL route sends GPU tensors itself.)
        """
        return {k: v.detach().cpu() for k, v in self.trainer.model.state_dict().items()}

    def sync_payload(self, *, full: bool) -> dict[str, Tensor]:
        """What a weight sync ships (`runtime.lora_sync` with a LoRA learner, else everything).

        adapter: the whole injected state when `full` (the engines' first load, or a
        restarted engine's), then the adapter tensors alone; merged: the merged plain weights.
        """
        model = self.trainer.model
        if not has_lora(model):
            return self.state_dict()
        if self.trainer.cfg.runtime.lora_sync == "merged":
            return {k: v.cpu() for k, v in plain_state(model, merged=True).items()}
        if full:
            return self.state_dict()
        return {k: v.cpu() for k, v in adapter_state(model).items()}


# --- data-parallel learners (runtime.num_learners > 1) -------------------------------------


@dataclass
class LearnerSpec:
    """What a learner replica is built from; put in the object store once per run."""

    cfg: Any
    dataset: Any
    splits: Any
    table: Any
    vocab: Any
    model_class: type
    model_config: Any
    cf_model: Any


@dataclass
class ReplicaState:
    """Rank 0's whole training state, copied to every replica at start and after a resume."""

    model: dict[str, Tensor]
    heads: dict[str, dict[str, Tensor]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    step: int
    log_z_ready: bool
    reference: dict[str, Tensor] | None = None  # DPO / S-DPO / GRPO reference policy

    @classmethod
    def capture(cls, trainer: GflowgrTrainer) -> ReplicaState:
        reference = trainer.reference.state_dict() if trainer.reference is not None else None
        return cls(
            model=trainer.model.state_dict(),
            heads={name: head.state_dict() for name, head in trainer._heads().items()},
            optimizer=trainer.optimizer.state_dict(),
            scheduler=trainer.scheduler.state_dict(),
            step=trainer.state.step,
            log_z_ready=trainer.log_z_ready,
            reference=reference,
        )

    def restore(self, trainer: GflowgrTrainer) -> None:
        trainer.model.load_state_dict(self.model)
        for name, head in trainer._heads().items():
            head.load_state_dict(self.heads[name])
        trainer.optimizer.load_state_dict(self.optimizer)
        trainer.scheduler.load_state_dict(self.scheduler)
        trainer.state.step = self.step
        trainer.log_z_ready = self.log_z_ready
        if self.reference is not None:
            trainer.reference.load_state_dict(self.reference)


def collective_backend(device: torch.device) -> str:
    """The learners' collective backend: NCCL between GPU learners, gloo between CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def data_parallel_step(
    trainer: GflowgrTrainer, scored: ScoredBatch | None, total_steps: int, remote_rewards: bool
) -> StepOutcome:
    """One rank's part of a data-parallel learner step; every rank of the group calls it.

    Each rank takes the loss of its own batch (or none), weighted by its share of the step's
    trajectory rows, so the summed gradient is the row-weighted mean gradient of all batches:
    what one learner would get from their concatenation. Ranks first agree on the row count
    and on whether any rank hit a non-finite value (then every rank skips, so no collective is
    left waiting). Identical gradients, clipping and AdamW keep the replicas identical; after
    the first step rank 0's parameters are broadcast once, because the log Z head's bias was
    warm-started from each rank's own batch.
    """
    import torch.distributed as dist

    started = time.perf_counter()
    trainer.schedule.total_steps = total_steps  # rank 0's horizon (a time budget may shrink it)
    loss, extra, rows = None, {}, 0
    if scored is not None:
        chunk = [trainer.examples[i] for i in scored.batch.example_ids]
        log_rewards = torch.tensor(scored.log_rewards) if remote_rewards else None
        loss, extra = trainer.learner_loss(chunk, scored.batch, log_rewards)
        rows = scored.batch.items.shape[0]
    skipped = scored is not None and loss is None
    agree = torch.tensor(
        [rows, float(skipped), loss.item() * rows if loss is not None else 0.0],
        device=trainer.device,  # NCCL reduces device tensors only
    )
    dist.all_reduce(agree)  # [total rows, ranks that skip, row-weighted loss sum]
    total_rows, skips, loss_sum = agree.tolist()
    if skips or not total_rows:
        return StepOutcome(None, seconds=time.perf_counter() - started)

    params = trainer._trained_parameters()
    trainer.optimizer.zero_grad(set_to_none=True)
    if loss is not None:
        (loss * (rows / total_rows)).backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)  # one collective for every gradient
    for param, grad in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
        param.grad = grad
    grad_norm = torch.nn.utils.clip_grad_norm_(params, trainer.cfg.train.grad_clip)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.state.step += 1
    if trainer.state.step == 1:
        for param in params:
            dist.broadcast(param.data, src=0)
        trainer.log_z_ready = True
    seconds = time.perf_counter() - started
    trainer.state.train_seconds += seconds
    extra.pop("tokens", None)
    return StepOutcome(
        loss=loss_sum / total_rows,
        metrics=extra,
        grad_norm=grad_norm.item(),
        seconds=seconds,
        schedule_done=trainer.state.step >= trainer.schedule.total_steps,
    )


class LearnerWorker:
    """A learner replica of rank ≥ 1 (wrapped with `ray.remote` by the driver).

    It holds a `GflowgrTrainer` built from the run's spec, takes rank 0's state, and runs
    `data_parallel_step` on the batch it is handed; rank 0 (the driver) validates and writes
    checkpoints. A replica that dies fails the run (its collectives time out after
    `runtime.task_timeout_s`); `--resume` continues from the last checkpoint.
    """

    def __init__(self, spec: LearnerSpec, rank: int) -> None:
        torch.set_num_threads(spec.cfg.train.num_threads or 1)
        self.rank = rank
        model = spec.model_class(spec.model_config)
        self.trainer = GflowgrTrainer(
            spec.cfg, spec.dataset, spec.splits, spec.table,
            Path(tempfile.mkdtemp(prefix=f"gflowgr-learner-{rank}-")),
            model=model, vocab=spec.vocab, cf_model=spec.cf_model,
        )  # fmt: skip
        self.trainer.model.train()
        self.remote_rewards = self.trainer.gfn.reward.fusion == "sum"

    def join(self, init_method: str, world_size: int, timeout_s: float) -> int:
        """Joins the learners' group (blocks until every rank has joined)."""
        import torch.distributed as dist

        dist.init_process_group(
            collective_backend(self.trainer.device), init_method=init_method, rank=self.rank,
            world_size=world_size, timeout=timedelta(seconds=timeout_s),
        )  # fmt: skip
        return self.rank

    def load_state(self, state: ReplicaState) -> int:
        state.restore(self.trainer)
        return self.trainer.state.step

    def step(self, scored: ScoredBatch | None, total_steps: int) -> float | None:
        return data_parallel_step(self.trainer, scored, total_steps, self.remote_rewards).loss

    def parameters(self) -> dict[str, Tensor]:
        """The replica's model and heads (tests: equal to rank 0's)."""
        heads = {f"head.{n}.{k}": v for n, h in self.trainer._heads().items()
                 for k, v in h.state_dict().items()}  # fmt: skip
        return {**self.trainer.model.state_dict(), **heads}

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def health(self) -> Health:
        step = self.trainer.state.step
        return Health(f"learner-{self.rank}", "learner", os.getpid(), step, 0, current_node())
